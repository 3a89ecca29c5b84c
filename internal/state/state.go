package state

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
)

// DefaultPrefix is the key prefix of a cluster's state.
const DefaultPrefix = "/ringmaster/"

// Keys builds the keys of one cluster.
type Keys struct{ Prefix string }

func (k Keys) Workers() string              { return k.Prefix + "workers/" }
func (k Keys) Worker(id string) string      { return k.Workers() + id }
func (k Keys) Claims() string               { return k.Prefix + "claims/" }
func (k Keys) Claim(workerID string) string { return k.Claims() + workerID }
func (k Keys) Jobs() string                 { return k.Prefix + "jobs/" }
func (k Keys) Job(id string) string         { return k.Jobs() + id + "/" }
func (k Keys) Spec(id string) string        { return k.Job(id) + "spec" }
func (k Keys) Status(id string) string      { return k.Job(id) + "status" }
func (k Keys) Assignment(id string) string  { return k.Job(id) + "assignment" }

// Result is where rank 0 records the final progress (done, with the
// result), along with its last progress: unlike progress, the scheduler
// watches it, and finishes the job as soon as it is written.
func (k Keys) Result(id string) string   { return k.Job(id) + "result" }
func (k Keys) Progresses() string        { return k.Prefix + "progress/" }
func (k Keys) Progress(id string) string { return k.Progresses() + id }

// LegacyProgress is where layout 2 kept a job's progress.
func (k Keys) LegacyProgress(id string) string { return k.Job(id) + "progress" }
func (k Keys) Reports(id string) string        { return k.Job(id) + "reports/" }
func (k Keys) Report(id string, rank int32) string {
	return k.Reports(id) + strconv.Itoa(int(rank))
}

// Checkpoints is where layouts before 4 recorded a job's checkpoints; the
// upgrade to layout 4 deletes these records (the store lists them).
func (k Keys) Checkpoints(id string) string { return k.Job(id) + "checkpoints/" }
func (k Keys) Election() string             { return k.Prefix + "election/" }

// Active holds one empty marker key per job that is not finished: the
// scheduler reads these jobs only, so its work does not grow with the
// jobs that finished.
func (k Keys) Active() string             { return k.Prefix + "active/" }
func (k Keys) ActiveJob(id string) string { return k.Active() + id }

// Layout records the version of this key layout (see Migrate).
func (k Keys) Layout() string { return k.Prefix + "layout" }

// Marshal encodes a message as stored in etcd.
func Marshal(m proto.Message) string {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		// Marshalling our own well-formed messages cannot fail.
		panic(fmt.Sprintf("state: marshal %T: %v", m, err))
	}
	return string(b)
}

// Unmarshal decodes a stored value, ignoring fields a newer version added.
func Unmarshal(b []byte, m proto.Message) error {
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, m)
}

// Versioned is a decoded value with the revisions that guard updates.
type Versioned[T any] struct {
	Value     T
	ModRev    int64
	CreateRev int64
	// Lease is the key's lease (0: none).
	Lease int64
}

// JobEntry is everything stored about one job.
type JobEntry struct {
	ID         string
	Spec       *pb.JobSpec
	Status     Versioned[*pb.JobStatus]
	Assignment *Versioned[*pb.Assignment]
	Progress   *pb.Progress
	// ProgressRev is the progress key's mod revision (0: none): a change
	// of ring is guarded by it, so that no new generation follows a
	// result already recorded.
	ProgressRev int64
	// Result is the final progress rank 0 recorded (nil: none yet), and
	// ResultRev its key's mod revision (0: none), which guards a change
	// of ring: no new generation follows a result already recorded.
	Result    *pb.Progress
	ResultRev int64
	Reports   []*pb.RankReport
	// KVs are the job's keys as read, to move them between leases (a
	// finished job's keys expire with a lease; a resumed job's are kept).
	KVs []*mvccpb.KeyValue
}

// Snapshot is the cluster's state at one revision.
type Snapshot struct {
	Rev     int64
	Workers map[string]Versioned[*pb.Worker]
	Claims  map[string]Versioned[*pb.Claim]
	Jobs    map[string]*JobEntry
	// Damaged are the keys whose values could not be decoded, with why.
	// Read leaves what they describe out (a job without its spec or
	// status, a worker whose claim is unreadable) instead of failing:
	// one bad key must not stop scheduling.
	Damaged map[string]error
	// DamagedJobs are the jobs with a damaged key: the planner takes no
	// decision about them (their claims stay) until the key is repaired
	// or removed.
	DamagedJobs map[string]bool
	// KeysRead is how many keys were read to build the snapshot.
	KeysRead int
	// MissingSince is when (Unix ms) the coordinator first saw each
	// assigned but unregistered worker missing; the planner gives leases
	// that expire together a moment to do so (nil: long ago).
	MissingSince map[string]int64
	// Connected are the registered workers whose lease etcd renewed
	// within the last keep-alive interval or so (filled by the coordinator
	// when a job has a missing rank): a job with a connected rank lost the
	// missing one alone, and is decided at once.
	Connected map[string]bool
}

// JobIDs returns the job ids in submission order.
func (s *Snapshot) JobIDs() []string {
	type entry struct {
		created int64
		id      string
	}
	es := make([]entry, 0, len(s.Jobs))
	for id, j := range s.Jobs {
		if j.Spec != nil && j.Status.Value != nil {
			es = append(es, entry{j.Status.Value.CreatedMs, id})
		}
	}
	slices.SortFunc(es, func(a, b entry) int {
		if c := cmp.Compare(a.created, b.created); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.id
	}
	return ids
}

// Read loads a snapshot of the whole cluster state.
func Read(ctx context.Context, cli *clientv3.Client, k Keys) (*Snapshot, error) {
	return read(ctx, cli, k, k.Prefix)
}

// ReadJob loads a snapshot that holds job id only (its spec, status,
// assignment, progress, reports and checkpoint records): what the API
// needs to answer about one job, read without the rest of the cluster.
func ReadJob(ctx context.Context, cli *clientv3.Client, k Keys, id string) (*Snapshot, error) {
	resp, err := cli.Get(ctx, k.Job(id), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("state: reading job %s: %w", id, err)
	}
	s := newSnapshot(resp.Header.Revision)
	kvs := resp.Kvs
	p, err := cli.Get(ctx, k.Progress(id), clientv3.WithRev(s.Rev))
	if err != nil {
		return nil, fmt.Errorf("state: reading the progress of job %s: %w", id, err)
	}
	s.decode(k, append(kvs, p.Kvs...))
	return s, nil
}

func read(ctx context.Context, cli *clientv3.Client, k Keys, prefix string) (*Snapshot, error) {
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("state: reading %s: %w", prefix, err)
	}
	s := newSnapshot(resp.Header.Revision)
	s.decode(k, resp.Kvs)
	return s, nil
}

// ReadActive loads what the scheduler decides on, at one revision: the
// workers, their claims, and the jobs that are not finished. What it reads
// grows with the workers and the active jobs, not with the jobs that
// finished.
func ReadActive(ctx context.Context, cli *clientv3.Client, k Keys) (*Snapshot, error) {
	resp, err := cli.Get(ctx, k.Workers(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("state: reading %s: %w", k.Workers(), err)
	}
	s := newSnapshot(resp.Header.Revision)
	kvs := resp.Kvs
	at := clientv3.WithRev(s.Rev)
	for _, p := range []string{k.Claims(), k.Active()} {
		resp, err := cli.Get(ctx, p, clientv3.WithPrefix(), at)
		if err != nil {
			return nil, fmt.Errorf("state: reading %s: %w", p, err)
		}
		kvs = append(kvs, resp.Kvs...)
	}
	for _, kv := range kvs {
		id, ok := strings.CutPrefix(string(kv.Key), k.Active())
		if !ok {
			continue
		}
		resp, err := cli.Get(ctx, k.Job(id), clientv3.WithPrefix(), at)
		if err != nil {
			return nil, fmt.Errorf("state: reading job %s: %w", id, err)
		}
		kvs = append(kvs, resp.Kvs...)
		if resp, err = cli.Get(ctx, k.Progress(id), at); err != nil {
			return nil, fmt.Errorf("state: reading the progress of job %s: %w", id, err)
		}
		kvs = append(kvs, resp.Kvs...)
	}
	s.decode(k, kvs)
	return s, nil
}

func newSnapshot(rev int64) *Snapshot {
	return &Snapshot{
		Rev:         rev,
		Workers:     map[string]Versioned[*pb.Worker]{},
		Claims:      map[string]Versioned[*pb.Claim]{},
		Jobs:        map[string]*JobEntry{},
		Damaged:     map[string]error{},
		DamagedJobs: map[string]bool{},
	}
}

// decode adds keys to the snapshot; a key that cannot be decoded is
// recorded in Damaged.
func (s *Snapshot) decode(k Keys, kvs []*mvccpb.KeyValue) {
	s.KeysRead += len(kvs)
	job := func(id string) *JobEntry {
		j := s.Jobs[id]
		if j == nil {
			j = &JobEntry{ID: id}
			s.Jobs[id] = j
		}
		return j
	}
	for _, kv := range kvs {
		key := string(kv.Key)
		var err error
		switch {
		case strings.HasPrefix(key, k.Workers()):
			w := &pb.Worker{}
			if err = Unmarshal(kv.Value, w); err == nil {
				s.Workers[strings.TrimPrefix(key, k.Workers())] = Versioned[*pb.Worker]{w, kv.ModRevision, kv.CreateRevision, kv.Lease}
			}
		case strings.HasPrefix(key, k.Claims()):
			c := &pb.Claim{}
			if err = Unmarshal(kv.Value, c); err == nil {
				s.Claims[strings.TrimPrefix(key, k.Claims())] = Versioned[*pb.Claim]{c, kv.ModRevision, kv.CreateRevision, kv.Lease}
			}
		case strings.HasPrefix(key, k.Progresses()):
			j := job(strings.TrimPrefix(key, k.Progresses()))
			j.KVs = append(j.KVs, kv)
			j.Progress, j.ProgressRev = &pb.Progress{}, kv.ModRevision
			if err = Unmarshal(kv.Value, j.Progress); err != nil {
				j.Progress, j.ProgressRev = nil, 0
				s.DamagedJobs[j.ID] = true
			}
		case strings.HasPrefix(key, k.Jobs()):
			id, rest, ok := strings.Cut(strings.TrimPrefix(key, k.Jobs()), "/")
			if !ok {
				continue
			}
			j := job(id)
			j.KVs = append(j.KVs, kv)
			switch {
			case rest == "spec":
				j.Spec = &pb.JobSpec{}
				err = Unmarshal(kv.Value, j.Spec)
			case rest == "status":
				st := &pb.JobStatus{}
				err = Unmarshal(kv.Value, st)
				j.Status = Versioned[*pb.JobStatus]{st, kv.ModRevision, kv.CreateRevision, kv.Lease}
			case rest == "assignment":
				a := &pb.Assignment{}
				err = Unmarshal(kv.Value, a)
				j.Assignment = &Versioned[*pb.Assignment]{a, kv.ModRevision, kv.CreateRevision, kv.Lease}
			case rest == "progress":
				j.Progress, j.ProgressRev = &pb.Progress{}, kv.ModRevision
				err = Unmarshal(kv.Value, j.Progress)
			case rest == "result":
				j.Result, j.ResultRev = &pb.Progress{}, kv.ModRevision
				err = Unmarshal(kv.Value, j.Result)
			case strings.HasPrefix(rest, "reports/"):
				r := &pb.RankReport{}
				if err = Unmarshal(kv.Value, r); err == nil {
					j.Reports = append(j.Reports, r)
				}
			case strings.HasPrefix(rest, "checkpoints/"):
				// Records of layouts before 4 (see Keys.Checkpoints);
				// the store is the record of checkpoints now.
			}
		}
		if err != nil {
			s.Damaged[key] = err
			if id, rest, ok := strings.Cut(strings.TrimPrefix(key, k.Jobs()), "/"); ok && strings.HasPrefix(key, k.Jobs()) {
				s.DamagedJobs[id] = true
				switch j := s.Jobs[id]; rest {
				case "spec":
					j.Spec = nil
				case "status":
					j.Status = Versioned[*pb.JobStatus]{}
				case "progress":
					j.Progress, j.ProgressRev = nil, 0
				case "result":
					j.Result, j.ResultRev = nil, 0
				case "assignment":
					j.Assignment = nil
				}
			}
		}
	}
	// A worker whose claim cannot be read may be busy: it is given
	// nothing.
	for key := range s.Damaged {
		if id, ok := strings.CutPrefix(key, k.Claims()); ok {
			delete(s.Workers, id)
		}
	}
}

// JobProto assembles the API view of a job entry.
func (j *JobEntry) JobProto() *pb.Job {
	out := &pb.Job{Id: j.ID, Spec: j.Spec, Status: j.Status.Value, Progress: j.Progress}
	if out.Progress == nil || (j.Result != nil && j.Result.Step >= out.Progress.Step) {
		out.Progress = j.Result
	}
	if j.Assignment != nil {
		out.Assignment = j.Assignment.Value
	}
	return out
}

// IsTerminal reports whether a job state is final.
func IsTerminal(s pb.JobState) bool {
	return s == pb.JobState_JOB_STATE_SUCCEEDED || s == pb.JobState_JOB_STATE_FAILED || s == pb.JobState_JOB_STATE_CANCELLED
}

// StateName is the short lower-case name of a job state ("running").
func StateName(s pb.JobState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_"))
}
