package coordinator

import (
	"fmt"
	"sort"
	"strings"
	"time"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/state"
)

// Action is one decision of the planner. Each is applied as one etcd
// transaction guarded by the revisions the planner saw.
type Action interface{ describe() string }

// Assign starts a pending job on workers; rank i goes to Workers[i].
type Assign struct {
	JobID      string
	Generation uint64
	Workers    []string
	StatusRev  int64
}

// Finish ends a job in a terminal state and releases its workers.
type Finish struct {
	JobID     string
	State     pb.JobState
	Message   string
	Result    *pb.JobResult
	StatusRev int64
}

// Release deletes a claim that no longer belongs to a running job's
// current generation.
type Release struct {
	WorkerID string
	ClaimRev int64
	Why      string
}

// Reconfigure moves a running job onto a new ring generation: the
// survivors of the current one (in their old rank order), plus idle
// workers taken in. Survivors keep their in-memory state and go on from
// the last committed step; new members receive it from them.
type Reconfigure struct {
	JobID      string
	Generation uint64
	Workers    []string
	// Abort: a rank was lost, so the step in flight cannot finish and the
	// survivors abandon it at once. Otherwise (growth, a planned leave)
	// they switch at the next step boundary.
	Abort  bool
	Reason string
	// Failure: this change absorbs a failure (counts against
	// max_restarts).
	Failure       bool
	Exclude       []*pb.ExcludedWorker
	History       []*pb.HistoryEntry
	StatusRev     int64
	AssignmentRev int64
	// ResultRev guards against a result recorded since the snapshot.
	ResultRev int64
}

// Requeue sends a running job back to pending, to restart from its latest
// valid checkpoint on whatever workers are available: the fallback when
// no survivor holds the state, or too few remain.
type Requeue struct {
	JobID     string
	Message   string
	Exclude   []*pb.ExcludedWorker
	History   []*pb.HistoryEntry
	StatusRev int64
}

// Unreachable records that every rank of a running job is unregistered at
// once with no rank reporting a failure (SinceMs), or that they are back
// (SinceMs 0). Such workers may have lost etcd, not their lives: the job
// waits UnreachableGrace for them before it restarts from a checkpoint.
type Unreachable struct {
	JobID     string
	SinceMs   int64
	Message   string
	StatusRev int64
}

// UnreachableGrace is how long a running job whose every rank vanished
// from etcd at once waits for them to register again (with the state they
// hold) before it restarts from its latest checkpoint.
const UnreachableGrace = 30 * time.Second

// LeaseSettle is how long the planner may wait, after a rank's
// registration vanished with no rank reporting a failure and no other rank
// known to be connected to etcd, before it decides: the leases of workers
// that all lost etcd at once expire up to about 1.5 s apart (keep-alives
// every third of the TTL, expiry checked every 500 ms), and such a job
// must be seen with every rank gone, not one by one. A crash is reported
// by the ring at once, and a rank whose peers still renew their leases is
// lost alone: both are decided without waiting.
const LeaseSettle = 2 * time.Second

func (a Unreachable) describe() string {
	if a.SinceMs == 0 {
		return fmt.Sprintf("job %s: its workers are back", a.JobID)
	}
	return fmt.Sprintf("job %s: %s", a.JobID, a.Message)
}

func (a Assign) describe() string {
	return fmt.Sprintf("assign job %s generation %d to %v", a.JobID, a.Generation, a.Workers)
}
func (a Finish) describe() string {
	return fmt.Sprintf("finish job %s as %s: %s", a.JobID, state.StateName(a.State), a.Message)
}
func (a Release) describe() string { return fmt.Sprintf("release worker %s: %s", a.WorkerID, a.Why) }
func (a Reconfigure) describe() string {
	return fmt.Sprintf("move job %s to generation %d on %v: %s", a.JobID, a.Generation, a.Workers, a.Reason)
}
func (a Requeue) describe() string {
	return fmt.Sprintf("restart job %s from its latest checkpoint: %s", a.JobID, a.Message)
}

// Plan decides what to do about a snapshot of the cluster at time now
// (Unix milliseconds, stamped on history entries). It is a pure function:
// the same snapshot always gives the same actions, which is what makes a
// restarted coordinator continue where the last one stopped.
//
// Running jobs come first: a job that lost a rank is rebuilt in place from
// its survivors, with idle workers to replace the lost ones. Then pending
// jobs are gang-scheduled in submission order: a job starts only when
// enough idle workers are registered, and a job that does not fit does not
// hold back smaller jobs behind it (backfill). Idle workers left over let
// running jobs that are below their size grow.
func Plan(s *state.Snapshot, now int64) []Action {
	var actions []Action
	excluded := excludedWorkers(s, now)
	var idle []string
	for id := range s.Workers {
		if _, busy := s.Claims[id]; !busy && !excluded[id] {
			idle = append(idle, id)
		}
	}
	sort.Strings(idle)
	ids := s.JobIDs()
	acted := map[string]bool{}
	for _, id := range ids {
		j := s.Jobs[id]
		if j.Status.Value.State != pb.JobState_JOB_STATE_RUNNING || s.DamagedJobs[id] {
			continue
		}
		if a := planRunning(s, j, &idle, now); a != nil {
			actions = append(actions, a)
			acted[id] = true
		}
	}
	for _, id := range ids {
		j := s.Jobs[id]
		st := j.Status.Value
		if st.State != pb.JobState_JOB_STATE_PENDING || s.DamagedJobs[id] {
			continue
		}
		if st.CancelRequested {
			actions = append(actions, Finish{JobID: id, State: pb.JobState_JOB_STATE_CANCELLED, Message: "cancelled before it started", StatusRev: j.Status.ModRev})
			continue
		}
		lo, hi := StartWorkers(j)
		if len(idle) < lo {
			continue
		}
		n := min(len(idle), hi)
		gen := uint64(1)
		if j.Assignment != nil {
			gen = j.Assignment.Value.Generation + 1
		}
		actions = append(actions, Assign{JobID: id, Generation: gen, Workers: append([]string(nil), idle[:n]...), StatusRev: j.Status.ModRev})
		idle = idle[n:]
	}
	for _, id := range ids {
		j := s.Jobs[id]
		if j.Status.Value.State != pb.JobState_JOB_STATE_RUNNING || acted[id] || j.Assignment == nil || len(idle) == 0 {
			continue
		}
		a := j.Assignment.Value
		_, hi := runWorkers(j)
		if len(a.Ranks) >= hi || (j.Progress != nil && j.Progress.TotalSteps > 0 && j.Progress.Step >= j.Progress.TotalSteps) {
			continue // full, or finishing
		}
		add := take(&idle, hi-len(a.Ranks))
		workers := append(rankWorkers(a), add...)
		actions = append(actions, Reconfigure{JobID: id, Generation: a.Generation + 1, Workers: workers,
			Reason: fmt.Sprintf("workers %v joined", add), StatusRev: j.Status.ModRev, AssignmentRev: j.Assignment.ModRev, ResultRev: j.ResultRev,
			History: []*pb.HistoryEntry{{TimeMs: now, Generation: a.Generation + 1, Event: "joined", Step: lastStep(j),
				Detail: fmt.Sprintf("workers %v joined at a step boundary; the ring has %d ranks", add, len(workers))}}})
	}

	// Claims that no running job's current generation owns are released, so
	// their workers go back to the idle pool.
	var releases []Action
	for w, c := range s.Claims {
		j := s.Jobs[c.Value.JobId]
		var why string
		switch {
		case s.DamagedJobs[c.Value.JobId]:
			// Nothing is decided about a job that cannot be read.
		case j == nil || j.Status.Value == nil:
			why = fmt.Sprintf("job %s is not active", c.Value.JobId)
		case j.Status.Value.State != pb.JobState_JOB_STATE_RUNNING:
			why = fmt.Sprintf("job %s is %s", c.Value.JobId, state.StateName(j.Status.Value.State))
		case j.Assignment == nil || j.Assignment.Value.Generation != c.Value.Generation:
			why = fmt.Sprintf("generation %d of job %s is over", c.Value.Generation, c.Value.JobId)
		}
		if why != "" && !acted[c.Value.JobId] && !finishing(actions, c.Value.JobId) {
			releases = append(releases, Release{WorkerID: w, ClaimRev: c.ModRev, Why: why})
		}
	}
	sort.Slice(releases, func(a, b int) bool { return releases[a].(Release).WorkerID < releases[b].(Release).WorkerID })
	return append(actions, releases...)
}

func finishing(actions []Action, jobID string) bool {
	for _, a := range actions {
		if f, ok := a.(Finish); ok && f.JobID == jobID {
			return true
		}
	}
	return false
}

// excludedWorkers are the registered workers that a job still in play
// lost to a suspected failure, in the same incarnation, or lost repeatedly
// not long ago: they are given nothing until they register anew, or until
// the exclusion's time is up.
func excludedWorkers(s *state.Snapshot, now int64) map[string]bool {
	out := map[string]bool{}
	for id := range ExcludedWorkers(s, now) {
		out[id] = true
	}
	return out
}

// ExcludedWorkers maps each excluded worker to why it is excluded.
func ExcludedWorkers(s *state.Snapshot, now int64) map[string]string {
	out := map[string]string{}
	for _, j := range s.Jobs {
		st := j.Status.Value
		if st == nil || state.IsTerminal(st.State) {
			continue
		}
		for _, e := range st.Excluded {
			w, ok := s.Workers[e.WorkerId]
			if !ok {
				continue
			}
			switch {
			case now < e.UntilMs:
				out[e.WorkerId] = fmt.Sprintf("job %s: %s (until %s)", j.ID, e.Reason, time.UnixMilli(e.UntilMs).UTC().Format(time.TimeOnly))
			case w.CreateRev == e.WorkerRevision:
				out[e.WorkerId] = fmt.Sprintf("job %s: %s", j.ID, e.Reason)
			}
		}
	}
	return out
}

// RepeatExclusion is how long a worker that a job has lost more than once
// is kept out of it (and of every other job), even after it registers anew:
// a machine that keeps crashing should not keep breaking rings.
const RepeatExclusion = 10 * time.Minute

// timesLost counts the job's history entries that record worker id lost.
func timesLost(st *pb.JobStatus, id string) int {
	n := 0
	for _, h := range st.History {
		if h.Event == "lost" && h.WorkerId == id {
			n++
		}
	}
	return n
}

func take(idle *[]string, n int) []string {
	n = max(min(n, len(*idle)), 0)
	out := append([]string(nil), (*idle)[:n]...)
	*idle = (*idle)[n:]
	return out
}

func rankWorkers(a *pb.Assignment) []string {
	out := make([]string, len(a.Ranks))
	for i, r := range a.Ranks {
		out[i] = r.WorkerId
	}
	return out
}

// finalProgress is the result rank 0 recorded (nil: none): the result
// key, or a progress that says done (as written before the result key).
func finalProgress(j *state.JobEntry) *pb.Progress {
	if p := j.Result; p != nil && p.Done {
		return p
	}
	if p := j.Progress; p != nil && p.Done {
		return p
	}
	return nil
}

func lastStep(j *state.JobEntry) int64 {
	if j.Progress != nil {
		return j.Progress.Step
	}
	return 0
}

// planRunning decides the fate of a running job: success, cancellation,
// failure, or a new generation without the ranks it lost or that leave.
func planRunning(s *state.Snapshot, j *state.JobEntry, idle *[]string, now int64) Action {
	st := j.Status.Value
	fin := func(to pb.JobState, msg string, res *pb.JobResult) Action {
		return Finish{JobID: j.ID, State: to, Message: msg, Result: res, StatusRev: j.Status.ModRev}
	}
	if st.CancelRequested {
		return fin(pb.JobState_JOB_STATE_CANCELLED, "cancelled by request", nil)
	}
	if j.Assignment == nil {
		return fin(pb.JobState_JOB_STATE_FAILED, "running without an assignment (state damaged); resume it", nil)
	}
	a := j.Assignment.Value
	if p := finalProgress(j); p != nil && p.Generation == a.Generation {
		return fin(pb.JobState_JOB_STATE_SUCCEEDED, fmt.Sprintf("finished %d steps", p.Step), p.Result)
	}
	var failures []string
	lost := map[int32]string{} // rank: why
	leaving := map[int32]bool{}
	for _, r := range j.Reports {
		if r.Generation != a.Generation {
			continue
		}
		switch {
		case r.Leaving:
			leaving[r.Rank] = true
		case r.Ring:
			for _, sus := range r.Suspects {
				if sus >= 0 && int(sus) < len(a.Ranks) && lost[sus] == "" {
					lost[sus] = fmt.Sprintf("worker %s (rank %d) lost: rank %d reported %s", a.Ranks[sus].WorkerId, sus, r.Rank, r.Error)
				}
			}
		default:
			failures = append(failures, fmt.Sprintf("rank %d on worker %s failed: %s", r.Rank, r.WorkerId, r.Error))
		}
	}
	if len(failures) > 0 {
		// A failure of the job itself (a bad spec, diverged replicas, a
		// NaN loss) would repeat on any ring.
		return fin(pb.JobState_JOB_STATE_FAILED, strings.Join(failures, "; ")+resumeHint(j.ID), nil)
	}
	ringReports := len(lost) > 0
	unregistered := 0
	for _, r := range a.Ranks {
		w, ok := s.Workers[r.WorkerId]
		switch {
		case leaving[r.Rank]:
			// It left at a step boundary; its registration may be gone
			// already.
		case !ok:
			unregistered++
			if since, seen := s.MissingSince[r.WorkerId]; s.MissingSince != nil && (!seen || now-since < LeaseSettle.Milliseconds()) &&
				!ringReports && !anyConnected(s, a) {
				return nil // let the other leases of the job expire too, if they will
			}
			if lost[r.Rank] == "" {
				lost[r.Rank] = fmt.Sprintf("worker %s (rank %d) lost: its lease expired", r.WorkerId, r.Rank)
			}
		case restarted(r, w):
			lost[r.Rank] = fmt.Sprintf("worker %s (rank %d) lost: it restarted", r.WorkerId, r.Rank)
		}
	}
	if !ringReports && len(leaving) == 0 && unregistered > 0 && unregistered == len(lost) {
		// Every rank vanished at once and none reported a failure: more
		// likely the workers lost etcd than their lives. Nobody could go
		// on without them anyway: wait for them to register again, all
		// of them (they come back one by one).
		switch since := st.UnreachableSinceMs; {
		case since == 0 && unregistered == len(a.Ranks):
			return Unreachable{JobID: j.ID, SinceMs: now, StatusRev: j.Status.ModRev,
				Message: fmt.Sprintf("all %d workers unreachable from etcd; waiting up to %v for them before restarting from the latest checkpoint", len(a.Ranks), UnreachableGrace)}
		case since != 0 && now-since < UnreachableGrace.Milliseconds():
			return nil
		}
	}
	if len(lost) == 0 && len(leaving) == 0 {
		if st.UnreachableSinceMs != 0 {
			return Unreachable{JobID: j.ID, StatusRev: j.Status.ModRev,
				Message: fmt.Sprintf("running on %d workers (generation %d); they were unreachable from etcd for %v", len(a.Ranks), a.Generation,
					time.Duration(now-st.UnreachableSinceMs)*time.Millisecond)}
		}
		return nil
	}
	step := lastStep(j)
	gen := a.Generation + 1
	var why, survivors []string
	var history []*pb.HistoryEntry
	var exclude []*pb.ExcludedWorker
	for _, r := range a.Ranks {
		switch {
		case lost[r.Rank] != "":
			why = append(why, lost[r.Rank])
			history = append(history, &pb.HistoryEntry{TimeMs: now, Generation: a.Generation, Event: "lost", Detail: lost[r.Rank], Step: step, WorkerId: r.WorkerId})
			if n := timesLost(st, r.WorkerId) + 1; n > 1 {
				// Lost before in this job: kept out for a while, however
				// it registers.
				exclude = append(exclude, &pb.ExcludedWorker{WorkerId: r.WorkerId, WorkerRevision: r.WorkerRevision, UntilMs: now + RepeatExclusion.Milliseconds(),
					Reason: fmt.Sprintf("%s; lost %d times by this job", lost[r.Rank], n)})
			} else if w, ok := s.Workers[r.WorkerId]; ok && w.CreateRev == r.WorkerRevision {
				// Still registered: hung, partitioned, or dead and not yet
				// expired. It gets no work until it registers anew.
				exclude = append(exclude, &pb.ExcludedWorker{WorkerId: r.WorkerId, WorkerRevision: r.WorkerRevision, Reason: lost[r.Rank]})
			}
		case leaving[r.Rank]:
			why = append(why, fmt.Sprintf("worker %s (rank %d) left", r.WorkerId, r.Rank))
			history = append(history, &pb.HistoryEntry{TimeMs: now, Generation: a.Generation, Event: "left", WorkerId: r.WorkerId,
				Detail: fmt.Sprintf("worker %s (rank %d) left at a step boundary", r.WorkerId, r.Rank), Step: step})
		default:
			survivors = append(survivors, r.WorkerId)
		}
	}
	failure := len(lost) > 0
	if failure && st.Restarts+1 > j.Spec.MaxRestarts {
		return fin(pb.JobState_JOB_STATE_FAILED, fmt.Sprintf("%s; the job has absorbed %d failures, its max_restarts", strings.Join(why, "; "), st.Restarts)+resumeHint(j.ID), nil)
	}
	lo, hi := runWorkers(j)
	add := take(idle, hi-len(survivors))
	if len(survivors) == 0 || len(survivors)+len(add) < lo {
		*idle = append(add, *idle...)
		msg := fmt.Sprintf("%s; %d of the %d ranks remain (at least %d needed)", strings.Join(why, "; "), len(survivors), len(a.Ranks), lo)
		history = append(history, &pb.HistoryEntry{TimeMs: now, Generation: a.Generation, Event: "restarted", Step: step,
			Detail: msg + "; restarting from the latest checkpoint"})
		return Requeue{JobID: j.ID, Message: msg, Exclude: exclude, History: history, StatusRev: j.Status.ModRev}
	}
	workers := append(survivors, add...)
	if len(add) > 0 {
		history = append(history, &pb.HistoryEntry{TimeMs: now, Generation: gen, Event: "joined", Step: step,
			Detail: fmt.Sprintf("workers %v replace the ranks lost", add)})
	}
	reason := strings.Join(why, "; ")
	history = append(history, &pb.HistoryEntry{TimeMs: now, Generation: gen, Event: "rebuilt", Step: step,
		Detail: fmt.Sprintf("ring rebuilt on %d workers %v", len(workers), workers)})
	return Reconfigure{JobID: j.ID, Generation: gen, Workers: workers, Abort: failure, Reason: reason, Failure: failure,
		Exclude: exclude, History: history, StatusRev: j.Status.ModRev, AssignmentRev: j.Assignment.ModRev, ResultRev: j.ResultRev}
}

// anyConnected reports whether a rank of the assignment is known to keep
// its lease alive right now.
func anyConnected(s *state.Snapshot, a *pb.Assignment) bool {
	for _, r := range a.Ranks {
		if s.Connected[r.WorkerId] {
			return true
		}
	}
	return false
}

// restarted reports whether the worker registered for a rank is another
// process than the one assigned: its state is gone.
func restarted(r *pb.RankAssignment, w state.Versioned[*pb.Worker]) bool {
	if r.WorkerIncarnation != "" {
		return w.Value.Incarnation != r.WorkerIncarnation
	}
	// Assigned before incarnations were recorded.
	return r.WorkerRevision != 0 && w.CreateRev != r.WorkerRevision
}

func resumeHint(jobID string) string {
	return fmt.Sprintf(" (resume from the last checkpoint with `coordinator resume %s`)", jobID)
}

// Workers is how many workers the job runs on at most: the spec's, unless
// a resume asked for another number.
func Workers(j *state.JobEntry) int {
	if st := j.Status.Value; st != nil && st.Workers > 0 {
		return int(st.Workers)
	}
	return int(j.Spec.Workers)
}

// StartWorkers is how many workers a pending job starts on: a plain job
// on exactly its number (gang scheduling), an elastic job on at least its
// minimum. A plain job restarting after failures takes what there is.
func StartWorkers(j *state.JobEntry) (lo, hi int) {
	hi = Workers(j)
	switch {
	case j.Spec.MinWorkers > 0:
		return min(int(j.Spec.MinWorkers), hi), hi
	case j.Status.Value.Restarts > 0 && j.Status.Value.Resume:
		return 1, hi
	}
	return hi, hi
}

// runWorkers is the range of ring sizes a running job trains on: an
// elastic job's [min, max]; a plain job goes on with any survivors and
// takes workers back up to its number.
func runWorkers(j *state.JobEntry) (lo, hi int) {
	hi = Workers(j)
	if j.Spec.MinWorkers > 0 {
		return min(int(j.Spec.MinWorkers), hi), hi
	}
	return 1, hi
}
