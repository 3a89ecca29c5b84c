package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/jobspec"
	"github.com/ringmaster/ringmaster/internal/state"
	"github.com/ringmaster/ringmaster/pkg/allreduce"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/mnist"
	"github.com/ringmaster/ringmaster/pkg/tokens"
)

// jobRun is one rank of one job generation running on this worker.
type jobRun struct {
	claim  *pb.Claim
	cancel context.CancelFunc
	done   chan struct{}
}

// stop cancels the run and waits for it; a nil run is a no-op.
func (r *jobRun) stop() {
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
}

func (w *Worker) startJob(parent context.Context, c *pb.Claim, claimValue string) *jobRun {
	ctx, cancel := context.WithCancel(parent)
	r := &jobRun{claim: c, cancel: cancel, done: make(chan struct{})}
	log := w.log.With(zap.String("job", c.JobId), zap.Uint64("generation", c.Generation), zap.Int32("rank", c.Rank))
	go func() {
		defer close(r.done)
		log.Info("claimed for a job")
		err := w.runJob(ctx, c, claimValue, log)
		switch {
		case err == nil:
			log.Info("job rank finished")
		case ctx.Err() != nil:
			log.Info("job rank stopped", zap.NamedError("cause", err))
		default:
			log.Error("job rank failed", zap.Error(err))
			w.report(c, err, log)
		}
	}()
	return r
}

// report records a rank's failure for the coordinator to act on.
func (w *Worker) report(c *pb.Claim, cause error, log *zap.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.RequestTimeout)
	defer cancel()
	rep := &pb.RankReport{Generation: c.Generation, Rank: c.Rank, WorkerId: w.cfg.ID, Error: cause.Error(), TimeMs: time.Now().UnixMilli()}
	if _, err := w.etcd.Put(ctx, w.keys.Report(c.JobId, c.Rank), state.Marshal(rep)); err != nil {
		log.Error("could not record the failure in etcd", zap.Error(err))
	}
	_ = w.pub.Publish(&pb.JobEvent{JobId: c.JobId, Event: &pb.JobEvent_State{State: &pb.StateChange{
		Detail: fmt.Sprintf("rank %d on worker %s failed: %v", c.Rank, w.cfg.ID, cause)}}})
}

func (w *Worker) runJob(ctx context.Context, c *pb.Claim, claimValue string, log *zap.Logger) error {
	k := w.keys
	rctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	resp, err := w.etcd.Get(rctx, k.Job(c.JobId), clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("reading job %s: %w", c.JobId, err)
	}
	var spec pb.JobSpec
	var st pb.JobStatus
	var asg pb.Assignment
	found := 0
	for _, kv := range resp.Kvs {
		switch string(kv.Key) {
		case k.Spec(c.JobId):
			err, found = state.Unmarshal(kv.Value, &spec), found+1
		case k.Status(c.JobId):
			err, found = state.Unmarshal(kv.Value, &st), found+1
		case k.Assignment(c.JobId):
			err, found = state.Unmarshal(kv.Value, &asg), found+1
		}
		if err != nil {
			return fmt.Errorf("decoding %s: %w", kv.Key, err)
		}
	}
	if found != 3 {
		return fmt.Errorf("job %s is incomplete in etcd", c.JobId)
	}
	if asg.Generation != c.Generation {
		return fmt.Errorf("claim is for generation %d but the assignment is at %d", c.Generation, asg.Generation)
	}
	world := len(asg.Ranks)
	rank := int(c.Rank)
	if rank >= world || asg.Ranks[rank].WorkerId != w.cfg.ID {
		return fmt.Errorf("assignment does not give rank %d to this worker", rank)
	}
	train, eval, closeData, err := w.openData(ctx, &spec, log)
	if err != nil {
		return err
	}
	defer closeData()
	timeout := time.Duration(spec.CollectiveTimeoutMs) * time.Millisecond

	start, err := w.startState(ctx, &spec, &st, c.JobId, rank, world, log)
	if err != nil {
		return err
	}
	var init *checkpoint.State
	if start == nil && spec.InitFrom != "" {
		if init, err = w.initState(ctx, &spec, log); err != nil {
			return err
		}
	}
	var mgr *checkpoint.Manager
	if rank == 0 {
		store, err := checkpoint.Open(spec.Checkpoint.Store)
		if err != nil {
			return err
		}
		mgr = w.manager(store, c.JobId, &spec, log)
	}

	dctx, cancel := context.WithTimeout(ctx, max(timeout, 30*time.Second))
	addrs := make([]string, world)
	for i, rk := range asg.Ranks {
		addrs[i] = rk.Addr
	}
	tr, err := w.hub.Dial(dctx, allreduce.Peering{
		Job: c.JobId, Generation: c.Generation, Rank: rank, World: world, Addrs: addrs,
	})
	cancel()
	if err != nil {
		return err
	}
	wire := allreduce.WireF32
	if spec.Collective.GetWire() == "bf16" {
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

	t := &Trainer{
		JobID: c.JobId, Spec: &spec, Rank: rank, World: world, Generation: c.Generation,
		Comm: comm, Train: train, Eval: eval, Backend: w.be, Checkpoints: mgr, Start: start, Init: init, Log: log,
		Reporter: &etcdReporter{w: w, jobID: c.JobId, claimKey: k.Claim(w.cfg.ID), claimValue: claimValue, log: log},
	}
	_, err = t.Run(ctx)
	return err
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

// etcdReporter records rank 0's progress in etcd and publishes its metrics
// on NATS. Progress writes are guarded by this worker's claim, so a rank of
// a generation that the coordinator has ended cannot overwrite anything.
type etcdReporter struct {
	w          *Worker
	jobID      string
	claimKey   string
	claimValue string
	log        *zap.Logger
}

func (r *etcdReporter) Step(m *pb.StepMetrics) {
	_ = r.w.pub.Publish(&pb.JobEvent{JobId: r.jobID, Event: &pb.JobEvent_Step{Step: m}})
}

func (r *etcdReporter) put(ctx context.Context, key, val string) error {
	ctx, cancel := context.WithTimeout(ctx, r.w.cfg.RequestTimeout)
	defer cancel()
	resp, err := r.w.etcd.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(r.claimKey), "=", r.claimValue)).
		Then(clientv3.OpPut(key, val)).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errors.New("this worker's claim on the job has ended")
	}
	return nil
}

func (r *etcdReporter) Progress(ctx context.Context, p *pb.Progress) error {
	p.UpdatedMs = time.Now().UnixMilli()
	return r.put(ctx, r.w.keys.Progress(r.jobID), state.Marshal(p))
}

func (r *etcdReporter) CheckpointFailed(step int64, err error) {
	_ = r.w.pub.Publish(&pb.JobEvent{JobId: r.jobID, TimeMs: time.Now().UnixMilli(), Event: &pb.JobEvent_State{State: &pb.StateChange{
		Detail: fmt.Sprintf("checkpoint at step %d failed; training goes on and the next save tries again: %v", step, err)}}})
}

func (r *etcdReporter) Checkpoint(ctx context.Context, rec *pb.CheckpointRecord) error {
	_ = r.w.pub.Publish(&pb.JobEvent{JobId: r.jobID, Event: &pb.JobEvent_State{State: &pb.StateChange{
		Detail: fmt.Sprintf("checkpoint at step %d saved to %s", rec.Step, rec.Url)}}})
	return r.put(ctx, r.w.keys.Checkpoint(r.jobID, rec.Step), state.Marshal(rec))
}
