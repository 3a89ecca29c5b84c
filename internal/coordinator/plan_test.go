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
		{"done progress of an older generation is ignored", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, running, 1)
			b.running(j, 2, "w1")
			j.Progress = &pb.Progress{Generation: 1, Done: true}
		}, nil},
		{"a lost worker fails the job", func(b *snap) {
			b.worker("w1", 1).worker("w2", 2)
			j := b.job("j", 2, running, 1)
			b.running(j, 1, "w1", "w2")
			delete(b.s.Workers, "w2")
		}, []Action{Finish{JobID: "j", State: pb.JobState_JOB_STATE_FAILED, Message: "worker w2 (rank 1) was lost: its lease expired" + resumeHint("j"), StatusRev: 101}}},
		{"a restarted worker (new incarnation) fails the job", func(b *snap) {
			b.worker("w1", 1)
			j := b.job("j", 1, running, 1)
			b.running(j, 1, "w1")
			b.worker("w1", 9)
		}, []Action{Finish{JobID: "j", State: pb.JobState_JOB_STATE_FAILED, Message: "worker w1 (rank 0) restarted" + resumeHint("j"), StatusRev: 101}}},
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
			got := Plan(b.s)
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("Plan:\n got  %s\n want %s", describeAll(got), describeAll(c.want))
			}
			// Pure: planning again gives the same actions.
			if again := Plan(b.s); !reflect.DeepEqual(got, again) {
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
