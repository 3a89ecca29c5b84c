package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/jobspec"
	"github.com/ringmaster/ringmaster/internal/state"
	"github.com/ringmaster/ringmaster/pkg/allreduce"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/mnist"
	"github.com/ringmaster/ringmaster/pkg/tokens"
)

// jobRun is this worker's part in one job, across the job's ring
// generations: a newer claim for the same job moves the running trainer
// onto the new ring instead of starting over.
type jobRun struct {
	jobID  string
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	latest *pb.Claim
	value  string        // the latest claim as stored: progress writes are guarded by it
	next   chan struct{} // closed by the next update
}

func newJobRun(c *pb.Claim, value string, cancel context.CancelFunc) *jobRun {
	return &jobRun{jobID: c.JobId, cancel: cancel, done: make(chan struct{}), latest: c, value: value, next: make(chan struct{})}
}

// stop cancels the run and waits for it; a nil run is a no-op.
func (r *jobRun) stop() {
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
}

// finished reports whether the run has ended.
func (r *jobRun) finished() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// update hands the run a claim of a newer generation of its job.
func (r *jobRun) update(c *pb.Claim, value string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.Generation > r.latest.Generation {
		r.latest, r.value = c, value
		close(r.next)
		r.next = make(chan struct{})
	}
}

// current returns the newest claim, and a channel closed when a newer one
// arrives.
func (r *jobRun) current() (*pb.Claim, string, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.latest, r.value, r.next
}

// waitNewer waits for a claim of a generation after gen.
func (r *jobRun) waitNewer(ctx context.Context, gen uint64) (*pb.Claim, string, error) {
	for {
		c, v, next := r.current()
		if c.Generation > gen {
			return c, v, nil
		}
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-next:
		}
	}
}

func (w *Worker) startJob(parent context.Context, c *pb.Claim, claimValue string) *jobRun {
	ctx, cancel := context.WithCancel(parent)
	r := newJobRun(c, claimValue, cancel)
	log := w.log.With(zap.String("job", c.JobId))
	go func() {
		defer close(r.done)
		log.Info("claimed for a job", zap.Uint64("generation", c.Generation), zap.Int32("rank", c.Rank))
		last, err := w.runJob(ctx, r, log)
		switch {
		case err == nil:
			log.Info("job rank finished")
		case ctx.Err() != nil:
			log.Info("job rank stopped", zap.NamedError("cause", err))
		default:
			log.Error("job rank failed", zap.Error(err))
			w.report(&pb.RankReport{Generation: last.Generation, Rank: last.Rank, Error: err.Error()}, c.JobId, log)
		}
	}()
	return r
}

// report records a rank's failure for the coordinator to act on: a ring
// failure (the coordinator rebuilds the ring without the suspects) or a
// failure of the job itself (the coordinator fails the job).
func (w *Worker) report(rep *pb.RankReport, jobID string, log *zap.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.RequestTimeout)
	defer cancel()
	rep.WorkerId, rep.TimeMs = w.cfg.ID, time.Now().UnixMilli()
	if _, err := w.etcd.Put(ctx, w.keys.Report(jobID, rep.Rank), state.Marshal(rep)); err != nil {
		log.Error("could not record the failure in etcd", zap.Error(err))
	}
	what := "failed"
	if rep.Ring {
		what = "lost its ring"
	}
	_ = w.pub.Publish(&pb.JobEvent{JobId: jobID, TimeMs: rep.TimeMs, Event: &pb.JobEvent_State{State: &pb.StateChange{
		Detail: fmt.Sprintf("rank %d on worker %s %s (generation %d): %s", rep.Rank, w.cfg.ID, what, rep.Generation, rep.Error)}}})
}

// runJob runs this worker's part of a job: it prepares the trainer once,
// then trains on each ring generation its claims name. When a ring breaks
// (a peer is gone or silent) it reports whom it suspects and waits, with
// its state, for the coordinator's next generation; when a newer claim
// arrives it leaves the current ring at once (abort) or at the next step
// boundary. It returns the claim it last acted on.
func (w *Worker) runJob(ctx context.Context, r *jobRun, log *zap.Logger) (*pb.Claim, error) {
	c, claimValue, _ := r.current()
	spec, st, err := w.readJob(ctx, c.JobId)
	if err != nil {
		return c, err
	}
	train, eval, closeData, err := w.openData(ctx, spec, log)
	if err != nil {
		return c, err
	}
	defer closeData()
	asg, err := w.readAssignment(ctx, c)
	for errors.Is(err, errStaleClaim) {
		if c, claimValue, err = r.waitNewer(ctx, c.Generation); err == nil {
			asg, err = w.readAssignment(ctx, c)
		}
	}
	if err != nil {
		return c, err
	}
	start, err := w.startState(ctx, spec, st, c.JobId, int(c.Rank), len(asg.Ranks), log)
	if err != nil {
		return c, err
	}
	var init *checkpoint.State
	if start == nil && spec.InitFrom != "" {
		if init, err = w.initState(ctx, spec, log); err != nil {
			return c, err
		}
	}
	// Any rank may become rank 0, which saves.
	store, err := checkpoint.Open(spec.Checkpoint.Store)
	if err != nil {
		return c, err
	}
	mgr := w.manager(store, c.JobId, spec, log)
	t := &Trainer{JobID: c.JobId, Spec: spec, Train: train, Eval: eval, Backend: w.be, Start: start, Init: init,
		Log: log, World: len(asg.Ranks), CommitHook: w.commitHook(c.JobId), MaySave: w.leaseHeld}
	if err := t.Prepare(ctx); err != nil {
		return c, err
	}
	defer t.Close()
	for {
		err := w.runGeneration(ctx, r, t, c, claimValue, asg, mgr, log)
		if err == nil || ctx.Err() != nil {
			return c, err
		}
		nc, _, _ := r.current()
		newer := nc.Generation > c.Generation
		var ringErr *allreduce.RingError
		var dialErr *allreduce.DialError
		switch {
		case w.draining() && errors.Is(err, ErrYield):
			// A planned leave: the step is committed on every rank; the
			// others wait for the generation without this worker.
			log.Info("leaving the job at a step boundary", zap.Uint64("generation", c.Generation), zap.Int64("step", t.step))
			if err := t.WaitSaves(ctx); err != nil {
				log.Warn("the checkpoint in flight did not finish", zap.Error(err))
			}
			w.report(&pb.RankReport{Generation: c.Generation, Rank: c.Rank, Leaving: true, Error: "leaving (drain)"}, c.JobId, log)
			return c, nil
		case newer || errors.Is(err, ErrYield):
			log.Info("leaving the ring for the next generation", zap.Uint64("generation", c.Generation), zap.Int64("step", t.step), zap.NamedError("cause", err))
		case errors.As(err, &ringErr) || errors.Is(err, errDial):
			rep := &pb.RankReport{Generation: c.Generation, Rank: c.Rank, Error: err.Error(), Ring: true}
			if ringErr != nil && ringErr.Culprit >= 0 && ringErr.Culprit != int(c.Rank) {
				rep.Suspects = []int32{int32(ringErr.Culprit)}
			}
			if errors.As(err, &dialErr) {
				for _, r := range dialErr.Ranks {
					rep.Suspects = append(rep.Suspects, int32(r))
				}
			}
			log.Warn("the ring broke; keeping the committed state and waiting for the next generation",
				zap.Int64("step", t.step), zap.Int32s("suspects", rep.Suspects), zap.Error(err))
			w.report(rep, c.JobId, log)
		default:
			return c, err
		}
		for {
			if c, claimValue, err = r.waitNewer(ctx, c.Generation); err != nil {
				return c, err
			}
			if asg, err = w.readAssignment(ctx, c); !errors.Is(err, errStaleClaim) {
				break
			}
		}
		if err != nil {
			return c, err
		}
	}
}

// errStaleClaim: the job has moved on to a newer generation than the
// claim; its claim follows (or is deleted).
var errStaleClaim = errors.New("a newer generation exists")

// errDial marks a failure to connect a new ring.
var errDial = errors.New("connecting the ring")

// runGeneration trains on one ring generation until the job is done, the
// ring breaks, or a newer claim ends it.
func (w *Worker) runGeneration(ctx context.Context, r *jobRun, t *Trainer, c *pb.Claim, claimValue string, asg *pb.Assignment, mgr *checkpoint.Manager, log *zap.Logger) error {
	gctx, gcancel := context.WithCancel(ctx)
	defer gcancel()
	// A newer claim ends this generation: at once when it says abort (a
	// rank was lost, the step in flight cannot finish), otherwise after
	// the step in flight, which every rank learns in the step's last
	// all-reduce.
	var follow sync.WaitGroup
	follow.Add(1)
	go func() {
		defer follow.Done()
		for {
			nc, _, next := r.current()
			if nc.Generation > c.Generation {
				if nc.Abort {
					gcancel()
					return
				}
				t.RequestYield()
			}
			if w.draining() {
				t.RequestYield()
			}
			select {
			case <-gctx.Done():
				return
			case <-next:
			case <-w.drain:
				t.RequestYield()
				<-gctx.Done()
				return
			}
		}
	}()
	// The stall watchdog: a training loop stuck in its own computation.
	follow.Add(1)
	go func() { defer follow.Done(); w.watchStall(gctx, t, c, log) }()
	defer follow.Wait()
	defer gcancel()

	rank, world := int(c.Rank), len(asg.Ranks)
	timeout := time.Duration(t.Spec.CollectiveTimeoutMs) * time.Millisecond
	dctx, cancel := context.WithTimeout(gctx, max(timeout, 30*time.Second))
	addrs := make([]string, world)
	ids := make([]string, len(asg.Ranks))
	for i, rk := range asg.Ranks {
		addrs[i], ids[i] = rk.Addr, rk.WorkerId
	}
	tr, err := w.hub.Dial(dctx, allreduce.Peering{Job: c.JobId, Generation: c.Generation, Rank: rank, World: world, Addrs: addrs, Identities: ids})
	cancel()
	if err != nil {
		return fmt.Errorf("%w of generation %d: %w", errDial, c.Generation, err)
	}
	wire := allreduce.WireF32
	if t.Spec.Collective.GetWire() == "bf16" {
		wire = allreduce.WireBF16
	}
	comm, err := allreduce.New(allreduce.Config{Rank: rank, World: world, Generation: c.Generation, Timeout: timeout, Wire: wire}, tr)
	if err != nil {
		cctx, ccancel := context.WithCancel(ctx)
		ccancel()
		tr.Close(cctx)
		return err
	}
	defer comm.Close()
	var ckpts *checkpoint.Manager
	if rank == 0 {
		ckpts = mgr
	}
	rep := newEtcdReporter(w, c.JobId, w.keys.Claim(w.cfg.ID), claimValue, log)
	var reporting sync.WaitGroup
	rctx, rcancel := context.WithCancel(gctx)
	reporting.Add(1)
	go func() { defer reporting.Done(); rep.run(rctx) }()
	defer reporting.Wait()
	defer rcancel()
	if err := t.Join(gctx, Ring{Rank: rank, World: world, Generation: c.Generation, Comm: comm, Checkpoints: ckpts, Reporter: rep}); err != nil {
		return err
	}
	for !t.Done() {
		if err := t.Step(gctx); err != nil {
			return err
		}
	}
	_, err = t.Finish(gctx)
	return err
}

// readJob reads a job's spec and status.
func (w *Worker) readJob(ctx context.Context, jobID string) (*pb.JobSpec, *pb.JobStatus, error) {
	k := w.keys
	rctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	resp, err := w.etcd.Txn(rctx).Then(clientv3.OpGet(k.Spec(jobID)), clientv3.OpGet(k.Status(jobID))).Commit()
	cancel()
	if err != nil {
		return nil, nil, fmt.Errorf("reading job %s: %w", jobID, err)
	}
	spec, st := &pb.JobSpec{}, &pb.JobStatus{}
	for i, m := range []proto.Message{spec, st} {
		kvs := resp.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return nil, nil, fmt.Errorf("job %s is incomplete in etcd", jobID)
		}
		if err := state.Unmarshal(kvs[0].Value, m); err != nil {
			return nil, nil, fmt.Errorf("decoding %s: %w", kvs[0].Key, err)
		}
	}
	return spec, st, nil
}

// readAssignment reads the job's assignment of claim c's generation and
// checks that it gives c's rank to this worker.
func (w *Worker) readAssignment(ctx context.Context, c *pb.Claim) (*pb.Assignment, error) {
	rctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	resp, err := w.etcd.Get(rctx, w.keys.Assignment(c.JobId))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("reading the assignment of job %s: %w", c.JobId, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("job %s has no assignment", c.JobId)
	}
	asg := &pb.Assignment{}
	if err := state.Unmarshal(resp.Kvs[0].Value, asg); err != nil {
		return nil, fmt.Errorf("decoding the assignment of job %s: %w", c.JobId, err)
	}
	if asg.Generation > c.Generation {
		return nil, fmt.Errorf("%w: claim is for generation %d but the assignment is at %d", errStaleClaim, c.Generation, asg.Generation)
	}
	if asg.Generation != c.Generation {
		return nil, fmt.Errorf("claim is for generation %d but the assignment is at %d", c.Generation, asg.Generation)
	}
	rank := int(c.Rank)
	if rank >= len(asg.Ranks) || asg.Ranks[rank].WorkerId != w.cfg.ID {
		return nil, fmt.Errorf("assignment does not give rank %d to this worker", rank)
	}
	return asg, nil
}

// manager returns the checkpoint manager of a job's checkpoints under
// prefix of store, with the spec's retention and checksum, reporting
// invalid checkpoints it meets as job events.
func (w *Worker) manager(store checkpoint.Store, prefix string, spec *pb.JobSpec, log *zap.Logger) *checkpoint.Manager {
	jobID := prefix
	return checkpoint.NewManager(store, prefix, int(spec.Checkpoint.GetKeep()), log,
		checkpoint.KeepEvery(spec.Checkpoint.GetKeepEvery()), checkpoint.WithChecksum(spec.Checkpoint.GetChecksum()),
		checkpoint.Observe(func(e checkpoint.Event) {
			if e.Kind == checkpoint.EventInvalid {
				_ = w.pub.Publish(&pb.JobEvent{JobId: jobID, TimeMs: time.Now().UnixMilli(), Event: &pb.JobEvent_State{State: &pb.StateChange{
					Detail: fmt.Sprintf("checkpoint at step %d (%s) is invalid, not used: %v", e.Step, e.URL, e.Err)}}})
			}
		}))
}

// startState finds the checkpoint a run continues from: when the
// coordinator resumes the job, the step it chose or else the job's newest
// valid checkpoint; otherwise the spec's resume source (a job id or a
// checkpoint URL); nil to start fresh. A checkpoint that cannot continue
// on world workers is refused here, before any training.
func (w *Worker) startState(ctx context.Context, spec *pb.JobSpec, st *pb.JobStatus, jobID string, rank, world int, log *zap.Logger) (*checkpoint.State, error) {
	var mgr *checkpoint.Manager
	step := int64(-1) // the newest valid
	switch {
	case st.Resume:
		store, err := checkpoint.Open(spec.Checkpoint.Store)
		if err != nil {
			return nil, err
		}
		mgr = w.manager(store, jobID, spec, log)
		if st.ResumeStep > 0 {
			step = st.ResumeStep
		}
	case spec.Resume == "":
		return nil, nil
	default:
		var err error
		if mgr, step, err = w.locate(ctx, spec.Resume, spec, log); err != nil {
			return nil, fmt.Errorf("resume: %w", err)
		}
	}
	cs, info, err := load(ctx, mgr, step)
	if errors.Is(err, checkpoint.ErrNoCheckpoint) && step < 0 && st.Resume {
		log.Warn("no valid checkpoint to resume from; starting from step 0")
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	if cs.Meta["model"] != "" && cs.Meta["model"] != spec.Model {
		return nil, fmt.Errorf("resume: the checkpoint at %s holds a %s model, the job trains %s", info.URL, cs.Meta["model"], spec.Model)
	}
	if err := cs.CheckWorld(world); err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	if st.Resume && step < 0 && rank == 0 {
		// Anything of this job newer than the newest valid checkpoint is
		// corrupt or was never committed, and its steps are the ones this
		// run is about to save again: clear them, or those saves could
		// not commit.
		if newer, err := mgr.Newer(ctx, cs.Step); err == nil && len(newer) > 0 {
			if err := mgr.DiscardNewer(ctx, cs.Step); err != nil {
				log.Warn("could not remove the invalid checkpoints newer than the one resumed from", zap.Int64s("steps", newer), zap.Error(err))
			} else {
				log.Warn("removed invalid checkpoints newer than the one resumed from", zap.Int64s("steps", newer))
				_ = w.pub.Publish(&pb.JobEvent{JobId: jobID, TimeMs: time.Now().UnixMilli(), Event: &pb.JobEvent_State{State: &pb.StateChange{
					Detail: fmt.Sprintf("removed invalid checkpoints at steps %v, newer than step %d which the job resumes from", newer, cs.Step)}}})
			}
		}
	}
	log.Info("resuming from checkpoint", zap.Int64("step", cs.Step), zap.String("url", info.URL), zap.Int("saved_world", cs.World), zap.Int("world", world))
	return cs, nil
}

// locate finds the checkpoints a job refers to by source: a checkpoint
// store URL (the directory of a job's checkpoints, or one checkpoint in
// it), or another job's id (its checkpoints, in its store). step is the
// checkpoint the URL names, or -1 for the newest valid.
func (w *Worker) locate(ctx context.Context, source string, spec *pb.JobSpec, log *zap.Logger) (*checkpoint.Manager, int64, error) {
	storeURL, prefix, step := "", "", int64(-1)
	if strings.Contains(source, "://") {
		storeURL, step = checkpoint.SplitCheckpointURL(source)
	} else {
		rctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
		resp, err := w.etcd.Get(rctx, w.keys.Spec(source))
		cancel()
		if err != nil {
			return nil, 0, fmt.Errorf("reading job %s: %w", source, err)
		}
		if len(resp.Kvs) == 0 {
			return nil, 0, fmt.Errorf("job %s does not exist", source)
		}
		var other pb.JobSpec
		if err := state.Unmarshal(resp.Kvs[0].Value, &other); err != nil {
			return nil, 0, err
		}
		storeURL, prefix = other.Checkpoint.Store, source
	}
	store, err := checkpoint.Open(storeURL)
	if err != nil {
		return nil, 0, err
	}
	return w.manager(store, prefix, spec, log), step, nil
}

// load reads the checkpoint at step, or the newest valid one for step < 0.
func load(ctx context.Context, mgr *checkpoint.Manager, step int64) (*checkpoint.State, checkpoint.Info, error) {
	if step >= 0 {
		return mgr.LoadStep(ctx, step)
	}
	cs, info, err := mgr.Load(ctx, -1)
	if errors.Is(err, checkpoint.ErrNoCheckpoint) {
		err = fmt.Errorf("%w under %s", err, mgr.URL())
	}
	return cs, info, err
}

// initState loads the checkpoint a job's init_from names.
func (w *Worker) initState(ctx context.Context, spec *pb.JobSpec, log *zap.Logger) (*checkpoint.State, error) {
	mgr, step, err := w.locate(ctx, spec.InitFrom, spec, log)
	if err != nil {
		return nil, fmt.Errorf("init_from: %w", err)
	}
	cs, info, err := load(ctx, mgr, step)
	if err != nil {
		return nil, fmt.Errorf("init_from: %w", err)
	}
	log.Info("initialising from checkpoint", zap.Int64("step", cs.Step), zap.String("url", info.URL), zap.String("model", cs.Meta["model"]))
	return cs, nil
}

// openData opens a job's training and evaluation sets; close releases
// them.
func (w *Worker) openData(ctx context.Context, spec *pb.JobSpec, log *zap.Logger) (train, eval Data, close func(), err error) {
	d := spec.GetDataset()
	if d.GetName() != "tokens" {
		ds, err := w.dataset(d)
		if err != nil {
			return nil, nil, nil, err
		}
		return MNISTData(digitFilter(ds.Train, d.GetDigits())), MNISTData(digitFilter(ds.Test, d.GetDigits())), func() {}, nil
	}
	cfg := jobspec.ModelConfig(spec)
	var closers []func() error
	closeAll := func() {
		for _, c := range closers {
			if err := c(); err != nil {
				log.Warn("closing the dataset", zap.Error(err))
			}
		}
	}
	open := func(loc string) (Data, error) {
		src, err := tokens.OpenSource(ctx, loc, tokens.SourceOptions{T: cfg.Ctx, CacheDir: w.cfg.CacheDir, Log: log})
		if err != nil {
			return nil, err
		}
		closers = append(closers, src.Close)
		return TokenData(src, cfg.Ctx, cfg.Vocab), nil
	}
	if train, err = open(d.GetPath()); err != nil {
		closeAll()
		return nil, nil, nil, fmt.Errorf("dataset.path: %w", err)
	}
	if d.GetValPath() != "" {
		if eval, err = open(d.GetValPath()); err != nil {
			closeAll()
			return nil, nil, nil, fmt.Errorf("dataset.val_path: %w", err)
		}
	}
	return train, eval, closeAll, nil
}

func (w *Worker) dataset(d *pb.Dataset) (*mnist.Dataset, error) {
	dir := d.GetPath()
	if dir == "" {
		var err error
		if dir, err = mnist.DefaultDir(); err != nil {
			return nil, err
		}
	}
	w.dataMu.Lock()
	defer w.dataMu.Unlock()
	if ds, ok := w.data[dir]; ok {
		return ds, nil
	}
	ds, err := mnist.Load(dir)
	if err != nil {
		return nil, err
	}
	w.data[dir] = ds
	return ds, nil
}

// etcdReporter records rank 0's progress in etcd (with the newest
// checkpoint it committed: the store itself is the record of checkpoints)
// and publishes its metrics on NATS. Progress writes are guarded by this
// worker's claim, so a rank of a generation that the coordinator has ended
// cannot overwrite anything.
//
// Training does not wait for the control plane: Progress puts the newest
// progress in a one-place outbox that the reporter's goroutine delivers,
// retrying while etcd is unreachable. Only the final result is written
// synchronously: Finish retries it until it is recorded, the claim has
// ended, or the run is cancelled. NATS buffers its own messages while it
// reconnects (nats.go's bounded reconnect buffer).
type etcdReporter struct {
	w          *Worker
	jobID      string
	claimKey   string
	claimValue string
	log        *zap.Logger

	kick chan struct{} // wakes run; capacity 1

	mu        sync.Mutex
	progress  *pb.Progress         // newest undelivered progress
	delivered *pb.Progress         // the last progress delivered
	last      *pb.CheckpointRecord // newest committed checkpoint
	fenced    bool                 // the claim has ended: nothing more is written
	down      time.Time            // when deliveries started failing (zero: they do not)
}

// errFenced: this worker's claim on the job has ended.
var errFenced = errors.New("this worker's claim on the job has ended")

func newEtcdReporter(w *Worker, jobID, claimKey, claimValue string, log *zap.Logger) *etcdReporter {
	return &etcdReporter{w: w, jobID: jobID, claimKey: claimKey, claimValue: claimValue, log: log, kick: make(chan struct{}, 1)}
}

// run delivers the outbox until ctx ends, then makes one last bounded
// attempt.
func (r *etcdReporter) run(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.w.cfg.RequestTimeout)
			_ = r.flush(fctx)
			cancel()
			return
		case <-r.kick:
		case <-retry.C:
		}
		if err := r.flush(ctx); err != nil && !errors.Is(err, errFenced) && ctx.Err() == nil {
			retry.Reset(500 * time.Millisecond)
		}
	}
}

func (r *etcdReporter) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// flush writes the outbox.
func (r *etcdReporter) flush(ctx context.Context) error {
	r.mu.Lock()
	if r.fenced {
		r.progress = nil
		r.mu.Unlock()
		return errFenced
	}
	prog := r.progress
	if prog == nil {
		r.mu.Unlock()
		return nil
	}
	prog.LastCheckpoint = r.last
	ops := []clientv3.Op{clientv3.OpPut(r.w.keys.Progress(r.jobID), state.Marshal(prog))}
	if prog.Done {
		// The result goes where the scheduler watches.
		ops = append(ops, clientv3.OpPut(r.w.keys.Result(r.jobID), state.Marshal(prog)))
	}
	r.mu.Unlock()
	err := r.do(ctx, ops...)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case errors.Is(err, errFenced):
		r.fenced = true
	case err != nil && ctx.Err() != nil:
		// Cancelled, not unreachable: the run's last flush follows.
	case err != nil:
		if r.down.IsZero() {
			r.down = time.Now()
			r.log.Warn("etcd is unreachable: training goes on and its progress is delivered when etcd is back", zap.Error(err))
		}
	default:
		if !r.down.IsZero() {
			r.log.Info("progress delivered again", zap.Duration("after", time.Since(r.down).Round(time.Millisecond)))
			r.down = time.Time{}
		}
		r.delivered = prog
		if r.progress == prog {
			r.progress = nil
		}
	}
	return err
}

func (r *etcdReporter) Step(m *pb.StepMetrics) {
	_ = r.w.pub.Publish(&pb.JobEvent{JobId: r.jobID, Event: &pb.JobEvent_Step{Step: m}})
}

// do runs op if this worker's claim is still the one the reporter was
// made for.
func (r *etcdReporter) do(ctx context.Context, ops ...clientv3.Op) error {
	ctx, cancel := context.WithTimeout(ctx, r.w.cfg.RequestTimeout)
	defer cancel()
	resp, err := r.w.etcd.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(r.claimKey), "=", r.claimValue)).
		Then(ops...).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errFenced
	}
	return nil
}

// Progress queues p for delivery; the final one (Done) is written before
// it returns, retried until it is recorded, the claim has ended, or ctx
// ends.
func (r *etcdReporter) Progress(ctx context.Context, p *pb.Progress) error {
	p.UpdatedMs = time.Now().UnixMilli()
	r.mu.Lock()
	fenced := r.fenced
	if !fenced {
		r.progress = p
	}
	r.mu.Unlock()
	if fenced {
		return errFenced
	}
	if !p.Done {
		r.wake()
		return nil
	}
	for {
		err := r.flush(ctx)
		if err == nil || errors.Is(err, errFenced) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (etcd: %v)", ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (r *etcdReporter) CheckpointFailed(step int64, err error) {
	_ = r.w.pub.Publish(&pb.JobEvent{JobId: r.jobID, TimeMs: time.Now().UnixMilli(), Event: &pb.JobEvent_State{State: &pb.StateChange{
		Detail: fmt.Sprintf("checkpoint at step %d failed; training goes on and the next save tries again: %v", step, err)}}})
}

// Checkpoint records a committed checkpoint in the next progress (the
// last one delivered again, if no newer one waits).
func (r *etcdReporter) Checkpoint(_ context.Context, rec *pb.CheckpointRecord) error {
	_ = r.w.pub.Publish(&pb.JobEvent{JobId: r.jobID, Event: &pb.JobEvent_State{State: &pb.StateChange{
		Detail: fmt.Sprintf("checkpoint at step %d saved to %s", rec.Step, rec.Url)}}})
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fenced {
		return errFenced
	}
	r.last = rec
	if r.progress == nil && r.delivered != nil {
		r.progress = proto.Clone(r.delivered).(*pb.Progress)
	}
	r.wake()
	return nil
}

// commitHook returns the trainer's CommitHook for Config.SampleLog, or
// nil. Each line is one write to a file opened for appending, so lines of
// several workers sharing the file do not interleave, and a line written
// survives the process being killed.
func (w *Worker) commitHook(jobID string) func(Commit) {
	if w.cfg.SampleLog == "" {
		return nil
	}
	return func(c Commit) {
		f, err := os.OpenFile(w.cfg.SampleLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			w.log.Warn("sample log", zap.Error(err))
			return
		}
		defer f.Close()
		fmt.Fprintf(f, "%s %d %d %d %d %d %d %d %s\n", jobID, c.Step, c.Epoch, c.Lo, c.Hi, c.World, c.Rank, c.Generation, w.cfg.ID)
	}
}
