package coordinator

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/state"
)

// errConflict means the state changed since the snapshot the action was
// planned on; the next reconcile plans again.
var errConflict = fmt.Errorf("coordinator: state changed concurrently")

// moveKeys re-puts a job's keys as read (but those in skip and under
// dropPrefix) with opts (a lease, or none to take them off one), each
// guarded by its revision.
func moveKeys(j *state.JobEntry, skip []string, dropPrefix string, opts ...clientv3.OpOption) ([]clientv3.Cmp, []clientv3.Op) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for _, kv := range j.KVs {
		key := string(kv.Key)
		if slices.Contains(skip, key) || (dropPrefix != "" && strings.HasPrefix(key, dropPrefix)) {
			continue
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision))
		ops = append(ops, clientv3.OpPut(key, string(kv.Value), opts...))
	}
	return cmps, ops
}

// apply runs one action as a guarded etcd transaction and returns the
// revision it wrote.
func (c *Coordinator) apply(ctx context.Context, s *state.Snapshot, a Action) (rev int64, err error) {
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
			asg.Ranks = append(asg.Ranks, &pb.RankAssignment{Rank: int32(rank), WorkerId: w, Addr: wk.Value.Addr, WorkerRevision: wk.CreateRev,
				WorkerIncarnation: wk.Value.Incarnation})
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
		// The job leaves the scheduler's view, and its keys move onto a
		// lease of the retention period (they are kept as they are until
		// then; a resume moves them back).
		var opts []clientv3.OpOption
		if c.cfg.JobRetention > 0 {
			lease, err := c.retentionLease(ctx)
			if err != nil {
				return 0, fmt.Errorf("coordinator: a lease for the retention of job %s: %w", a.JobID, err)
			}
			opts = append(opts, clientv3.WithLease(lease))
		}
		ops = append(ops, clientv3.OpPut(k.Status(a.JobID), state.Marshal(st), opts...), clientv3.OpDelete(k.ActiveJob(a.JobID)),
			clientv3.OpDelete(k.Reports(a.JobID), clientv3.WithPrefix()))
		mc, mo := moveKeys(j, []string{k.Status(a.JobID)}, k.Reports(a.JobID), opts...)
		cmps, ops = append(cmps, mc...), append(ops, mo...)
		for w, cl := range s.Claims {
			if cl.Value.JobId == a.JobID {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.Claim(w)), "=", cl.ModRev))
				ops = append(ops, clientv3.OpDelete(k.Claim(w)))
			}
		}
	case Unreachable:
		st := cloneStatus(s.Jobs[a.JobID].Status.Value)
		st.UnreachableSinceMs, st.Message, st.UpdatedMs = a.SinceMs, a.Message, now
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.Status(a.JobID)), "=", a.StatusRev))
		ops = append(ops, clientv3.OpPut(k.Status(a.JobID), state.Marshal(st)))
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
		st.UnreachableSinceMs = 0
		cmps = append(cmps,
			clientv3.Compare(clientv3.ModRevision(k.Status(a.JobID)), "=", a.StatusRev),
			clientv3.Compare(clientv3.ModRevision(k.Assignment(a.JobID)), "=", a.AssignmentRev),
			// A result recorded since the snapshot ends the job instead.
			clientv3.Compare(clientv3.ModRevision(k.Result(a.JobID)), "=", a.ResultRev))
		asg := &pb.Assignment{Generation: a.Generation, CreatedMs: now, Abort: a.Abort, Reason: a.Reason}
		member := map[string]bool{}
		for rank, w := range a.Workers {
			member[w] = true
			wk := s.Workers[w]
			asg.Ranks = append(asg.Ranks, &pb.RankAssignment{Rank: int32(rank), WorkerId: w, Addr: wk.Value.Addr, WorkerRevision: wk.CreateRev,
				WorkerIncarnation: wk.Value.Incarnation})
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
		st.UnreachableSinceMs = 0
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
		return 0, fmt.Errorf("coordinator: unknown action %T", a)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	resp, err := c.etcd.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		if rpctypes.Error(err) == rpctypes.ErrLeaseNotFound {
			// The shared retention lease is gone: the next finish takes a
			// new one.
			c.leaseMu.Lock()
			c.lease = 0
			c.leaseMu.Unlock()
		}
		return 0, fmt.Errorf("coordinator: %s: %w", a.describe(), err)
	}
	if !resp.Succeeded {
		return 0, errConflict
	}
	return resp.Header.Revision, nil
}

// leaseShare is how long jobs that finish one after another share a
// retention lease: their records expire together, up to this much later
// than the retention, and etcd keeps one lease for them instead of one a
// job.
const leaseShare = time.Second

// retentionLease returns a lease of the retention period for a job that
// finishes now: the current shared one, or a new one when it is older
// than leaseShare. A lease that goes unused expires on its own.
func (c *Coordinator) retentionLease(ctx context.Context) (clientv3.LeaseID, error) {
	c.leaseMu.Lock()
	defer c.leaseMu.Unlock()
	if c.lease != 0 && time.Since(c.leaseGranted) < leaseShare {
		return c.lease, nil
	}
	gctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	// The lease outlives the retention by the sharing time, so that the
	// last job to take it is kept for the whole retention too.
	granted := time.Now()
	resp, err := c.etcd.Grant(gctx, int64((c.cfg.JobRetention+leaseShare+time.Second-1)/time.Second))
	if err != nil {
		return 0, err
	}
	c.lease, c.leaseGranted = resp.ID, granted
	return resp.ID, nil
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

// layoutVersion is the key layout this coordinator writes: version 2
// added the active markers and the retention leases of finished jobs;
// version 3 moved progress out of the job's keys (to progress/<job>),
// outside what the scheduler watches; version 4 dropped the checkpoint
// records (the store is their record) and added the result key.
const layoutVersion = "4"

// migrate brings state written by an older coordinator to this layout. It
// runs once, by the leader, and is safe to repeat.
func (c *Coordinator) migrate(ctx context.Context) error {
	k := c.keys
	rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	resp, err := c.etcd.Get(rctx, k.Layout())
	if err != nil {
		return err
	}
	from := ""
	if len(resp.Kvs) > 0 {
		from = string(resp.Kvs[0].Value)
	}
	if from == layoutVersion {
		return nil
	}
	snap, err := state.Read(rctx, c.etcd, k)
	if err != nil {
		return err
	}
	active, finished, moved, dropped := 0, 0, 0, 0
	for _, id := range snap.JobIDs() {
		j := snap.Jobs[id]
		var ops []clientv3.Op
		var cmps []clientv3.Cmp
		var lease []clientv3.OpOption // a finished job's retention lease, when it gets one here
		switch {
		case from == "2" || from == "3":
			// Markers and retention leases are there already.
		case !state.IsTerminal(j.Status.Value.State):
			ops = append(ops, clientv3.OpPut(k.ActiveJob(id), ""))
			active++
		case c.cfg.JobRetention > 0:
			l, err := c.etcd.Grant(rctx, int64(c.cfg.JobRetention/time.Second))
			if err != nil {
				return err
			}
			lease = []clientv3.OpOption{clientv3.WithLease(l.ID)}
			cmps, ops = moveKeys(j, []string{k.LegacyProgress(id)}, k.Checkpoints(id), lease...)
			finished++
		}
		records := false
		for _, kv := range j.KVs {
			if strings.HasPrefix(string(kv.Key), k.Checkpoints(id)) {
				records = true
			}
			// Layout 3: progress leaves the job's keys, onto the lease it
			// had (or the one just granted).
			if string(kv.Key) != k.LegacyProgress(id) {
				continue
			}
			opts := lease
			if opts == nil && kv.Lease != 0 {
				opts = []clientv3.OpOption{clientv3.WithLease(clientv3.LeaseID(kv.Lease))}
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision))
			ops = append(ops, clientv3.OpPut(k.Progress(id), string(kv.Value), opts...), clientv3.OpDelete(string(kv.Key)))
			moved++
		}
		if records {
			// Layout 4: the checkpoint records go.
			ops = append(ops, clientv3.OpDelete(k.Checkpoints(id), clientv3.WithPrefix()))
			dropped++
		}
		if len(ops) == 0 {
			continue
		}
		tr, err := c.etcd.Txn(rctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return err
		}
		if !tr.Succeeded {
			return fmt.Errorf("job %s changed while it was upgraded; trying again", id)
		}
	}
	if _, err := c.etcd.Put(rctx, k.Layout(), layoutVersion); err != nil {
		return err
	}
	if active+finished+moved+dropped > 0 {
		c.log.Info("key layout upgraded", zap.String("from", from), zap.String("to", layoutVersion), zap.Int("active_jobs", active),
			zap.Int("finished_jobs_on_retention", finished), zap.Int("progress_keys_moved", moved), zap.Int("jobs_checkpoint_records_dropped", dropped))
	}
	return nil
}
