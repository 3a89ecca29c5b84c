package coordinator

import (
	"fmt"
	"sort"
	"strings"

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

func (a Assign) describe() string {
	return fmt.Sprintf("assign job %s generation %d to %v", a.JobID, a.Generation, a.Workers)
}
func (a Finish) describe() string {
	return fmt.Sprintf("finish job %s as %s: %s", a.JobID, state.StateName(a.State), a.Message)
}
func (a Release) describe() string { return fmt.Sprintf("release worker %s: %s", a.WorkerID, a.Why) }

// Plan decides what to do about a snapshot of the cluster. It is a pure
// function: the same snapshot always gives the same actions, which is what
// makes a restarted coordinator continue where the last one stopped.
//
// Scheduling is gang scheduling in submission order: a pending job starts
// only when as many idle workers as it asks for are registered; a job that
// does not fit does not hold back smaller jobs behind it (backfill).
func Plan(s *state.Snapshot) []Action {
	var actions []Action
	busy := map[string]bool{}
	for w := range s.Claims {
		busy[w] = true
	}
	var idle []string
	for id := range s.Workers {
		if !busy[id] {
			idle = append(idle, id)
		}
	}
	sort.Strings(idle)

	for _, id := range s.JobIDs() {
		j := s.Jobs[id]
		st := j.Status.Value
		switch st.State {
		case pb.JobState_JOB_STATE_PENDING:
			if st.CancelRequested {
				actions = append(actions, Finish{JobID: id, State: pb.JobState_JOB_STATE_CANCELLED, Message: "cancelled before it started", StatusRev: j.Status.ModRev})
				continue
			}
			n := Workers(j)
			if len(idle) < n {
				continue
			}
			gen := uint64(1)
			if j.Assignment != nil {
				gen = j.Assignment.Value.Generation + 1
			}
			actions = append(actions, Assign{JobID: id, Generation: gen, Workers: append([]string(nil), idle[:n]...), StatusRev: j.Status.ModRev})
			idle = idle[n:]
		case pb.JobState_JOB_STATE_RUNNING:
			if a := planRunning(s, j); a != nil {
				actions = append(actions, a)
			}
		}
	}

	// Claims that no running job's current generation owns are released, so
	// their workers go back to the idle pool.
	var claimed []string
	for w := range s.Claims {
		claimed = append(claimed, w)
	}
	sort.Strings(claimed)
	for _, w := range claimed {
		c := s.Claims[w]
		j := s.Jobs[c.Value.JobId]
		var why string
		switch {
		case j == nil || j.Status.Value == nil:
			why = fmt.Sprintf("job %s does not exist", c.Value.JobId)
		case j.Status.Value.State != pb.JobState_JOB_STATE_RUNNING:
			why = fmt.Sprintf("job %s is %s", c.Value.JobId, state.StateName(j.Status.Value.State))
		case j.Assignment == nil || j.Assignment.Value.Generation != c.Value.Generation:
			why = fmt.Sprintf("generation %d of job %s is over", c.Value.Generation, c.Value.JobId)
		}
		if why != "" && !finishing(actions, c.Value.JobId) {
			actions = append(actions, Release{WorkerID: w, ClaimRev: c.ModRev, Why: why})
		}
	}
	return actions
}

func finishing(actions []Action, jobID string) bool {
	for _, a := range actions {
		if f, ok := a.(Finish); ok && f.JobID == jobID {
			return true
		}
	}
	return false
}

// planRunning decides the fate of a running job: success, failure of a
// rank, a lost worker, or cancellation.
func planRunning(s *state.Snapshot, j *state.JobEntry) Action {
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
	if p := j.Progress; p != nil && p.Done && p.Generation == a.Generation {
		return fin(pb.JobState_JOB_STATE_SUCCEEDED, fmt.Sprintf("finished %d steps", p.Step), p.Result)
	}
	var failures []string
	for _, r := range j.Reports {
		if r.Generation == a.Generation {
			failures = append(failures, fmt.Sprintf("rank %d on worker %s failed: %s", r.Rank, r.WorkerId, r.Error))
		}
	}
	if len(failures) > 0 {
		return fin(pb.JobState_JOB_STATE_FAILED, strings.Join(failures, "; ")+resumeHint(j.ID), nil)
	}
	var lost []string
	for _, r := range a.Ranks {
		w, ok := s.Workers[r.WorkerId]
		switch {
		case !ok:
			lost = append(lost, fmt.Sprintf("worker %s (rank %d) was lost: its lease expired", r.WorkerId, r.Rank))
		case r.WorkerRevision != 0 && w.CreateRev != r.WorkerRevision:
			lost = append(lost, fmt.Sprintf("worker %s (rank %d) restarted", r.WorkerId, r.Rank))
		}
	}
	if len(lost) > 0 {
		return fin(pb.JobState_JOB_STATE_FAILED, strings.Join(lost, "; ")+resumeHint(j.ID), nil)
	}
	return nil
}

func resumeHint(jobID string) string {
	return fmt.Sprintf(" (resume from the last checkpoint with `coordinator resume %s`)", jobID)
}

// Workers is how many workers the job runs on when it next starts: the
// spec's, unless a resume asked for another number.
func Workers(j *state.JobEntry) int {
	if st := j.Status.Value; st != nil && st.Workers > 0 {
		return int(st.Workers)
	}
	return int(j.Spec.Workers)
}
