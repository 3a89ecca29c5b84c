package coordinator

import (
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/events"
	"github.com/ringmaster/ringmaster/internal/jobspec"
	"github.com/ringmaster/ringmaster/internal/state"
	"github.com/ringmaster/ringmaster/internal/version"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

// api implements the Coordinator gRPC service. Mutations are etcd
// transactions guarded by revisions, so they are safe from any coordinator
// replica; the leader's reconcile loop acts on what they record.
type api struct {
	pb.UnimplementedCoordinatorServer
	c *Coordinator
}

func (a *api) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.InfoResponse, error) {
	// Embedded servers may listen on all interfaces; workers reach them
	// through the advertised host. External servers' URLs pass unchanged.
	eps := append([]string(nil), a.c.etcdURLs...)
	if a.c.embEtcd != nil {
		// Every member of the embedded cluster, as each advertises
		// itself: a worker's etcd client fails over between them.
		eps = a.c.embEtcd.Endpoints()
		if a.c.cfg.InitialCluster != "" {
			mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			ms, err := a.c.etcd.MemberList(mctx)
			cancel()
			if err == nil {
				eps = nil
				for _, m := range ms.Members {
					eps = append(eps, m.ClientURLs...)
				}
			}
		}
	}
	natsURL := a.c.natsURL
	if a.c.embNATS != nil {
		natsURL = a.c.advertised(natsURL)
	}
	return &pb.InfoResponse{EtcdEndpoints: eps, NatsUrl: natsURL, Version: version.Version, EtcdPrefix: a.c.keys.Prefix}, nil
}

func (a *api) SubmitJob(ctx context.Context, req *pb.SubmitJobRequest) (*pb.SubmitJobResponse, error) {
	spec, err := jobspec.Parse(req.SpecYaml, jobspec.Options{DefaultStore: a.c.cfg.DefaultStore, CheckPaths: true, Policy: &a.c.cfg.Policy})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if spec.Resume != "" {
		if err := a.checkResumeSource(ctx, spec.Resume); err != nil {
			return nil, err
		}
	}
	if spec.InitFrom != "" && !isURL(spec.InitFrom) {
		id, err := a.resolveJobRef(ctx, spec.InitFrom)
		if err != nil {
			return nil, err
		}
		spec.InitFrom = id
	}
	now := time.Now().UnixMilli()
	st := &pb.JobStatus{State: pb.JobState_JOB_STATE_PENDING, CreatedMs: now, UpdatedMs: now,
		Message: fmt.Sprintf("waiting for %d idle workers", spec.Workers)}
	ctx, cancel := context.WithTimeout(ctx, a.c.cfg.RequestTimeout)
	defer cancel()
	k := a.c.keys
	specJSON, statusJSON := state.Marshal(spec), state.Marshal(st)
	for range 5 {
		id := spec.Name + "-" + randomSuffix()
		// A write that timed out in an etcd leader change may have
		// landed: it is retried under the same id, and a spec and status
		// found there equal to ours are this submission's own.
		var landed, uncertain bool
		err := retryTransient(ctx, func(ctx context.Context) error {
			resp, err := a.c.etcd.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(k.Spec(id)), "=", 0)).
				Then(clientv3.OpPut(k.Spec(id), specJSON), clientv3.OpPut(k.Status(id), statusJSON), clientv3.OpPut(k.ActiveJob(id), "")).
				Else(clientv3.OpGet(k.Spec(id)), clientv3.OpGet(k.Status(id))).
				Commit()
			if err != nil {
				// Refused for want of a leader, a request was not
				// proposed; any other failure may have been (and may
				// still commit when a quorum is back).
				uncertain = uncertain || rpctypes.Error(err) != rpctypes.ErrNoLeader
				return err
			}
			landed = resp.Succeeded
			if !resp.Succeeded {
				sp, stt := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
				landed = len(sp) == 1 && len(stt) == 1 && string(sp[0].Value) == specJSON && string(stt[0].Value) == statusJSON
			}
			return nil
		})
		if err != nil {
			msg := fmt.Sprintf("recording the job in etcd: %v", err)
			if q := a.c.noQuorum(ctx); q != "" {
				msg = q
			}
			if uncertain {
				msg += fmt.Sprintf("; this submission may still be recorded as job %s if etcd had taken it before it lost its quorum: check `coordinator status %s` before submitting again", id, id)
			}
			return nil, status.Error(codes.Unavailable, msg)
		}
		if landed {
			a.c.log.Info("job submitted", zap.String("job", id), zap.String("model", spec.Model), zap.Int32("workers", spec.Workers))
			_ = a.c.pub.Publish(&pb.JobEvent{JobId: id, Event: &pb.JobEvent_State{State: &pb.StateChange{State: st.State, Message: st.Message}}})
			return &pb.SubmitJobResponse{JobId: id}, nil
		}
	}
	return nil, status.Error(codes.Internal, "could not find a free job id")
}

// transientWindow is how long an API call retries etcd errors that an
// etcd leader change causes (an election takes about a second); past it,
// the call fails and says whether the cluster has lost its quorum.
const transientWindow = 3 * time.Second

// attemptTimeout bounds one try of a write: a proposal lost with a dead
// etcd leader would otherwise wait out etcd's own request timeout (about
// 6 s) before the next try.
const attemptTimeout = 2 * time.Second

// retryTransient runs op until it succeeds, fails for good, or etcd has
// been in a leader change for transientWindow. Each try has its own
// deadline; op must be safe to repeat after a try that timed out (which
// may have landed).
func retryTransient(ctx context.Context, op func(context.Context) error) error {
	var deadline time.Time
	for {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := op(actx)
		timedOut := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil || ctx.Err() != nil || !(timedOut || transient(err)) {
			return err
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(transientWindow)
		} else if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// transient reports whether an etcd error comes from a leader change or a
// lost connection, after which the same request may succeed.
func transient(err error) bool {
	switch rpctypes.Error(err) {
	case rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrTimeoutDueToConnectionLost,
		rpctypes.ErrLeaderChanged, rpctypes.ErrNoLeader, rpctypes.ErrTooManyRequests:
		return true
	}
	return status.Code(err) == codes.Unavailable
}

// resolveJobRef turns init_from's job reference into a job id: an
// existing job id, or the name of a job (the newest submitted under it),
// so that a fine-tuning spec can name its pretraining job's spec name.
func (a *api) resolveJobRef(ctx context.Context, ref string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, a.c.cfg.RequestTimeout)
	defer cancel()
	resp, err := a.c.etcd.Get(ctx, a.c.keys.Jobs(), clientv3.WithPrefix())
	if err != nil {
		return "", status.Errorf(codes.Unavailable, "etcd: %v", err)
	}
	best, bestRev := "", int64(-1)
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		if !strings.HasSuffix(key, "/spec") {
			continue
		}
		id := strings.TrimSuffix(strings.TrimPrefix(key, a.c.keys.Jobs()), "/spec")
		if id == ref {
			return id, nil
		}
		var spec pb.JobSpec
		if state.Unmarshal(kv.Value, &spec) == nil && spec.Name == ref && kv.CreateRevision > bestRev {
			best, bestRev = id, kv.CreateRevision
		}
	}
	if best == "" {
		return "", status.Errorf(codes.InvalidArgument, "invalid job spec:\n  - init_from: no job has the id or name %q; give a job id or name from `coordinator list`, or a checkpoint URL", ref)
	}
	return best, nil
}

// checkResumeSource refuses a spec whose resume names a job that does not
// exist (a store URL is checked by the workers that read it).
func (a *api) checkResumeSource(ctx context.Context, src string) error {
	if isURL(src) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, a.c.cfg.RequestTimeout)
	defer cancel()
	resp, err := a.c.etcd.Get(ctx, a.c.keys.Spec(src), clientv3.WithCountOnly())
	if err != nil {
		return status.Errorf(codes.Unavailable, "etcd: %v", err)
	}
	if resp.Count == 0 {
		return status.Errorf(codes.InvalidArgument, "invalid job spec:\n  - resume: job %q does not exist; give an existing job id (see `coordinator list`) or a checkpoint store URL", src)
	}
	return nil
}

func isURL(s string) bool {
	for i := 0; i+2 < len(s); i++ {
		if s[i:i+3] == "://" {
			return true
		}
	}
	return false
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return string(b[:])
}

func (a *api) snapshot(ctx context.Context) (*state.Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, a.c.cfg.RequestTimeout)
	defer cancel()
	s, err := state.Read(ctx, a.c.etcd, a.c.keys)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	return s, nil
}

func (a *api) ListJobs(ctx context.Context, _ *pb.ListJobsRequest) (*pb.ListJobsResponse, error) {
	s, err := a.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	out := &pb.ListJobsResponse{}
	for _, id := range s.JobIDs() {
		out.Jobs = append(out.Jobs, s.Jobs[id].JobProto())
	}
	return out, nil
}

func (a *api) job(ctx context.Context, id string) (*state.Snapshot, *state.JobEntry, error) {
	if id == "" {
		return nil, nil, status.Error(codes.InvalidArgument, "job id is empty; see `coordinator list`")
	}
	rctx, cancel := context.WithTimeout(ctx, a.c.cfg.RequestTimeout)
	defer cancel()
	s, err := state.ReadJob(rctx, a.c.etcd, a.c.keys, id)
	if err != nil {
		return nil, nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	j := s.Jobs[id]
	if j == nil || j.Spec == nil || j.Status.Value == nil {
		return nil, nil, status.Errorf(codes.NotFound, "job %q does not exist; see `coordinator list`", id)
	}
	return s, j, nil
}

// GetJob returns the job with its checkpoints as its store lists them
// (the store is their only record).
func (a *api) GetJob(ctx context.Context, req *pb.GetJobRequest) (*pb.Job, error) {
	_, j, err := a.job(ctx, req.JobId)
	if err != nil {
		return nil, err
	}
	out := j.JobProto()
	list, err := a.listCheckpoints(ctx, j)
	if err != nil {
		out.CheckpointsError = err.Error()
		return out, nil
	}
	for _, c := range list {
		if !c.Valid {
			continue
		}
		rec := &pb.CheckpointRecord{Step: c.Step, Url: c.URL, SizeBytes: c.Size}
		if !c.Created.IsZero() {
			rec.TimeMs = c.Created.UnixMilli()
		}
		out.Checkpoints = append(out.Checkpoints, rec)
	}
	slices.SortFunc(out.Checkpoints, func(x, y *pb.CheckpointRecord) int { return cmp.Compare(x.Step, y.Step) })
	return out, nil
}

// storeListTimeout bounds the listing of a job's checkpoints for GetJob.
const storeListTimeout = 5 * time.Second

// listCheckpoints lists a job's checkpoints (manifests checked, data not
// read).
func (a *api) listCheckpoints(ctx context.Context, j *state.JobEntry) ([]checkpoint.Info, error) {
	mgr, err := a.checkpoints(j)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, storeListTimeout)
	defer cancel()
	list, err := mgr.List(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("listing the checkpoints of job %s in %s: %w", j.ID, mgr.URL(), err)
	}
	return list, nil
}

// updateStatus applies fn to the job's status in a transaction guarded by
// its revision, retrying on concurrent changes.
//
// With reactivate (a resume) the job also becomes active again and its keys
// come off the retention lease it got when it finished.
func (a *api) updateStatus(ctx context.Context, id string, reactivate bool, fn func(*state.JobEntry, *pb.JobStatus) error) (*pb.Job, error) {
	deadline := time.Now().Add(transientWindow)
	for tries := 0; tries < 10; {
		_, j, err := a.job(ctx, id)
		if err != nil {
			return nil, err
		}
		st := proto.Clone(j.Status.Value).(*pb.JobStatus)
		if err := fn(j, st); err != nil {
			return nil, err
		}
		st.UpdatedMs = time.Now().UnixMilli()
		tctx, cancel := context.WithTimeout(ctx, a.c.cfg.RequestTimeout)
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(a.c.keys.Status(id)), "=", j.Status.ModRev)}
		ops := []clientv3.Op{clientv3.OpPut(a.c.keys.Status(id), state.Marshal(st))}
		if reactivate {
			mc, mo := moveKeys(j, []string{a.c.keys.Status(id)}, "")
			cmps, ops = append(cmps, mc...), append(append(ops, mo...), clientv3.OpPut(a.c.keys.ActiveJob(id), ""))
		}
		resp, err := a.c.etcd.Txn(tctx).If(cmps...).Then(ops...).Commit()
		cancel()
		if err != nil && transient(err) && time.Now().Before(deadline) {
			// An etcd leader change: read the job again (the write may
			// have landed, or not) and decide anew.
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "etcd: %v", err)
		}
		if resp.Succeeded {
			out := j.JobProto()
			out.Status = st
			return out, nil
		}
		tries++
	}
	return nil, status.Error(codes.Aborted, "the job kept changing; try again")
}

func (a *api) CancelJob(ctx context.Context, req *pb.CancelJobRequest) (*pb.Job, error) {
	return a.updateStatus(ctx, req.JobId, false, func(j *state.JobEntry, st *pb.JobStatus) error {
		if state.IsTerminal(st.State) {
			return status.Errorf(codes.FailedPrecondition, "job %s is already %s", j.ID, state.StateName(st.State))
		}
		st.CancelRequested = true
		st.Message = "cancelling"
		return nil
	})
}

func resumable(j *state.JobEntry, st *pb.JobStatus) error {
	switch st.State {
	case pb.JobState_JOB_STATE_FAILED, pb.JobState_JOB_STATE_CANCELLED:
		return nil
	case pb.JobState_JOB_STATE_SUCCEEDED:
		return status.Errorf(codes.FailedPrecondition, "job %s already succeeded; to train further, submit a new job with `resume: %s`", j.ID, j.ID)
	default:
		return status.Errorf(codes.FailedPrecondition, "job %s is %s; only failed or cancelled jobs can be resumed", j.ID, state.StateName(st.State))
	}
}

// ResumeJob sets a failed or cancelled job pending again, to continue from
// its newest valid checkpoint or from the one of req.Step, on its own
// number of workers or on req.Workers. A chosen step must be valid in the
// store; checkpoints newer than it are deleted only when asked
// (discard_newer), so that the new run's checkpoints never mix with the
// old run's later ones.
func (a *api) ResumeJob(ctx context.Context, req *pb.ResumeJobRequest) (*pb.Job, error) {
	if req.Step < 0 || req.Workers < 0 || req.Workers > jobspec.MaxWorkers {
		return nil, status.Errorf(codes.InvalidArgument, "step %d / workers %d out of range (workers: 1 to %d)", req.Step, req.Workers, jobspec.MaxWorkers)
	}
	if req.DiscardNewer && req.Step == 0 {
		return nil, status.Error(codes.InvalidArgument, "discard_newer needs a step to resume from")
	}
	_, j, err := a.job(ctx, req.JobId)
	if err != nil {
		return nil, err
	}
	if err := resumable(j, j.Status.Value); err != nil {
		return nil, err
	}
	if g := j.Spec.Workers * j.Spec.BatchSize; req.Workers > g {
		return nil, status.Errorf(codes.InvalidArgument, "job %s trains with a global batch of %d samples; %d workers would leave some with none", j.ID, g, req.Workers)
	}
	if req.Step > 0 {
		if err := a.checkResumeStep(ctx, j, req.Step, req.DiscardNewer); err != nil {
			return nil, err
		}
	}
	return a.updateStatus(ctx, req.JobId, true, func(j *state.JobEntry, st *pb.JobStatus) error {
		if err := resumable(j, st); err != nil {
			return err
		}
		st.State = pb.JobState_JOB_STATE_PENDING
		st.Resume = true
		st.ResumeStep = req.Step
		st.Result = nil
		if req.Workers > 0 {
			st.Workers = req.Workers
		}
		workers := Workers(j)
		if req.Workers > 0 {
			workers = int(req.Workers)
		}
		switch last := j.Progress.GetLastCheckpoint(); {
		case req.Step > 0:
			st.Message = fmt.Sprintf("resuming from the checkpoint at step %d; waiting for %d idle workers", req.Step, workers)
		case last == nil:
			st.Message = fmt.Sprintf("resuming: no checkpoint reported by the last run, the job restarts from step 0 unless its store holds one; waiting for %d idle workers", workers)
		default:
			st.Message = fmt.Sprintf("resuming from the latest valid checkpoint (the last run committed step %d); waiting for %d idle workers", last.Step, workers)
		}
		return nil
	})
}

// checkpoints returns the manager of a job's checkpoints, as its workers
// write them.
func (a *api) checkpoints(j *state.JobEntry) (*checkpoint.Manager, error) {
	// Opening a file store creates its directory: a store outside the
	// policy (recorded before the policy changed) is not touched.
	if err := a.c.cfg.Policy.CheckStore(j.Spec.Checkpoint.GetStore()); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "job %s: its checkpoint store is outside this coordinator's submission policy, so the coordinator does not open it: %v", j.ID, err)
	}
	store, err := checkpoint.Open(j.Spec.Checkpoint.GetStore())
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "job %s: %v", j.ID, err)
	}
	return checkpoint.NewManager(store, j.ID, int(j.Spec.Checkpoint.GetKeep()), a.c.log,
		checkpoint.KeepEvery(j.Spec.Checkpoint.GetKeepEvery())), nil
}

// checkResumeStep checks that the job's checkpoint at step is valid, and
// deals with newer ones.
func (a *api) checkResumeStep(ctx context.Context, j *state.JobEntry, step int64, discard bool) error {
	mgr, err := a.checkpoints(j)
	if err != nil {
		return err
	}
	list, err := mgr.List(ctx, false)
	if err != nil {
		return status.Errorf(codes.Unavailable, "listing the checkpoints of job %s: %v", j.ID, err)
	}
	var valid, newer []string
	found := false
	for _, c := range list {
		switch {
		case c.Step == step && !c.Valid:
			return status.Errorf(codes.FailedPrecondition, "the checkpoint of job %s at step %d is not valid: %s", j.ID, step, c.Problem)
		case c.Step == step:
			found = true
		case c.Step > step:
			newer = append(newer, fmt.Sprint(c.Step))
		}
		if c.Valid {
			valid = append(valid, fmt.Sprint(c.Step))
		}
	}
	if !found {
		return status.Errorf(codes.FailedPrecondition, "job %s has no checkpoint at step %d; valid steps: %s (see `coordinator checkpoints %s`)", j.ID, step, strings.Join(valid, ", "), j.ID)
	}
	if len(newer) > 0 && !discard {
		return status.Errorf(codes.FailedPrecondition, "job %s has checkpoints after step %d (steps %s); resuming from step %d deletes them so they never mix with the new run's: confirm with --discard-newer",
			j.ID, step, strings.Join(newer, ", "), step)
	}
	if len(newer) > 0 {
		if err := mgr.DiscardNewer(ctx, step); err != nil {
			return status.Errorf(codes.Unavailable, "deleting the checkpoints of job %s after step %d: %v", j.ID, step, err)
		}
		a.c.log.Info("discarded checkpoints newer than the resume step", zap.String("job", j.ID), zap.Int64("step", step), zap.Strings("steps", newer))
	}
	return nil
}

// ListCheckpoints lists a job's checkpoints from its store.
func (a *api) ListCheckpoints(ctx context.Context, req *pb.ListCheckpointsRequest) (*pb.ListCheckpointsResponse, error) {
	_, j, err := a.job(ctx, req.JobId)
	if err != nil {
		return nil, err
	}
	mgr, err := a.checkpoints(j)
	if err != nil {
		return nil, err
	}
	list, err := mgr.List(ctx, req.Verify)
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.Errorf(codes.DeadlineExceeded, "listing the checkpoints of job %s: %v", j.ID, err)
		}
		return nil, status.Errorf(codes.Unavailable, "listing the checkpoints of job %s: %v", j.ID, err)
	}
	out := &pb.ListCheckpointsResponse{Store: mgr.URL()}
	for _, c := range list {
		ci := &pb.CheckpointInfo{Step: c.Step, SizeBytes: c.Size, Url: c.URL, Valid: c.Valid, Problem: c.Problem,
			World: int32(c.World), Epoch: int32(c.Epoch), GlobalSamples: c.GlobalSamples}
		if !c.Created.IsZero() {
			ci.TimeMs = c.Created.UnixMilli()
		}
		out.Checkpoints = append(out.Checkpoints, ci)
	}
	return out, nil
}

func (a *api) ListWorkers(ctx context.Context, _ *pb.ListWorkersRequest) (*pb.ListWorkersResponse, error) {
	s, err := a.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	out := &pb.ListWorkersResponse{}
	excluded := ExcludedWorkers(s, time.Now().UnixMilli())
	for id, w := range s.Workers {
		wk := proto.Clone(w.Value).(*pb.Worker)
		wk.Id = id
		wk.Excluded = excluded[id]
		if c, ok := s.Claims[id]; ok {
			wk.JobId = c.Value.JobId
		}
		out.Workers = append(out.Workers, wk)
	}
	sort.Slice(out.Workers, func(i, j int) bool { return out.Workers[i].Id < out.Workers[j].Id })
	return out, nil
}

// WatchJob sends the job's current state, then every event published for
// it. Because NATS delivers at most once, it also polls etcd and sends a
// state change the events may have missed; it ends after a terminal state.
func (a *api) WatchJob(req *pb.WatchJobRequest, stream pb.Coordinator_WatchJobServer) error {
	ctx := stream.Context()
	type event struct {
		ev     *pb.JobEvent
		worker string
	}
	evc := make(chan event, 256)
	sub, err := events.Subscribe(a.c.nc, req.JobId, func(ev *pb.JobEvent, worker string) {
		select {
		case evc <- event{ev, worker}:
		default: // a slow watcher drops metrics rather than stalling NATS
		}
	})
	if err != nil {
		return status.Errorf(codes.Unavailable, "subscribing to job events: %v", err)
	}
	defer sub.Unsubscribe()

	// With security on, a worker's event counts only if that worker is
	// in the job's ring (NATS holds each worker to its own publisher
	// token; this holds it to its jobs). The members are re-read at most
	// every half second when an unknown worker speaks.
	members := map[string]bool{}
	var membersRead time.Time
	setMembers := func(j *state.JobEntry) {
		clear(members)
		if j.Assignment != nil && j.Assignment.Value != nil {
			for _, rk := range j.Assignment.Value.Ranks {
				members[rk.WorkerId] = true
			}
		}
		membersRead = time.Now()
	}
	member := func(worker string) bool {
		if a.c.sec == nil || worker == "" || members[worker] {
			return true
		}
		if time.Since(membersRead) < 500*time.Millisecond {
			return false
		}
		if _, j, err := a.job(ctx, req.JobId); err == nil {
			setMembers(j)
		}
		return members[worker]
	}
	last := pb.JobState_JOB_STATE_UNSPECIFIED
	sendState := func() (bool, error) {
		_, j, err := a.job(ctx, req.JobId)
		if err != nil {
			return false, err
		}
		setMembers(j)
		st := j.Status.Value
		if st.State == last {
			return state.IsTerminal(last), nil
		}
		last = st.State
		ev := &pb.JobEvent{JobId: req.JobId, TimeMs: st.UpdatedMs, Event: &pb.JobEvent_State{State: &pb.StateChange{State: st.State, Message: st.Message, Result: st.Result}}}
		return state.IsTerminal(last), stream.Send(ev)
	}
	if done, err := sendState(); err != nil || done {
		return err
	}
	poll := time.NewTicker(2 * time.Second)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-evc:
			if !member(e.worker) {
				continue
			}
			ev := e.ev
			if s := ev.GetState(); s != nil && s.State != pb.JobState_JOB_STATE_UNSPECIFIED {
				if s.State == last && !state.IsTerminal(last) {
					// A change within the state (a ring rebuilt, a worker
					// joined): the watcher prints it as a line.
					if err := stream.Send(&pb.JobEvent{JobId: req.JobId, TimeMs: ev.TimeMs, Event: &pb.JobEvent_State{State: &pb.StateChange{Detail: s.Message}}}); err != nil {
						return err
					}
					continue
				}
				// Confirm against etcd so the watcher sees the recorded
				// state (with its result) exactly once.
				if done, err := sendState(); err != nil || done {
					return err
				}
				continue
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		case <-poll.C:
			if done, err := sendState(); err != nil || done {
				return err
			}
		}
	}
}

// snapshotChunk is the size of each SaveSnapshot message.
const snapshotChunk = 1 << 20

func (a *api) SaveSnapshot(_ *pb.SaveSnapshotRequest, stream pb.Coordinator_SaveSnapshotServer) error {
	ctx := stream.Context()
	resp, err := a.c.etcd.SnapshotWithVersion(ctx)
	if err != nil {
		return status.Errorf(codes.Unavailable, "etcd snapshot: %v", err)
	}
	defer resp.Snapshot.Close()
	buf := make([]byte, snapshotChunk)
	first := true
	for {
		n, err := io.ReadFull(resp.Snapshot, buf)
		if n > 0 || first {
			chunk := &pb.SnapshotChunk{Data: buf[:n]}
			if first {
				chunk.EtcdVersion, first = resp.Version, false
			}
			if serr := stream.Send(chunk); serr != nil {
				return serr
			}
		}
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return nil
		case err != nil:
			return status.Errorf(codes.Unavailable, "etcd snapshot: %v", err)
		}
	}
}
