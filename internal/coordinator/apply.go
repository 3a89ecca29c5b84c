package coordinator

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/state"
)

// errConflict means the state changed since the snapshot the action was
// planned on; the next reconcile plans again.
var errConflict = fmt.Errorf("coordinator: state changed concurrently")

// apply runs one action as a guarded etcd transaction.
func (c *Coordinator) apply(ctx context.Context, s *state.Snapshot, a Action) error {
	k := c.keys
	now := time.Now().UnixMilli()
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	switch a := a.(type) {
	case Assign:
		j := s.Jobs[a.JobID]
		st := cloneStatus(j.Status.Value)
		st.State = pb.JobState_JOB_STATE_RUNNING
		st.Attempt++
		st.UpdatedMs = now
		st.Message = fmt.Sprintf("running on %d workers (generation %d)", len(a.Workers), a.Generation)
		switch {
		case st.Resume && st.ResumeStep > 0:
			st.Message += fmt.Sprintf(", resuming from the checkpoint at step %d", st.ResumeStep)
		case st.Resume:
			st.Message += ", resuming from the latest valid checkpoint"
		}
		asg := &pb.Assignment{Generation: a.Generation, CreatedMs: now}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.Status(a.JobID)), "=", a.StatusRev))
		for rank, w := range a.Workers {
			wk := s.Workers[w]
			asg.Ranks = append(asg.Ranks, &pb.RankAssignment{Rank: int32(rank), WorkerId: w, Addr: wk.Value.Addr, WorkerRevision: wk.CreateRev})
			cmps = append(cmps,
				clientv3.Compare(clientv3.CreateRevision(k.Worker(w)), "=", wk.CreateRev),
				clientv3.Compare(clientv3.CreateRevision(k.Claim(w)), "=", 0))
			ops = append(ops, clientv3.OpPut(k.Claim(w), state.Marshal(&pb.Claim{JobId: a.JobID, Generation: a.Generation, Rank: int32(rank)})))
		}
		ops = append(ops,
			clientv3.OpPut(k.Assignment(a.JobID), state.Marshal(asg)),
			clientv3.OpPut(k.Status(a.JobID), state.Marshal(st)),
			clientv3.OpDelete(k.Reports(a.JobID), clientv3.WithPrefix()))
	case Finish:
		j := s.Jobs[a.JobID]
		st := cloneStatus(j.Status.Value)
		st.State, st.Message, st.UpdatedMs = a.State, a.Message, now
		st.CancelRequested = false
		if a.Result != nil {
			st.Result = a.Result
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.Status(a.JobID)), "=", a.StatusRev))
		ops = append(ops, clientv3.OpPut(k.Status(a.JobID), state.Marshal(st)))
		for w, cl := range s.Claims {
			if cl.Value.JobId == a.JobID {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.Claim(w)), "=", cl.ModRev))
				ops = append(ops, clientv3.OpDelete(k.Claim(w)))
			}
		}
	case Release:
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.Claim(a.WorkerID)), "=", a.ClaimRev))
		ops = append(ops, clientv3.OpDelete(k.Claim(a.WorkerID)))
	case Reconfigure:
		j := s.Jobs[a.JobID]
		st := cloneStatus(j.Status.Value)
		if a.Failure {
			st.Restarts++
		}
		st.UpdatedMs = now
		st.Message = fmt.Sprintf("running on %d workers (generation %d)", len(a.Workers), a.Generation)
		if a.Reason != "" {
			st.Message += " after: " + a.Reason
		}
		st.Excluded = append(st.Excluded, a.Exclude...)
		st.History = appendHistory(st.History, a.History)
		cmps = append(cmps,
			clientv3.Compare(clientv3.ModRevision(k.Status(a.JobID)), "=", a.StatusRev),
			clientv3.Compare(clientv3.ModRevision(k.Assignment(a.JobID)), "=", a.AssignmentRev),
			// A result recorded since the snapshot ends the job instead.
			clientv3.Compare(clientv3.ModRevision(k.Progress(a.JobID)), "=", a.ProgressRev))
		asg := &pb.Assignment{Generation: a.Generation, CreatedMs: now, Abort: a.Abort, Reason: a.Reason}
		member := map[string]bool{}
		for rank, w := range a.Workers {
			member[w] = true
			wk := s.Workers[w]
			asg.Ranks = append(asg.Ranks, &pb.RankAssignment{Rank: int32(rank), WorkerId: w, Addr: wk.Value.Addr, WorkerRevision: wk.CreateRev})
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k.Worker(w)), "=", wk.CreateRev))
			if cl, ok := s.Claims[w]; ok && cl.Value.JobId == a.JobID {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.Claim(w)), "=", cl.ModRev))
			} else {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k.Claim(w)), "=", 0))
			}
			ops = append(ops, clientv3.OpPut(k.Claim(w), state.Marshal(&pb.Claim{JobId: a.JobID, Generation: a.Generation, Rank: int32(rank), Abort: a.Abort})))
		}
		for w, cl := range s.Claims {
			if cl.Value.JobId == a.JobID && !member[w] {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.Claim(w)), "=", cl.ModRev))
				ops = append(ops, clientv3.OpDelete(k.Claim(w)))
			}
		}
		ops = append(ops,
			clientv3.OpPut(k.Assignment(a.JobID), state.Marshal(asg)),
			clientv3.OpPut(k.Status(a.JobID), state.Marshal(st)),
			clientv3.OpDelete(k.Reports(a.JobID), clientv3.WithPrefix()))
	case Requeue:
		j := s.Jobs[a.JobID]
		st := cloneStatus(j.Status.Value)
		st.State, st.UpdatedMs = pb.JobState_JOB_STATE_PENDING, now
		st.Restarts++
		st.Resume, st.ResumeStep = true, 0
		st.Message = a.Message + "; restarting from the latest valid checkpoint when workers are available"
		st.Excluded = append(st.Excluded, a.Exclude...)
		st.History = appendHistory(st.History, a.History)
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.Status(a.JobID)), "=", a.StatusRev))
		ops = append(ops, clientv3.OpPut(k.Status(a.JobID), state.Marshal(st)))
		for w, cl := range s.Claims {
			if cl.Value.JobId == a.JobID {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.Claim(w)), "=", cl.ModRev))
				ops = append(ops, clientv3.OpDelete(k.Claim(w)))
			}
		}
	default:
		return fmt.Errorf("coordinator: unknown action %T", a)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	resp, err := c.etcd.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("coordinator: %s: %w", a.describe(), err)
	}
	if !resp.Succeeded {
		return errConflict
	}
	return nil
}

// maxHistory bounds a job's history in its status.
const maxHistory = 64

func appendHistory(h, more []*pb.HistoryEntry) []*pb.HistoryEntry {
	h = append(h, more...)
	if len(h) > maxHistory {
		h = h[len(h)-maxHistory:]
	}
	return h
}

func cloneStatus(s *pb.JobStatus) *pb.JobStatus { return proto.Clone(s).(*pb.JobStatus) }
