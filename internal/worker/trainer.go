package worker

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/crc32c"
	"github.com/ringmaster/ringmaster/internal/jobspec"
	"github.com/ringmaster/ringmaster/pkg/allreduce"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/model"
	"github.com/ringmaster/ringmaster/pkg/shard"
)

// Collective is what the trainer needs of the ring.
type Collective interface {
	AllReduce(ctx context.Context, buf []float32, op allreduce.Op) error
	// NewBucketer reduces buf in buckets as parts of it are marked ready,
	// overlapping communication with the backward pass.
	NewBucketer(ctx context.Context, buf []float32, op allreduce.Op, bucketBytes int) *allreduce.Bucketer
}

// Reporter receives what rank 0 reports about training. Errors from it do
// not stop training: progress and metrics are for watching.
type Reporter interface {
	// Step is called after every committed step.
	Step(m *pb.StepMetrics)
	// Progress is called at a modest rate and after checkpoints.
	Progress(ctx context.Context, p *pb.Progress) error
	// Checkpoint is called after a checkpoint is committed.
	Checkpoint(ctx context.Context, rec *pb.CheckpointRecord) error
	// CheckpointFailed is called when a save fails (training goes on).
	CheckpointFailed(step int64, err error)
}

// Trainer runs one rank of a data-parallel job. Its loop reads like
// llm.c's (see Run): Prepare builds the model and optimizer once; Join
// puts the trainer on a ring generation and brings every rank to the same
// committed state; Step runs one step (batch, forward and backward in
// micro-batches whose last one overlaps the all-reduce of finished
// gradient buckets, all-reduce, clip, optimizer step) and what follows it
// (report, replica check, checkpoint); Finish evaluates and records the
// result. Between steps the worker may move the trainer to another ring
// (Join again): the model, the optimizer state and the data position live
// in the Trainer, not in the ring, so a lost or added rank costs at most
// the step in flight.
type Trainer struct {
	JobID string
	Spec  *pb.JobSpec
	// The current ring: set before Run, or by Join.
	Rank       int
	World      int
	Generation uint64
	Comm       Collective
	// Train is the training set; Eval, if not nil, the set the job is
	// evaluated on at the end.
	Train, Eval Data
	Backend     model.Backend
	// Checkpoints is where rank 0 saves; nil disables saving.
	Checkpoints *checkpoint.Manager
	// Start is the state to continue from; nil starts fresh.
	Start *checkpoint.State
	// Init, if not nil, holds weights to start from (init_from): tensors
	// matching the model's by name and shape are loaded.
	Init     *checkpoint.State
	Reporter Reporter
	Log      *zap.Logger
	// ReplicaCheckEvery compares a checksum of the parameters across ranks
	// every so many steps (0: the default of 100).
	ReplicaCheckEvery int64
	// StepHook, if set, runs after every committed step (tests use it to
	// capture parameters).
	StepHook func(step int64, m model.Model)
	// SampleHook, if set, sees the samples this rank trains on in each step
	// (tests use it to check the data order).
	SampleHook func(step int64, idx []int32)
	// CommitHook, if set, sees every step this rank commits: which part of
	// which epoch's order the whole ring consumed (tests count samples with
	// it across failures).
	CommitHook func(Commit)
	// MaySave, if set, is asked before every checkpoint save; an error
	// skips the save (training goes on; the final one waits). The worker
	// refuses while it cannot rule out that its lease expired: its job
	// may then run on another ring whose checkpoints this one's would
	// collide with.
	MaySave func() error

	// The job's state on this rank; it outlives rings.
	m             model.Model
	opt           model.Optimizer
	params, grads []float32
	n             int // training samples
	batch, terms  int
	micro         int // samples per micro-batch (batch_size / grad_accum)
	pos           shard.Position
	step, global  int64
	total         int64
	sampler       *shard.Sampler
	ahead         *readAhead
	rate          *rateMeter
	b             model.Batch
	stats         []float32 // the step's loss sum and the yield flag, all-reduced
	lastProgress  time.Time
	lastLoss      float64
	lastSaved     int64
	snapshot      *checkpoint.Pending // a checkpoint's copy in progress
	saver         *checkpoint.AsyncSaver
	saverCtx      context.Context
	yield         atomic.Bool
	beat          heartbeat
	prepared      bool
}

// Commit describes one committed step: the ring consumed samples
// [Lo, Hi) of epoch Epoch's order.
type Commit struct {
	Step       int64
	Epoch      int
	Lo, Hi     int
	World      int
	Rank       int
	Generation uint64
}

// ErrYield is returned by Step after a step that some rank asked to end
// its ring with (RequestYield): every rank returns it after the same
// step, with that step committed.
var ErrYield = errors.New("the ring yields at this step boundary")

// ErrReplicaMismatch means the ranks' parameters diverged.
var ErrReplicaMismatch = errors.New("replicas diverged")

// maxEvalTerms bounds the evaluation: the first samples of the evaluation
// set up to this many loss terms (all of MNIST's test set; 2048 sequences
// of 64 tokens).
const maxEvalTerms = 1 << 17

// Run trains to the end of the job on the ring set in the Trainer and
// returns its result.
func (t *Trainer) Run(ctx context.Context) (*pb.JobResult, error) {
	if err := t.Prepare(ctx); err != nil {
		return nil, err
	}
	defer t.Close()
	if err := t.Join(ctx, Ring{Rank: t.Rank, World: t.World, Generation: t.Generation, Comm: t.Comm, Checkpoints: t.Checkpoints, Reporter: t.Reporter}); err != nil {
		return nil, err
	}
	for !t.Done() {
		if err := t.Step(ctx); err != nil {
			return nil, err
		}
	}
	return t.Finish(ctx)
}

// Ring is one ring generation as the trainer sees it.
type Ring struct {
	Rank, World int
	Generation  uint64
	Comm        Collective
	// Checkpoints and Reporter are used while this rank is rank 0.
	Checkpoints *checkpoint.Manager
	Reporter    Reporter
}

// Prepare builds the model and optimizer and restores the start state.
// It runs once per job on a worker, whatever rings follow.
func (t *Trainer) Prepare(ctx context.Context) error {
	spec := t.Spec
	cfg := jobspec.ModelConfig(spec)
	m, err := model.New(cfg, t.Backend, spec.Seed)
	if err != nil {
		return err
	}
	opt, err := newOptimizer(spec.Optimizer, m, t.Backend)
	if err != nil {
		return err
	}
	if t.Init != nil && t.Start == nil {
		if err := t.initFrom(m); err != nil {
			return err
		}
	}
	t.n = t.Train.Len()
	if t.n == 0 {
		return errors.New("the training set is empty")
	}
	if st := t.Start; st != nil {
		if err := st.CheckWorld(t.World); err != nil {
			return err
		}
		if err := restore(st, m, opt); err != nil {
			return err
		}
		t.pos = shard.Position{Epoch: st.Epoch, Pos: int(st.EpochSamples)}
		t.step, t.global = st.Step, st.GlobalSamples
		if t.pos.Pos >= t.n {
			t.pos = shard.Position{Epoch: t.pos.Epoch + 1}
		}
	}
	t.m, t.opt = m, opt
	t.params, t.grads = m.Params(), m.Grads()
	// The job trains with the global batch it was submitted with, however
	// many workers run it now: each rank takes its share of it, in
	// micro-batches of at most batch_size/grad_accum samples.
	t.batch = globalBatch(spec)
	t.micro = max(int(spec.BatchSize)/max(int(spec.GradAccum), 1), 1)
	t.terms = t.Train.TermsPerSample()
	t.sampler = t.Train.Sampler(spec.Seed)
	t.ahead = &readAhead{next: t.Train.Sampler(spec.Seed), span: prefetchSteps * t.batch}
	t.rate = newRateMeter()
	t.stats = make([]float32, 2)
	t.lastSaved = -1
	t.saverCtx = context.WithoutCancel(ctx)
	t.total = t.totalSteps(t.step, t.pos, t.n)
	t.prepared = true
	return nil
}

// Close waits for a checkpoint save in flight and releases the saver.
func (t *Trainer) Close() {
	if t.saver != nil {
		t.saver.Close()
		t.saver = nil
	}
}

// WaitSaves waits until the checkpoint save in flight, if any, is
// committed.
func (t *Trainer) WaitSaves(ctx context.Context) error {
	if t.saver == nil {
		return nil
	}
	return t.saver.Wait(ctx)
}

// Done reports whether every step of the job is committed.
func (t *Trainer) Done() bool { return t.step >= t.total }

// Position returns the committed step and data position.
func (t *Trainer) Position() (step int64, pos shard.Position, global int64) {
	return t.step, t.pos, t.global
}

// RequestYield asks the ring to end after the step in flight (or the next
// one): a planned leave or a new generation that keeps every member.
func (t *Trainer) RequestYield() { t.yield.Store(true) }

// Join moves the trainer onto a ring generation and makes every rank hold
// the same committed state: the ranks agree on the newest committed step
// any of them holds, and the lowest rank that holds it broadcasts its
// parameters, optimizer state and data position to the others (survivors
// that were one step behind, and replacements that hold nothing). When
// every rank is at the same step nothing is sent.
func (t *Trainer) Join(ctx context.Context, r Ring) error {
	if !t.prepared {
		return errors.New("trainer: Join before Prepare")
	}
	if t.snapshot != nil {
		// A checkpoint's copy reads the parameters the broadcast may
		// write. It is finished, not given up, whatever ended the ring.
		t.beat.enter(PhaseIO)
		if _, err := t.snapshot.Wait(t.saverCtx); err != nil {
			return err
		}
		// Joining (waiting for the ring, receiving the state) is not
		// computation: a slow peer must not make this rank look wedged.
		t.beat.enter(PhaseIdle)
		t.snapshot = nil
	}
	t.Rank, t.World, t.Generation, t.Comm = r.Rank, r.World, r.Generation, r.Comm
	t.Checkpoints, t.Reporter = r.Checkpoints, r.Reporter
	t.yield.Store(false)
	if err := t.syncState(ctx); err != nil {
		return err
	}
	t.total = t.totalSteps(t.step, t.pos, t.n)
	if t.Rank == 0 && t.saver == nil && t.Checkpoints != nil && !t.Spec.Checkpoint.GetSynchronous() {
		policy := checkpoint.WaitIfBusy
		if t.Spec.Checkpoint.GetIfBusy() == "skip" {
			policy = checkpoint.SkipIfBusy
		}
		// A save outlives the ring it started on: it is finished, not
		// aborted, when the ring changes.
		saverCtx := t.saverCtx
		t.saver = checkpoint.NewAsyncSaver(t.Checkpoints, policy, func(res checkpoint.Result) { t.saved(saverCtx, res) })
	}
	cfg := t.m.Config()
	t.Log.Info("training", zap.Int("rank", t.Rank), zap.Int("world", t.World), zap.Uint64("generation", t.Generation),
		zap.String("model", cfg.Name), zap.Int64("from_step", t.step), zap.Int64("total_steps", t.total),
		zap.Int("epoch", t.pos.Epoch), zap.Int("epoch_pos", t.pos.Pos), zap.Int("params", len(t.params)),
		zap.Int("global_batch", t.batch), zap.Int("micro_batch", t.micro), zap.Int("samples", t.n),
		// Across generations, a count that grows with each is a leak.
		zap.Int("goroutines", runtime.NumGoroutine()))
	return nil
}

// syncState is Join's agreement: see there.
func (t *Trainer) syncState(ctx context.Context) error {
	if t.World == 1 {
		return nil
	}
	// Steps travel as two exact float32 halves of 20 bits.
	buf := make([]float32, 2*t.World)
	buf[2*t.Rank], buf[2*t.Rank+1] = split20(t.step)
	if err := t.Comm.AllReduce(ctx, buf, allreduce.Sum); err != nil {
		return fmt.Errorf("agreeing on the committed step: %w", err)
	}
	src, newest, same := 0, int64(-1), true
	for r := range t.World {
		s := join20(buf[2*r], buf[2*r+1])
		if s > newest {
			src, newest = r, s
		}
		if r > 0 && s != join20(buf[0], buf[1]) {
			same = false
		}
	}
	if same {
		return nil
	}
	if t.Rank == src {
		t.Log.Info("sending the committed state to the ranks behind", zap.Int64("step", t.step))
	} else {
		t.Log.Info("receiving the committed state", zap.Int("from_rank", src), zap.Int64("step", newest), zap.Int64("had_step", t.step))
	}
	// The position and optimizer bookkeeping first, then the buffers.
	bufs := t.opt.Buffers()
	meta := make([]float32, 10+len(bufs))
	if t.Rank == src {
		meta[0], meta[1] = split20(t.step)
		meta[2], meta[3] = split20(int64(t.pos.Epoch))
		meta[4], meta[5] = split20(int64(t.pos.Pos))
		meta[6], meta[7] = split20(t.global)
		meta[8], meta[9] = split20(t.opt.Steps())
		for i, b := range bufs {
			if b.Data != nil {
				meta[10+i] = 1
			}
		}
	}
	if err := t.Comm.(broadcaster).Broadcast(ctx, meta, src); err != nil {
		return fmt.Errorf("receiving the committed state from rank %d: %w", src, err)
	}
	if err := t.Comm.(broadcaster).Broadcast(ctx, t.params, src); err != nil {
		return fmt.Errorf("receiving the parameters from rank %d: %w", src, err)
	}
	got := map[string][]float32{}
	for i, b := range bufs {
		if meta[10+i] == 0 {
			continue
		}
		data := b.Data
		if t.Rank != src || data == nil {
			data = make([]float32, len(t.params))
		}
		if err := t.Comm.(broadcaster).Broadcast(ctx, data, src); err != nil {
			return fmt.Errorf("receiving optimizer state %s from rank %d: %w", b.Name, src, err)
		}
		got[b.Name] = data
	}
	if t.Rank == src {
		return nil
	}
	if err := t.opt.Restore(join20(meta[8], meta[9]), got); err != nil {
		return err
	}
	t.step = join20(meta[0], meta[1])
	t.pos = shard.Position{Epoch: int(join20(meta[2], meta[3])), Pos: int(join20(meta[4], meta[5]))}
	t.global = join20(meta[6], meta[7])
	return nil
}

// broadcaster is the part of the ring Join needs beyond Collective.
type broadcaster interface {
	Broadcast(ctx context.Context, buf []float32, root int) error
}

func split20(v int64) (hi, lo float32) { return float32(v >> 20), float32(v & (1<<20 - 1)) }
func join20(hi, lo float32) int64      { return int64(hi)<<20 | int64(lo) }

// Step runs one training step and what follows it. The step is committed
// when it returns nil or ErrYield; on any other error nothing of it was
// applied, and the trainer can Join a new ring and go on from the last
// committed step.
func (t *Trainer) Step(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.beat.enter(PhaseCompute)
	defer t.beat.enter(PhaseIdle)
	spec := t.Spec
	all, g, next, err := t.sampler.Step(t.pos, 1, 0, t.batch)
	if err != nil {
		return err
	}
	t.ahead.prefetch(t.Train, t.sampler, next)
	lo, hi := shard.Split(0, g, t.World, t.Rank)
	idx := all[lo:hi]
	if t.SampleHook != nil {
		t.SampleHook(t.step+1, idx)
	}
	t.opt.SetLR(learningRate(spec.Optimizer, t.step, t.total))
	loss, err := t.forwardBackward(ctx, idx, g)
	if err != nil {
		return fmt.Errorf("step %d: %w", t.step+1, err)
	}
	t.stats[0], t.stats[1] = float32(loss), 0
	if t.yield.Load() {
		t.stats[1] = 1
	}
	t.beat.enter(PhaseWait)
	if err := t.Comm.AllReduce(ctx, t.stats, allreduce.Sum); err != nil {
		return fmt.Errorf("step %d: %w", t.step+1, err)
	}
	t.beat.enter(PhaseCompute)
	var gradNorm float64
	if c := spec.Optimizer.GetGradClip(); c > 0 {
		gradNorm = model.ClipGradNorm(t.Backend, t.grads, float64(c))
	}
	if t.snapshot != nil {
		// The previous checkpoint's copy of the parameters and optimizer
		// state overlapped this step's forward and backward pass; it must
		// end before the optimizer writes them; a ring that ends meanwhile
		// does not give the save up.
		t.beat.enter(PhaseIO)
		if _, err := t.snapshot.Wait(t.saverCtx); err != nil {
			return err
		}
		t.beat.enter(PhaseCompute)
		t.snapshot = nil
	}
	t.opt.Step(t.params, t.grads)
	// The step is committed: every rank has finished its all-reduce.
	t.step++
	prev := t.pos
	t.pos = next
	t.global += int64(g)
	t.lastLoss = float64(t.stats[0]) / float64(g*t.terms)
	if math.IsNaN(t.lastLoss) || math.IsInf(t.lastLoss, 0) {
		return fmt.Errorf("step %d: loss is %v; lower optimizer.lr (or set optimizer.grad_clip)", t.step, t.lastLoss)
	}
	if t.CommitHook != nil {
		t.CommitHook(Commit{Step: t.step, Epoch: prev.Epoch, Lo: prev.Pos, Hi: prev.Pos + g, World: t.World, Rank: t.Rank, Generation: t.Generation})
	}
	if t.StepHook != nil {
		t.StepHook(t.step, t.m)
	}
	// Reports, replica checks and checkpoint saves: slow stores are not
	// a stall.
	t.beat.enter(PhaseIO)
	if err := t.afterStep(ctx, g, gradNorm); err != nil {
		return err
	}
	if t.stats[1] > 0 {
		return ErrYield
	}
	return nil
}

// forwardBackward computes this rank's share of the step's gradient in
// micro-batches and all-reduces it, overlapping the last micro-batch's
// backward pass with the all-reduce of finished buckets. It returns this
// rank's loss sum.
func (t *Trainer) forwardBackward(ctx context.Context, idx []int32, g int) (float64, error) {
	t.m.ZeroGrads()
	// scale makes the all-reduce SUM the mean gradient over every loss
	// term of the step, however the batch is split.
	scale := 1 / float32(g*t.terms)
	accum := max(int(t.Spec.GradAccum), 1)
	if t.World != int(t.Spec.Workers) {
		// A smaller ring gives each rank a larger share; keep the
		// micro-batches no larger than the job asked for.
		accum = max(accum, (len(idx)+t.micro-1)/t.micro)
	}
	bucketBytes := int(t.Spec.Collective.GetBucketBytes())
	var loss float64
	var bk *allreduce.Bucketer
	var hookErr error
	for k := range accum {
		mlo, mhi := len(idx)*k/accum, len(idx)*(k+1)/accum
		t.beat.enter(PhaseIO) // a cold data shard is not a stall
		if err := t.Train.Fill(ctx, idx[mlo:mhi], &t.b); err != nil {
			return 0, fmt.Errorf("reading the batch: %w", err)
		}
		t.beat.enter(PhaseCompute)
		if k == accum-1 && bucketBytes > 0 && t.World > 1 {
			// The last micro-batch's backward pass finishes the gradient
			// tensor by tensor; each finished bucket is all-reduced while
			// the rest is computed.
			bk = t.Comm.NewBucketer(ctx, t.grads, allreduce.Sum, bucketBytes)
			t.m.SetGradReadyHook(func(lo, hi int) {
				// Handing a bucket over may wait for the ring.
				t.beat.enter(PhaseWait)
				if err := bk.Ready(ctx, lo, hi); err != nil && hookErr == nil {
					hookErr = err
				}
				t.beat.enter(PhaseCompute)
			})
		}
		st, err := t.m.ForwardBackward(t.b, scale)
		t.m.SetGradReadyHook(nil)
		if err != nil {
			if bk != nil {
				bk.Wait(ctx) //nolint:errcheck // the model's error is the one to report
			}
			return 0, err
		}
		loss += st.Loss
	}
	var err error
	t.beat.enter(PhaseWait)
	if bk != nil {
		err = bk.Wait(ctx)
		if err == nil {
			err = hookErr
		}
	} else {
		err = t.Comm.AllReduce(ctx, t.grads, allreduce.Sum)
	}
	return loss, err
}

// afterStep reports, checks the replicas and checkpoints after a
// committed step.
func (t *Trainer) afterStep(ctx context.Context, g int, gradNorm float64) error {
	spec := t.Spec
	sps := t.rate.add(g)
	if t.Rank == 0 {
		t.Reporter.Step(&pb.StepMetrics{Generation: t.Generation, Step: t.step, TotalSteps: t.total, Epoch: int32(t.pos.Epoch),
			Epochs: spec.Epochs, Loss: t.lastLoss, SamplesPerSec: sps, GlobalSamples: t.global})
		if spec.LogEvery > 0 && t.step%int64(spec.LogEvery) == 0 {
			fields := []zap.Field{zap.Int64("step", t.step), zap.Int64("total", t.total), zap.Int("epoch", t.pos.Epoch),
				zap.Float64("loss", t.lastLoss), zap.Float64("samples_per_s", sps)}
			if t.terms > 1 {
				fields = append(fields, zap.Float64("tokens_per_s", sps*float64(t.terms)))
			}
			if gradNorm > 0 {
				fields = append(fields, zap.Float64("grad_norm", gradNorm))
			}
			t.Log.Info("step", fields...)
		}
	}
	checkEvery := t.ReplicaCheckEvery
	if checkEvery <= 0 {
		checkEvery = 100
	}
	if t.step%checkEvery == 0 || t.step == t.total {
		if err := t.checkReplicas(ctx, t.step, t.params, t.opt); err != nil {
			return err
		}
	}
	every := spec.Checkpoint.GetEverySteps()
	if t.Rank == 0 && every > 0 && t.step%every == 0 && t.step < t.total {
		if p, err := t.save(ctx, t.saver, t.m, t.opt, t.step, t.pos, t.global); err != nil {
			// A failed save does not stop training; the next one may
			// succeed.
			t.Log.Warn("checkpoint failed; training goes on", zap.Int64("step", t.step), zap.Error(err))
		} else {
			t.snapshot, t.lastSaved = p, t.step
		}
	}
	if t.Rank == 0 && (time.Since(t.lastProgress) > time.Second || t.lastSaved == t.step) {
		t.lastProgress = time.Now()
		t.progress(ctx, &pb.Progress{Generation: t.Generation, Step: t.step, TotalSteps: t.total, Epoch: int32(t.pos.Epoch),
			EpochSamples: int64(t.pos.Pos), GlobalSamples: t.global, Loss: t.lastLoss, SamplesPerSec: sps})
	}
	return nil
}

// Finish evaluates the trained model, takes the final checkpoint and
// records the result (rank 0).
func (t *Trainer) Finish(ctx context.Context) (*pb.JobResult, error) {
	ev, err := t.evaluate(ctx, t.m)
	if err != nil {
		return nil, err
	}
	res := &pb.JobResult{TestAccuracy: ev.Accuracy(), TestSamples: int64(ev.Terms), EvalLoss: ev.Mean(), FinalLoss: t.lastLoss, Steps: t.step}
	if t.Rank != 0 {
		return res, nil
	}
	if t.saver != nil {
		// The final checkpoint is taken in line, after the one in flight.
		if err := t.saver.Wait(ctx); err != nil {
			return nil, err
		}
	}
	if t.lastSaved != t.step && t.Checkpoints != nil {
		// The final checkpoint waits until this rank knows it still holds
		// its place (or ctx ends: then it has been replaced).
		for t.MaySave != nil && t.MaySave() != nil {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("final checkpoint: %w (%v)", ctx.Err(), t.MaySave())
			case <-time.After(250 * time.Millisecond):
			}
		}
		if _, err := t.save(ctx, nil, t.m, t.opt, t.step, t.pos, t.global); err != nil {
			return nil, fmt.Errorf("final checkpoint: %w", err)
		}
	}
	if t.Checkpoints != nil {
		if list, err := t.Checkpoints.List(ctx, false); err == nil && len(list) > 0 && list[0].Valid {
			res.LastCheckpoint = list[0].URL
		}
	}
	t.Log.Info("job finished", zap.Int64("steps", t.step), zap.Float64("test_accuracy", res.TestAccuracy),
		zap.Float64("eval_loss", res.EvalLoss), zap.Float64("final_loss", t.lastLoss))
	err = t.Reporter.Progress(ctx, &pb.Progress{Generation: t.Generation, Step: t.step, TotalSteps: t.total, Epoch: int32(t.pos.Epoch),
		EpochSamples: int64(t.pos.Pos), GlobalSamples: t.global, Loss: t.lastLoss, Done: true, Result: res})
	if err != nil {
		return nil, fmt.Errorf("recording the result: %w", err)
	}
	return res, nil
}

// prefetchSteps is how many steps before the end of an epoch the trainer
// starts telling the data about the next epoch's first samples.
const prefetchSteps = 8

// readAhead tells the data which samples the next steps read: the rest of
// the epoch and, in its last steps, the beginning of the next one, so that
// a new epoch does not start by waiting for its first shard.
type readAhead struct {
	next *shard.Sampler // a second sampler, for the next epoch's order
	span int            // samples from the end of the epoch to look across
	buf  []int32
}

func (r *readAhead) prefetch(d Data, s *shard.Sampler, pos shard.Position) {
	up := s.Upcoming(pos)
	if len(up) >= r.span {
		d.Prefetch(up)
		return
	}
	head := r.next.Upcoming(shard.Position{Epoch: pos.Epoch + 1})
	r.buf = append(append(r.buf[:0], up...), head[:min(len(head), r.span)]...)
	d.Prefetch(r.buf)
}

// newOptimizer builds the spec's optimizer for m.
func newOptimizer(o *pb.Optimizer, m model.Model, be model.Backend) (model.Optimizer, error) {
	var opt model.Optimizer
	switch o.GetName() {
	case "", "sgd":
		opt = &model.SGD{LR: o.Lr, Momentum: o.Momentum, WeightDecay: o.WeightDecay, Nesterov: o.Nesterov}
	case "adamw":
		a := model.NewAdamW(be, len(m.Params()))
		a.LR, a.Beta1, a.Beta2, a.Eps, a.WeightDecay = float64(o.Lr), float64(o.Beta1), float64(o.Beta2), float64(o.Eps), float64(o.WeightDecay)
		a.NoDecay = model.NoDecayRanges(m.Tensors())
		opt = a
	default:
		return nil, fmt.Errorf("optimizer.name: unknown optimizer %q", o.GetName())
	}
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	return opt, nil
}

// learningRate is the schedule's rate for the step after step (0-based)
// of total: a linear warmup, then constant or a cosine decay to
// min_lr_ratio of the base rate at the last step (model.Schedule).
func learningRate(o *pb.Optimizer, step, total int64) float64 {
	s := model.Schedule{Base: float64(o.Lr), Warmup: o.WarmupSteps, Total: total, Cosine: o.Schedule == "cosine", MinRatio: float64(o.MinLrRatio)}
	return s.LR(step)
}

// totalSteps is the step count at which the job ends.
func (t *Trainer) totalSteps(step int64, pos shard.Position, n int) int64 {
	if t.Spec.Steps > 0 {
		return t.Spec.Steps
	}
	epochs := int(t.Spec.Epochs)
	if pos.Epoch >= epochs {
		return step
	}
	b := globalBatch(t.Spec)
	left := shard.StepsLeftInEpoch(n, pos, 1, b) + (epochs-pos.Epoch-1)*shard.StepsLeftInEpoch(n, shard.Position{}, 1, b)
	return step + int64(left)
}

// globalBatch is the number of samples a full step consumes: the spec's
// per-worker batch at the spec's worker count. Resuming with another number
// of workers keeps it, so the job's steps and schedule stay the same.
func globalBatch(spec *pb.JobSpec) int {
	return int(spec.BatchSize) * max(int(spec.Workers), 1)
}

func (t *Trainer) progress(ctx context.Context, p *pb.Progress) {
	if err := t.Reporter.Progress(ctx, p); err != nil && ctx.Err() == nil {
		t.Log.Warn("recording progress failed", zap.Error(err))
	}
}

// agree checks that every rank holds the same value.
func (t *Trainer) agree(ctx context.Context, what string, v float64) error {
	if t.World == 1 {
		return nil
	}
	buf := make([]float32, t.World)
	buf[t.Rank] = float32(v)
	if err := t.Comm.AllReduce(ctx, buf, allreduce.Sum); err != nil {
		return fmt.Errorf("agreeing on the %s: %w", what, err)
	}
	for r, got := range buf {
		if float64(got) != float64(float32(v)) {
			return fmt.Errorf("ranks disagree on the %s: rank %d has %v, rank %d has %v", what, t.Rank, v, r, got)
		}
	}
	return nil
}

// checkReplicas compares a CRC32C of the parameters and optimizer state
// across ranks. The checksum travels as two 16-bit halves so float32 sums
// carry it exactly.
func (t *Trainer) checkReplicas(ctx context.Context, step int64, params []float32, opt model.Optimizer) error {
	if t.World == 1 {
		return nil
	}
	sum := crc32c.Checksum(floatBytes(params))
	for _, buf := range opt.Buffers() {
		sum = crc32c.Update(sum, floatBytes(buf.Data))
	}
	buf := make([]float32, 2*t.World)
	buf[2*t.Rank], buf[2*t.Rank+1] = float32(sum>>16), float32(sum&0xffff)
	if err := t.Comm.AllReduce(ctx, buf, allreduce.Sum); err != nil {
		return fmt.Errorf("replica check at step %d: %w", step, err)
	}
	for r := 0; r < t.World; r++ {
		other := uint32(buf[2*r])<<16 | uint32(buf[2*r+1])
		if other != sum {
			return fmt.Errorf("%w at step %d: rank %d has parameter checksum %08x, rank %d has %08x", ErrReplicaMismatch, step, t.Rank, sum, r, other)
		}
	}
	return nil
}

// evaluate runs the model forward over the evaluation set (at most
// maxEvalTerms of it), each rank on its share, and returns the summed
// statistics: loss per term and accuracy (of images, or of next-token
// predictions).
func (t *Trainer) evaluate(ctx context.Context, m model.Model) (model.Stats, error) {
	if t.Eval == nil {
		return model.Stats{}, nil
	}
	lo, hi := shard.Range(min(t.Eval.Len(), max(1, maxEvalTerms/t.Eval.TermsPerSample())), t.World, t.Rank)
	chunk := max(1, 16384/t.Eval.TermsPerSample())
	chunk = min(chunk, 256)
	idx := make([]int32, 0, chunk)
	var b model.Batch
	var sum model.Stats
	for i := lo; i < hi; i += chunk {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		n := min(chunk, hi-i)
		idx = idx[:0]
		for j := range n {
			idx = append(idx, int32(i+j))
		}
		if err := t.Eval.Fill(ctx, idx, &b); err != nil {
			return sum, fmt.Errorf("evaluation: %w", err)
		}
		st, err := m.Evaluate(b)
		if err != nil {
			return sum, err
		}
		sum = sum.Add(st)
	}
	// float64 sums travel as float32: exact for counts below 2^24, and the
	// loss needs no more than float32 precision.
	counts := []float32{float32(sum.Loss), float32(sum.Terms), float32(sum.Correct)}
	if err := t.Comm.AllReduce(ctx, counts, allreduce.Sum); err != nil {
		return sum, fmt.Errorf("evaluation: %w", err)
	}
	return model.Stats{Loss: float64(counts[0]), Terms: int(counts[1]), Correct: int(counts[2])}, nil
}

// save checkpoints the committed state after step: through the async
// saver when there is one, else in line. An asynchronous save returns at
// once with the snapshot still being copied (it overlaps the next step's
// forward and backward pass); the caller must Wait on it before the
// parameters or optimizer state change. The outcome arrives at saved.
func (t *Trainer) save(ctx context.Context, saver *checkpoint.AsyncSaver, m model.Model, opt model.Optimizer, step int64, pos shard.Position, global int64) (*checkpoint.Pending, error) {
	if t.Checkpoints == nil {
		return nil, nil
	}
	if t.MaySave != nil {
		if err := t.MaySave(); err != nil {
			return nil, fmt.Errorf("not saving the checkpoint of step %d: %w", step, err)
		}
	}
	st := t.state(m, opt, step, pos, global)
	if saver != nil {
		return saver.Begin(ctx, st)
	}
	start := time.Now()
	info, err := t.Checkpoints.Save(ctx, st)
	t.saved(ctx, checkpoint.Result{Step: step, Info: info, Err: err, Stall: time.Since(start), Upload: time.Since(start)})
	return nil, err
}

// saved reports the outcome of a save. It runs on the async saver's
// goroutine for background saves.
func (t *Trainer) saved(ctx context.Context, r checkpoint.Result) {
	if r.Err != nil {
		t.Log.Warn("checkpoint failed; training goes on and the next one tries again", zap.Int64("step", r.Step), zap.Error(r.Err))
		t.Reporter.CheckpointFailed(r.Step, r.Err)
		return
	}
	t.Log.Info("checkpoint saved", zap.Int64("step", r.Step), zap.String("url", r.Info.URL),
		zap.Duration("training_stall", r.Stall), zap.Duration("upload", r.Upload))
	if err := t.Reporter.Checkpoint(ctx, &pb.CheckpointRecord{Step: r.Step, Url: r.Info.URL, SizeBytes: r.Info.Size, TimeMs: time.Now().UnixMilli()}); err != nil {
		t.Log.Warn("recording the checkpoint failed", zap.Error(err))
	}
}

// state is the committed training state after step. Its tensors are views
// of the model's and optimizer's flat buffers: the model's tensors, then
// each optimizer buffer's ("optim.<buffer>.<tensor>"), each set one
// contiguous run of memory.
func (t *Trainer) state(m model.Model, opt model.Optimizer, step int64, pos shard.Position, global int64) *checkpoint.State {
	spec, _ := protojson.Marshal(t.Spec)
	cfg, _ := json.Marshal(m.Config())
	rng := make([]byte, 16) // the data order is a pure function of (seed, epoch)
	binary.LittleEndian.PutUint64(rng, t.Spec.Seed)
	binary.LittleEndian.PutUint64(rng[8:], uint64(pos.Epoch))
	st := &checkpoint.State{
		Step: step, Epoch: pos.Epoch, EpochSamples: int64(pos.Pos), GlobalSamples: global, World: t.World, Seed: t.Spec.Seed,
		Spec: spec, RNG: []checkpoint.RNGState{{Name: "data_order", State: rng}},
		Meta: map[string]string{"job": t.JobID, "model": m.Name(), "model_config": string(cfg),
			"optimizer": opt.Name(), "optimizer_steps": strconv.FormatInt(opt.Steps(), 10)},
	}
	params := m.Params()
	for _, ti := range m.Tensors() {
		st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "model." + ti.Name, Shape: ti.Shape, Data: ti.Slice(params)})
	}
	for _, buf := range opt.Buffers() {
		if buf.Data == nil {
			continue
		}
		for _, ti := range m.Tensors() {
			st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "optim." + buf.Name + "." + ti.Name, Shape: ti.Shape, Data: ti.Slice(buf.Data)})
		}
	}
	return st
}

// restore loads a checkpoint's tensors into the model and optimizer. A
// checkpoint of another model, with tensors of other shapes, or with state
// this job would not use is refused: resuming never drops state silently.
func restore(st *checkpoint.State, m model.Model, opt model.Optimizer) error {
	if name := st.Meta["optimizer"]; name != "" && name != opt.Name() {
		return fmt.Errorf("checkpoint at step %d holds %s optimizer state, the job uses %s; start a new job with init_from to change optimizers", st.Step, name, opt.Name())
	}
	params := m.Params()
	used := map[string]bool{}
	for _, ti := range m.Tensors() {
		ct := st.Tensor("model." + ti.Name)
		if ct == nil {
			return fmt.Errorf("checkpoint at step %d has no tensor model.%s; it was not written by this %s model", st.Step, ti.Name, m.Name())
		}
		if !slices.Equal(ct.Shape, ti.Shape) {
			return fmt.Errorf("checkpoint tensor model.%s has shape %v, the model needs %v", ti.Name, ct.Shape, ti.Shape)
		}
		copy(ti.Slice(params), ct.Data)
		used[ct.Name] = true
	}
	bufs := map[string][]float32{}
	for _, ob := range opt.Buffers() {
		var data []float32
		for _, ti := range m.Tensors() {
			name := "optim." + ob.Name + "." + ti.Name
			ct := st.Tensor(name)
			if ct == nil {
				continue
			}
			if !slices.Equal(ct.Shape, ti.Shape) {
				return fmt.Errorf("checkpoint tensor %s has shape %v, the model needs %v", name, ct.Shape, ti.Shape)
			}
			if data == nil {
				data = make([]float32, len(params))
			}
			copy(ti.Slice(data), ct.Data)
			used[name] = true
		}
		if data != nil {
			bufs[ob.Name] = data
		}
	}
	for _, ct := range st.Tensors {
		if !used[ct.Name] {
			return fmt.Errorf("checkpoint at step %d holds tensor %s, which this job (a %s model with %s) does not use; refusing to drop it", st.Step, ct.Name, m.Name(), opt.Name())
		}
	}
	steps, _ := strconv.ParseInt(st.Meta["optimizer_steps"], 10, 64)
	return opt.Restore(steps, bufs)
}

// initFrom loads the weights of t.Init that match the model's tensors by
// name and shape (init_from): pretrained layers come over, the rest (a new
// classifier head, a resized embedding) keep their fresh initialisation.
// Optimizer state is not loaded. At least one tensor must match, or the
// checkpoint is of an unrelated model.
func (t *Trainer) initFrom(m model.Model) error {
	params := m.Params()
	var loaded, fresh []string
	for _, ti := range m.Tensors() {
		ct := t.Init.Tensor("model." + ti.Name)
		if ct == nil || !slices.Equal(ct.Shape, ti.Shape) || excluded(ti.Name, t.Spec.GetInitExclude()) {
			fresh = append(fresh, ti.Name)
			continue
		}
		copy(ti.Slice(params), ct.Data)
		loaded = append(loaded, ti.Name)
	}
	if len(loaded) == 0 {
		return fmt.Errorf("init_from: no tensor of the checkpoint at step %d (a %s model) matches this %s model by name and shape", t.Init.Step, t.Init.Meta["model"], m.Name())
	}
	t.Log.Info("initialised from a checkpoint", zap.Int64("step", t.Init.Step), zap.Int("loaded", len(loaded)),
		zap.Strings("fresh", fresh))
	return nil
}

// excluded reports whether name matches one of the globs.
func excluded(name string, globs []string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

func floatBytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), len(f)*4)
}

// rateMeter measures samples per second over a sliding window of steps.
type rateMeter struct {
	times   [32]time.Time
	samples [32]int
	i, n    int
}

func newRateMeter() *rateMeter { return &rateMeter{} }

func (r *rateMeter) add(samples int) float64 {
	now := time.Now()
	r.times[r.i%len(r.times)] = now
	r.samples[r.i%len(r.samples)] = samples
	r.i++
	r.n = min(r.n+1, len(r.times))
	if r.n < 2 {
		return 0
	}
	oldest := (r.i - r.n) % len(r.times)
	total := 0
	for k := 1; k < r.n; k++ {
		total += r.samples[(oldest+k)%len(r.samples)]
	}
	dt := now.Sub(r.times[oldest]).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(total) / dt
}
