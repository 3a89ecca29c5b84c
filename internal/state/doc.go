// Package state is the etcd key layout of a Ringmaster cluster and typed
// access to it. Every decision the coordinator makes is recorded here, in
// transactions guarded by the revisions it read, so a restarted coordinator
// continues from etcd alone.
//
// Keys (values are protobuf JSON of the api messages, readable with etcdctl):
//
//	<prefix>workers/<worker-id>                 Worker, bound to the worker's lease
//	<prefix>claims/<worker-id>                  Claim: the job and generation a worker serves
//	<prefix>jobs/<job-id>/spec                  JobSpec, written once at submission
//	<prefix>jobs/<job-id>/status                JobStatus, written by the coordinator
//	<prefix>jobs/<job-id>/assignment            Assignment: rank -> worker, with the generation
//	<prefix>jobs/<job-id>/reports/<rank>        RankReport: a rank's failure
//	<prefix>jobs/<job-id>/result                Progress, done: written once by rank 0 with its last progress
//	<prefix>progress/<job-id>                   Progress, written by rank 0 about once a second
//	<prefix>active/<job-id>                     empty marker while the job is not finished
//	<prefix>election/                           coordinator leader election
//	<prefix>layout                              version of this layout ("4")
//
// Checkpoints are not recorded here: their store lists them, and rank 0's
// progress names the newest one it committed.
//
// The scheduler keeps a Cache: it reads workers, claims, and the jobs with
// an active marker once (ReadActive), then follows two watches (workers;
// active markers, claims and jobs' keys), so that a decision costs what
// changed, and what it holds grows with what is in play, not with
// history. It does not watch progress (about once a second per running
// job): it reads it for the jobs it decides about, and a job's end comes
// as its result key. A finished job's keys lose their marker and are moved
// onto a lease of the retention period: etcd deletes them when it runs
// out. Resuming a job moves them back off the lease.
//
// The API reads what it answers (ReadJob, Read); the coordinator's
// planner works on the cache's snapshot, and its actions are transactions
// that succeed only if the keys they depend on are unchanged since the
// revisions it saw.
package state
