package coordinator

import (
	"reflect"
	"strings"
	"testing"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/state"
)

// snap builds snapshots for planner scenarios.
type snap struct{ s *state.Snapshot }

func newSnap() *snap {
	return &snap{&state.Snapshot{Workers: map[string]state.Versioned[*pb.Worker]{}, Claims: map[string]state.Versioned[*pb.Claim]{}, Jobs: map[string]*state.JobEntry{}}}
}

func (b *snap) worker(id string, rev int64) *snap {
	b.s.Workers[id] = state.Versioned[*pb.Worker]{Value: &pb.Worker{Id: id, Addr: id + ":1"}, CreateRev: rev, ModRev: rev}
	return b
}

func (b *snap) job(id string, workers int32, st pb.JobState, created int64) *state.JobEntry {
	j := &state.JobEntry{ID: id, Spec: &pb.JobSpec{Name: id, Workers: workers},
		Status: state.Versioned[*pb.JobStatus]{Value: &pb.JobStatus{State: st, CreatedMs: created}, ModRev: 100 + created}}
	b.s.Jobs[id] = j
	return j
}

// running makes j run generation gen on workers (rank order), with claims.
func (b *snap) running(j *state.JobEntry, gen uint64, workers ...string) {
	a := &pb.Assignment{Generation: gen}
	for r, w := range workers {
		a.Ranks = append(a.Ranks, &pb.RankAssignment{Rank: int32(r), WorkerId: w, WorkerRevision: b.s.Workers[w].CreateRev})
		b.s.Claims[w] = state.Versioned[*pb.Claim]{Value: &pb.Claim{JobId: j.ID, Generation: gen, Rank: int32(r)}, ModRev: 50}
	}
	j.Assignment = &state.Versioned[*pb.Assignment]{Value: a}
}

// now is the planner's clock in these scenarios.
const now = 1000

func TestPlan(t *testing.T) {
	running, pending := pb.JobState_JOB_STATE_RUNNING, pb.JobState_JOB_STATE_PENDING
	cases := []struct {
		name  string
		build func(b *snap)
		want  []Action
	}{
		{"nothing to do", func(b *snap) { b.worker("w1", 1) }, nil},
		{"pending waits for enough workers (gang)", func(b *snap) {
			b.worker("w1", 1)
			b.job("j", 2, pending, 1)
		}, nil},
		{"pending starts on the idle workers, sorted", func(b *snap) {
			b.worker("w2", 2).worker("w1", 1).worker("w3", 3)
			b.job("j", 2, pending, 1)
		}, []Action{Assign{JobID: "j", Generation: 1, Workers: []string{"w1", "w2"}, StatusRev: 101}}},
		{"a resume with another worker count starts on that many", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2).worker("w3", 3).worker("w4", 4)
			j := b.job("j", 2, pending, 1)
			j.Status.Value.Workers = 4
			j.Assignment = &state.Versioned[*pb.Assignment]{Value: &pb.Assignment{Generation: 3}}
		}, []Action{Assign{JobID: "j", Generation: 4, Workers: []string{"w1", "w2", "w3", "w4"}, StatusRev: 101}}},
		{"a resume on more workers than are idle waits", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 2, pending, 1)
			j.Status.Value.Workers = 3
		}, nil},
		{"first come first served, then backfill", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2).worker("w3", 3)
			b.job("big", 3, pending, 1)
			b.job("a", 2, pending, 2)
			b.job("b", 1, pending, 3)
		}, []Action{Assign{JobID: "big", Generation: 1, Workers: []string{"w1", "w2", "w3"}, StatusRev: 101}}},
		{"a job that does not fit lets a smaller one run", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			b.job("big", 3, pending, 1)
			b.job("small", 1, pending, 2)
		}, []Action{Assign{JobID: "small", Generation: 1, Workers: []string{"w1"}, StatusRev: 102}}},
		{"busy workers are not assigned twice", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			b.running(b.job("r", 1, running, 1), 1, "w1")
			b.job("p", 2, pending, 2)
		}, nil},
		{"a resumed job gets the next generation", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, pending, 1)
			j.Assignment = &state.Versioned[*pb.Assignment]{Value: &pb.Assignment{Generation: 4}}
		}, []Action{Assign{JobID: "j", Generation: 5, Workers: []string{"w1"}, StatusRev: 101}}},
		{"done progress of the current generation succeeds", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, running, 1)
			b.running(j, 2, "w1")
			j.Progress = &pb.Progress{Generation: 2, Step: 10, Done: true, Result: &pb.JobResult{TestAccuracy: 0.99}}
		}, []Action{Finish{JobID: "j", State: pb.JobState_JOB_STATE_SUCCEEDED, Message: "finished 10 steps", Result: &pb.JobResult{TestAccuracy: 0.99}, StatusRev: 101}}},
		{"a recorded result of the current generation succeeds", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, running, 1)
			b.running(j, 2, "w1")
			j.Progress = &pb.Progress{Generation: 2, Step: 9}
			j.Result, j.ResultRev = &pb.Progress{Generation: 2, Step: 10, Done: true, Result: &pb.JobResult{TestAccuracy: 0.98}}, 120
		}, []Action{Finish{JobID: "j", State: pb.JobState_JOB_STATE_SUCCEEDED, Message: "finished 10 steps", Result: &pb.JobResult{TestAccuracy: 0.98}, StatusRev: 101}}},
		{"a result of an older generation is ignored", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, running, 1)
			b.running(j, 2, "w1")
			j.Result = &pb.Progress{Generation: 1, Done: true}
		}, nil},
		{"done progress of an older generation is ignored", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, running, 1)
			b.running(j, 2, "w1")
			j.Progress = &pb.Progress{Generation: 1, Done: true}
		}, nil},
		{"a lost worker fails a job with max_restarts 0", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			delete(b.s.Workers, "w2")
			j.Spec.MaxRestarts = 0
		}, []Action{Finish{JobID: "j", State: pb.JobState_JOB_STATE_FAILED, Message: "worker w2 (rank 1) lost: its lease expired; the job has absorbed 0 failures, its max_restarts" + resumeHint("j"), StatusRev: 101}}},
		{"a lost worker: the survivors go on in place", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2).worker("w3", 3)
			j := b.job("j", 3, running, 1)
			b.running(j, 1, "w1", "w2", "w3")
			j.Spec.MaxRestarts = 3
			j.Progress = &pb.Progress{Generation: 1, Step: 385}
			delete(b.s.Workers, "w2")
		}, []Action{Reconfigure{JobID: "j", Generation: 2, Workers: []string{"w1", "w3"}, Abort: true, Failure: true,
			Reason: "worker w2 (rank 1) lost: its lease expired", StatusRev: 101,
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 1, Event: "lost", Detail: "worker w2 (rank 1) lost: its lease expired", Step: 385, WorkerId: "w2"},
				{TimeMs: now, Generation: 2, Event: "rebuilt", Detail: "ring rebuilt on 2 workers [w1 w3]", Step: 385}}}}},
		{"an idle worker replaces a rank its neighbour suspects; the suspect is excluded", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2).worker("w3", 3).worker("w4", 4)
			j := b.job("j", 3, running, 1)
			b.running(j, 1, "w1", "w2", "w3")
			j.Spec.MaxRestarts = 3
			j.Reports = []*pb.RankReport{{Generation: 1, Rank: 0, WorkerId: "w1", Ring: true, Suspects: []int32{1}, Error: "gone"}}
		}, []Action{Reconfigure{JobID: "j", Generation: 2, Workers: []string{"w1", "w3", "w4"}, Abort: true, Failure: true,
			Reason: "worker w2 (rank 1) lost: rank 0 reported gone", StatusRev: 101,
			Exclude: []*pb.ExcludedWorker{{WorkerId: "w2", WorkerRevision: 2, Reason: "worker w2 (rank 1) lost: rank 0 reported gone"}},
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 1, Event: "lost", Detail: "worker w2 (rank 1) lost: rank 0 reported gone", WorkerId: "w2"},
				{TimeMs: now, Generation: 2, Event: "joined", Detail: "workers [w4] replace the ranks lost"},
				{TimeMs: now, Generation: 2, Event: "rebuilt", Detail: "ring rebuilt on 3 workers [w1 w3 w4]"}}}}},
		{"an excluded worker is not idle, a re-registered one is", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2).worker("w3", 3)
			j := b.job("j", 3, running, 1)
			b.running(j, 2, "w1")
			j.Status.Value.Excluded = []*pb.ExcludedWorker{{WorkerId: "w2", WorkerRevision: 2}, {WorkerId: "w3", WorkerRevision: 1}}
		}, []Action{Reconfigure{JobID: "j", Generation: 3, Workers: []string{"w1", "w3"}, Reason: "workers [w3] joined", StatusRev: 101,
			History: []*pb.HistoryEntry{{TimeMs: now, Generation: 3, Event: "joined", Detail: "workers [w3] joined at a step boundary; the ring has 2 ranks"}}}}},
		{"a worker lost a second time is kept out for a while, however it registers", func(b *snap) {
			b.worker("w1", 1).worker("w2", 7).worker("w4", 4)
			j := b.job("j", 2, running, 1)
			b.s.Workers["w2"] = state.Versioned[*pb.Worker]{Value: &pb.Worker{Id: "w2"}, CreateRev: 2}
			b.running(j, 3, "w1", "w2")
			b.worker("w2", 7) // crashed and registered again
			j.Spec.MaxRestarts = 3
			j.Status.Value.History = []*pb.HistoryEntry{{Generation: 1, Event: "lost", WorkerId: "w2"}}
		}, []Action{Reconfigure{JobID: "j", Generation: 4, Workers: []string{"w1", "w4"}, Abort: true, Failure: true,
			Reason: "worker w2 (rank 1) lost: it restarted", StatusRev: 101,
			Exclude: []*pb.ExcludedWorker{{WorkerId: "w2", WorkerRevision: 2, UntilMs: now + RepeatExclusion.Milliseconds(),
				Reason: "worker w2 (rank 1) lost: it restarted; lost 2 times by this job"}},
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 3, Event: "lost", Detail: "worker w2 (rank 1) lost: it restarted", WorkerId: "w2"},
				{TimeMs: now, Generation: 4, Event: "joined", Detail: "workers [w4] replace the ranks lost"},
				{TimeMs: now, Generation: 4, Event: "rebuilt", Detail: "ring rebuilt on 2 workers [w1 w4]"}}}}},
		{"a repeatedly lost worker stays out until its exclusion ends", func(b *snap) {
			b.worker("w1", 1).worker("w2", 9)
			j := b.job("j", 2, running, 1)
			b.running(j, 2, "w1")
			j.Status.Value.Excluded = []*pb.ExcludedWorker{{WorkerId: "w2", WorkerRevision: 2, UntilMs: now + 1}}
		}, nil},
		{"a repeatedly lost worker comes back when its exclusion ends", func(b *snap) {
			b.worker("w1", 1).worker("w2", 9)
			j := b.job("j", 2, running, 1)
			b.running(j, 2, "w1")
			j.Status.Value.Excluded = []*pb.ExcludedWorker{{WorkerId: "w2", WorkerRevision: 2, UntilMs: now}}
		}, []Action{Reconfigure{JobID: "j", Generation: 3, Workers: []string{"w1", "w2"}, Reason: "workers [w2] joined", StatusRev: 101,
			History: []*pb.HistoryEntry{{TimeMs: now, Generation: 3, Event: "joined", Detail: "workers [w2] joined at a step boundary; the ring has 2 ranks"}}}}},
		{"a rank that reports itself wedged is replaced and excluded", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			j.Spec.MaxRestarts = 3
			j.Reports = []*pb.RankReport{{Generation: 1, Rank: 1, WorkerId: "w2", Ring: true, Suspects: []int32{1}, Error: "wedged"}}
		}, []Action{Reconfigure{JobID: "j", Generation: 2, Workers: []string{"w1"}, Abort: true, Failure: true,
			Reason: "worker w2 (rank 1) lost: rank 1 reported wedged", StatusRev: 101,
			Exclude: []*pb.ExcludedWorker{{WorkerId: "w2", WorkerRevision: 2, Reason: "worker w2 (rank 1) lost: rank 1 reported wedged"}},
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 1, Event: "lost", Detail: "worker w2 (rank 1) lost: rank 1 reported wedged", WorkerId: "w2"},
				{TimeMs: now, Generation: 2, Event: "rebuilt", Detail: "ring rebuilt on 1 workers [w1]"}}}}},
		{"a job with a damaged key is left alone, its claims kept; others go on", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2).worker("w3", 3)
			j := b.job("damaged", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			j.Assignment = nil // its assignment could not be decoded
			b.s.DamagedJobs = map[string]bool{"damaged": true}
			b.job("p", 1, pending, 2)
		}, []Action{Assign{JobID: "p", Generation: 1, Workers: []string{"w3"}, StatusRev: 102}}},
		{"a ring report that blames nobody changes nothing", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			j.Spec.MaxRestarts = 3
			j.Reports = []*pb.RankReport{{Generation: 1, Rank: 0, Ring: true, Error: "rank 1 gave up"}}
		}, nil},
		{"a leaving rank shrinks the ring at a step boundary, counting no failure", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			j.Reports = []*pb.RankReport{{Generation: 1, Rank: 0, Leaving: true}}
		}, []Action{Reconfigure{JobID: "j", Generation: 2, Workers: []string{"w2"}, Reason: "worker w1 (rank 0) left", StatusRev: 101,
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 1, Event: "left", Detail: "worker w1 (rank 0) left at a step boundary", WorkerId: "w1"},
				{TimeMs: now, Generation: 2, Event: "rebuilt", Detail: "ring rebuilt on 1 workers [w2]"}}}}},
		{"every rank lost: restart from the latest checkpoint", func(b *snap) {
			b.worker("w1", 9)
			j := b.job("j", 1, running, 1)
			b.s.Workers["w1"] = state.Versioned[*pb.Worker]{Value: &pb.Worker{Id: "w1"}, CreateRev: 1}
			b.running(j, 1, "w1")
			b.worker("w1", 9)
			j.Spec.MaxRestarts = 3
		}, []Action{Requeue{JobID: "j", Message: "worker w1 (rank 0) lost: it restarted; 0 of the 1 ranks remain (at least 1 needed)", StatusRev: 101,
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 1, Event: "lost", Detail: "worker w1 (rank 0) lost: it restarted", WorkerId: "w1"},
				{TimeMs: now, Generation: 1, Event: "restarted", Detail: "worker w1 (rank 0) lost: it restarted; 0 of the 1 ranks remain (at least 1 needed); restarting from the latest checkpoint"}}}}},
		{"every rank unregistered at once, no failure reported: wait for them", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			j.Spec.MaxRestarts = 3
			delete(b.s.Workers, "w1")
			delete(b.s.Workers, "w2")
		}, []Action{Unreachable{JobID: "j", SinceMs: now, StatusRev: 101,
			Message: "all 2 workers unreachable from etcd; waiting up to 30s for them before restarting from the latest checkpoint"}}},
		{"unreachable workers within the grace: nothing yet", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, running, 1)
			b.running(j, 1, "w1")
			j.Spec.MaxRestarts = 3
			j.Status.Value.UnreachableSinceMs = now - UnreachableGrace.Milliseconds() + 1
			delete(b.s.Workers, "w1")
		}, nil},
		{"unreachable workers past the grace: restart from the latest checkpoint", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, running, 1)
			b.running(j, 1, "w1")
			j.Spec.MaxRestarts = 3
			j.Status.Value.UnreachableSinceMs = now - UnreachableGrace.Milliseconds()
			delete(b.s.Workers, "w1")
		}, []Action{Requeue{JobID: "j", Message: "worker w1 (rank 0) lost: its lease expired; 0 of the 1 ranks remain (at least 1 needed)", StatusRev: 101,
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 1, Event: "lost", Detail: "worker w1 (rank 0) lost: its lease expired", WorkerId: "w1"},
				{TimeMs: now, Generation: 1, Event: "restarted", Detail: "worker w1 (rank 0) lost: its lease expired; 0 of the 1 ranks remain (at least 1 needed); restarting from the latest checkpoint"}}}}},
		{"a rank just unregistered, no peer known connected: let the other leases settle", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			j.Spec.MaxRestarts = 3
			delete(b.s.Workers, "w2")
			b.s.MissingSince = map[string]int64{"w2": now - 500}
		}, nil},
		{"a rank just unregistered while a peer renews its lease: lost alone, at once", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			j.Spec.MaxRestarts = 3
			delete(b.s.Workers, "w2")
			b.s.MissingSince = map[string]int64{"w2": now - 500}
			b.s.Connected = map[string]bool{"w1": true}
		}, []Action{Reconfigure{JobID: "j", Generation: 2, Workers: []string{"w1"}, Abort: true, Failure: true,
			Reason: "worker w2 (rank 1) lost: its lease expired", StatusRev: 101,
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 1, Event: "lost", Detail: "worker w2 (rank 1) lost: its lease expired", WorkerId: "w2"},
				{TimeMs: now, Generation: 2, Event: "rebuilt", Detail: "ring rebuilt on 1 workers [w1]"}}}}},
		{"some unreachable workers back: wait for the others within the grace", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			j.Spec.MaxRestarts = 3
			j.Status.Value.UnreachableSinceMs = now - 500
			delete(b.s.Workers, "w2")
		}, nil},
		{"unreachable workers back in the same incarnation: the job goes on as it was", func(b *snap) {
			b.s.Workers["w1"] = state.Versioned[*pb.Worker]{Value: &pb.Worker{Id: "w1", Incarnation: "a"}, CreateRev: 1}
			j := b.job("j", 1, running, 1)
			b.running(j, 1, "w1")
			j.Assignment.Value.Ranks[0].WorkerIncarnation = "a"
			j.Status.Value.UnreachableSinceMs = now - 20000
			b.s.Workers["w1"] = state.Versioned[*pb.Worker]{Value: &pb.Worker{Id: "w1", Incarnation: "a"}, CreateRev: 7}
		}, []Action{Unreachable{JobID: "j", StatusRev: 101, Message: "running on 1 workers (generation 1); they were unreachable from etcd for 20s"}}},
		{"a worker back in another incarnation restarted", func(b *snap) {
			b.s.Workers["w1"] = state.Versioned[*pb.Worker]{Value: &pb.Worker{Id: "w1", Incarnation: "a"}, CreateRev: 1}
			b.worker("w2", 2)
			j := b.job("j", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			j.Spec.MaxRestarts = 3
			j.Assignment.Value.Ranks[0].WorkerIncarnation = "a"
			b.s.Workers["w1"] = state.Versioned[*pb.Worker]{Value: &pb.Worker{Id: "w1", Incarnation: "b"}, CreateRev: 7}
		}, []Action{Reconfigure{JobID: "j", Generation: 2, Workers: []string{"w2"}, Abort: true, Failure: true,
			Reason: "worker w1 (rank 0) lost: it restarted", StatusRev: 101,
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 1, Event: "lost", Detail: "worker w1 (rank 0) lost: it restarted", WorkerId: "w1"},
				{TimeMs: now, Generation: 2, Event: "rebuilt", Detail: "ring rebuilt on 1 workers [w2]"}}}}},
		{"an elastic job below its minimum restarts from the checkpoint", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 3, running, 1)
			j.Spec.MinWorkers, j.Spec.MaxRestarts = 2, 3
			b.running(j, 1, "w1", "w2")
			delete(b.s.Workers, "w2")
		}, []Action{Requeue{JobID: "j", Message: "worker w2 (rank 1) lost: its lease expired; 1 of the 2 ranks remain (at least 2 needed)", StatusRev: 101,
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 1, Event: "lost", Detail: "worker w2 (rank 1) lost: its lease expired", WorkerId: "w2"},
				{TimeMs: now, Generation: 1, Event: "restarted", Detail: "worker w2 (rank 1) lost: its lease expired; 1 of the 2 ranks remain (at least 2 needed); restarting from the latest checkpoint"}}}}},
		{"an elastic job starts on its minimum and takes up to its maximum", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2).worker("w3", 3)
			j := b.job("j", 4, pending, 1)
			j.Spec.MinWorkers = 2
		}, []Action{Assign{JobID: "j", Generation: 1, Workers: []string{"w1", "w2", "w3"}, StatusRev: 101}}},
		{"a plain job restarting after failures starts on what there is", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 2, pending, 1)
			j.Status.Value.Restarts, j.Status.Value.Resume = 1, true
		}, []Action{Assign{JobID: "j", Generation: 1, Workers: []string{"w1"}, StatusRev: 101}}},
		{"recovery takes idle workers before pending jobs do", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2).worker("w3", 3)
			b.job("p", 1, pending, 1)
			j := b.job("j", 2, running, 2)
			j.Spec.MaxRestarts = 1
			b.running(j, 1, "w1", "w2")
			delete(b.s.Workers, "w2")
		}, []Action{Reconfigure{JobID: "j", Generation: 2, Workers: []string{"w1", "w3"}, Abort: true, Failure: true,
			Reason: "worker w2 (rank 1) lost: its lease expired", StatusRev: 102,
			History: []*pb.HistoryEntry{
				{TimeMs: now, Generation: 1, Event: "lost", Detail: "worker w2 (rank 1) lost: its lease expired", WorkerId: "w2"},
				{TimeMs: now, Generation: 2, Event: "joined", Detail: "workers [w3] replace the ranks lost"},
				{TimeMs: now, Generation: 2, Event: "rebuilt", Detail: "ring rebuilt on 2 workers [w1 w3]"}}}}},
		{"a rank report of the current generation fails the job", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, running, 1)
			b.running(j, 3, "w1")
			j.Reports = []*pb.RankReport{{Generation: 2, Rank: 0, Error: "old"}, {Generation: 3, Rank: 0, WorkerId: "w1", Error: "boom"}}
		}, []Action{Finish{JobID: "j", State: pb.JobState_JOB_STATE_FAILED, Message: "rank 0 on worker w1 failed: boom" + resumeHint("j"), StatusRev: 101}}},
		{"cancel a running job", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, running, 1)
			b.running(j, 1, "w1")
			j.Status.Value.CancelRequested = true
		}, []Action{Finish{JobID: "j", State: pb.JobState_JOB_STATE_CANCELLED, Message: "cancelled by request", StatusRev: 101}}},
		{"cancel a pending job", func(b *snap) {
			j := b.job("j", 1, pending, 1)
			j.Status.Value.CancelRequested = true
		}, []Action{Finish{JobID: "j", State: pb.JobState_JOB_STATE_CANCELLED, Message: "cancelled before it started", StatusRev: 101}}},
		{"stray claims are released", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2).worker("w3", 3)
			j := b.job("done", 1, pb.JobState_JOB_STATE_SUCCEEDED, 1)
			b.running(j, 1, "w1")
			r := b.job("r", 1, running, 2)
			b.running(r, 2, "w3")
			b.s.Claims["w2"] = state.Versioned[*pb.Claim]{Value: &pb.Claim{JobId: "r", Generation: 1}, ModRev: 7}
		}, []Action{
			Release{WorkerID: "w1", ClaimRev: 50, Why: "job done is succeeded"},
			Release{WorkerID: "w2", ClaimRev: 7, Why: "generation 1 of job r is over"},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newSnap()
			c.build(b)
			got := Plan(b.s, now)
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("Plan:\n got  %s\n want %s", describeAll(got), describeAll(c.want))
			}
			// Pure: planning again gives the same actions.
			if again := Plan(b.s, now); !reflect.DeepEqual(got, again) {
				t.Errorf("Plan is not deterministic: %s then %s", describeAll(got), describeAll(again))
			}
		})
	}
}

func describeAll(as []Action) string {
	var parts []string
	for _, a := range as {
		parts = append(parts, a.describe())
	}
	return "[" + strings.Join(parts, "; ") + "]"
}
