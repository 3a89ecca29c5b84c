package worker

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path"
	"slices"
	"strconv"
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

// Trainer runs one rank of a data-parallel job: a straight loop of batch,
// forward and backward (in micro-batches with gradient accumulation, the
// last one overlapping its backward pass with the all-reduce of finished
// gradient buckets), all-reduce, clipping, optimizer step, report,
// checkpoint, and at the end an evaluation.
type Trainer struct {
	JobID      string
	Spec       *pb.JobSpec
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
}

// ErrReplicaMismatch means the ranks' parameters diverged.
var ErrReplicaMismatch = errors.New("replicas diverged")

// maxEvalTerms bounds the evaluation: the first samples of the evaluation
// set up to this many loss terms (all of MNIST's test set; 2048 sequences
// of 64 tokens).
const maxEvalTerms = 1 << 17

// Run trains to the end of the job and returns its result.
func (t *Trainer) Run(ctx context.Context) (*pb.JobResult, error) {
	spec := t.Spec
	cfg := jobspec.ModelConfig(spec)
	m, err := model.New(cfg, t.Backend, spec.Seed)
	if err != nil {
		return nil, err
	}
	opt, err := newOptimizer(spec.Optimizer, m, t.Backend)
	if err != nil {
		return nil, err
	}
	if t.Init != nil && t.Start == nil {
		if err := t.initFrom(m); err != nil {
			return nil, err
		}
	}
	n := t.Train.Len()
	if n == 0 {
		return nil, errors.New("the training set is empty")
	}
	pos := shard.Position{}
	var step, global int64
	if st := t.Start; st != nil {
		if err := st.CheckWorld(t.World); err != nil {
			return nil, err
		}
		if err := restore(st, m, opt); err != nil {
			return nil, err
		}
		pos = shard.Position{Epoch: st.Epoch, Pos: int(st.EpochSamples)}
		step, global = st.Step, st.GlobalSamples
		if pos.Pos >= n {
			pos = shard.Position{Epoch: pos.Epoch + 1}
		}
	}
	// Every rank must start from the same step; they load independently.
	if err := t.agree(ctx, "resume step", float64(step)); err != nil {
		return nil, err
	}
	total := t.totalSteps(step, pos, n)
	// The job trains with the global batch it was submitted with, however
	// many workers run it now: each rank takes its share of it.
	batch := globalBatch(spec)
	accum := max(int(spec.GradAccum), 1)
	terms := t.Train.TermsPerSample()
	t.Log.Info("training", zap.Int("rank", t.Rank), zap.Int("world", t.World), zap.String("model", cfg.Name), zap.Int64("from_step", step),
		zap.Int64("total_steps", total), zap.Int("epoch", pos.Epoch), zap.Int("epoch_pos", pos.Pos), zap.Int("params", len(m.Params())),
		zap.Int("global_batch", batch), zap.Int("grad_accum", accum), zap.Int("samples", n))

	var saver *checkpoint.AsyncSaver
	if t.Rank == 0 && t.Checkpoints != nil && !spec.Checkpoint.GetSynchronous() {
		policy := checkpoint.WaitIfBusy
		if spec.Checkpoint.GetIfBusy() == "skip" {
			policy = checkpoint.SkipIfBusy
		}
		saver = checkpoint.NewAsyncSaver(t.Checkpoints, policy, func(r checkpoint.Result) { t.saved(ctx, r) })
		defer saver.Close()
	}

	params, grads := m.Params(), m.Grads()
	bucketBytes := int(spec.Collective.GetBucketBytes())
	var b model.Batch
	stats := make([]float32, 1) // the loss sum of the step, all-reduced
	sampler := t.Train.Sampler(spec.Seed)
	ahead := &readAhead{next: t.Train.Sampler(spec.Seed), span: prefetchSteps * batch}
	checkEvery := t.ReplicaCheckEvery
	if checkEvery <= 0 {
		checkEvery = 100
	}
	rate := newRateMeter()
	lastProgress := time.Time{}
	var lastLoss float64
	lastSaved := int64(-1)
	var snapshot *checkpoint.Pending // a checkpoint's copy in progress
	for step < total {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		all, g, next, err := sampler.Step(pos, 1, 0, batch)
		if err != nil {
			return nil, err
		}
		ahead.prefetch(t.Train, sampler, next)
		lo, hi := shard.Split(0, g, t.World, t.Rank)
		idx := all[lo:hi]
		if t.SampleHook != nil {
			t.SampleHook(step+1, idx)
		}
		opt.SetLR(learningRate(spec.Optimizer, step, total))
		m.ZeroGrads()
		// scale makes the all-reduce SUM the mean gradient over every loss
		// term of the step, however the batch is split.
		scale := 1 / float32(g*terms)
		var loss float64
		var bk *allreduce.Bucketer
		var hookErr error
		for k := range accum {
			mlo, mhi := len(idx)*k/accum, len(idx)*(k+1)/accum
			if err := t.Train.Fill(ctx, idx[mlo:mhi], &b); err != nil {
				return nil, fmt.Errorf("step %d: reading the batch: %w", step+1, err)
			}
			if k == accum-1 && bucketBytes > 0 && t.World > 1 {
				// The last micro-batch's backward pass finishes the
				// gradient tensor by tensor; each finished bucket is
				// all-reduced while the rest is computed.
				bk = t.Comm.NewBucketer(ctx, grads, allreduce.Sum, bucketBytes)
				m.SetGradReadyHook(func(lo, hi int) {
					if err := bk.Ready(ctx, lo, hi); err != nil && hookErr == nil {
						hookErr = err
					}
				})
			}
			st, err := m.ForwardBackward(b, scale)
			m.SetGradReadyHook(nil)
			if err != nil {
				if bk != nil {
					bk.Wait(ctx) //nolint:errcheck // the model's error is the one to report
				}
				return nil, err
			}
			loss += st.Loss
		}
		if bk != nil {
			err = bk.Wait(ctx)
			if err == nil {
				err = hookErr
			}
		} else {
			err = t.Comm.AllReduce(ctx, grads, allreduce.Sum)
		}
		if err != nil {
			return nil, fmt.Errorf("step %d: %w", step+1, err)
		}
		stats[0] = float32(loss)
		if err := t.Comm.AllReduce(ctx, stats, allreduce.Sum); err != nil {
			return nil, fmt.Errorf("step %d: %w", step+1, err)
		}
		var gradNorm float64
		if c := spec.Optimizer.GetGradClip(); c > 0 {
			gradNorm = model.ClipGradNorm(t.Backend, grads, float64(c))
		}
		if snapshot != nil {
			// The previous checkpoint's copy of the parameters and
			// optimizer state overlapped this step's forward and backward
			// pass; it must end before the optimizer writes them.
			if _, err := snapshot.Wait(ctx); err != nil {
				return nil, err
			}
			snapshot = nil
		}
		opt.Step(params, grads)
		// The step is committed: every rank has finished its all-reduce.
		step++
		pos = next
		global += int64(g)
		lastLoss = float64(stats[0]) / float64(g*terms)
		if math.IsNaN(lastLoss) || math.IsInf(lastLoss, 0) {
			return nil, fmt.Errorf("step %d: loss is %v; lower optimizer.lr (or set optimizer.grad_clip)", step, lastLoss)
		}
		if t.StepHook != nil {
			t.StepHook(step, m)
		}
		sps := rate.add(g)
		if t.Rank == 0 {
			t.Reporter.Step(&pb.StepMetrics{Generation: t.Generation, Step: step, TotalSteps: total, Epoch: int32(pos.Epoch),
				Epochs: spec.Epochs, Loss: lastLoss, SamplesPerSec: sps, GlobalSamples: global})
			if spec.LogEvery > 0 && step%int64(spec.LogEvery) == 0 {
				fields := []zap.Field{zap.Int64("step", step), zap.Int64("total", total), zap.Int("epoch", pos.Epoch),
					zap.Float64("loss", lastLoss), zap.Float64("samples_per_s", sps)}
				if terms > 1 {
					fields = append(fields, zap.Float64("tokens_per_s", sps*float64(terms)))
				}
				if gradNorm > 0 {
					fields = append(fields, zap.Float64("grad_norm", gradNorm))
				}
				t.Log.Info("step", fields...)
			}
		}
		if step%checkEvery == 0 || step == total {
			if err := t.checkReplicas(ctx, step, params, opt); err != nil {
				return nil, err
			}
		}
		every := spec.Checkpoint.GetEverySteps()
		if t.Rank == 0 && every > 0 && step%every == 0 && step < total {
			if p, err := t.save(ctx, saver, m, opt, step, pos, global); err != nil {
				// A failed save does not stop training; the next one may
				// succeed.
				t.Log.Warn("checkpoint failed; training goes on", zap.Int64("step", step), zap.Error(err))
			} else {
				snapshot, lastSaved = p, step
			}
		}
		if t.Rank == 0 && (time.Since(lastProgress) > time.Second || lastSaved == step) {
			lastProgress = time.Now()
			t.progress(ctx, &pb.Progress{Generation: t.Generation, Step: step, TotalSteps: total, Epoch: int32(pos.Epoch),
				EpochSamples: int64(pos.Pos), GlobalSamples: global, Loss: lastLoss, SamplesPerSec: sps})
		}
	}

	ev, err := t.evaluate(ctx, m)
	if err != nil {
		return nil, err
	}
	res := &pb.JobResult{TestAccuracy: ev.Accuracy(), TestSamples: int64(ev.Terms), EvalLoss: ev.Mean(), FinalLoss: lastLoss, Steps: step}
	if t.Rank == 0 {
		if saver != nil {
			// The final checkpoint is taken in line, after the one in flight.
			if err := saver.Wait(ctx); err != nil {
				return nil, err
			}
		}
		if lastSaved != step && t.Checkpoints != nil {
			if _, err := t.save(ctx, nil, m, opt, step, pos, global); err != nil {
				return nil, fmt.Errorf("final checkpoint: %w", err)
			}
		}
		if t.Checkpoints != nil {
			if list, err := t.Checkpoints.List(ctx, false); err == nil && len(list) > 0 && list[0].Valid {
				res.LastCheckpoint = list[0].URL
			}
		}
		t.Log.Info("job finished", zap.Int64("steps", step), zap.Float64("test_accuracy", res.TestAccuracy),
			zap.Float64("eval_loss", res.EvalLoss), zap.Float64("final_loss", lastLoss))
		err := t.Reporter.Progress(ctx, &pb.Progress{Generation: t.Generation, Step: step, TotalSteps: total, Epoch: int32(pos.Epoch),
			EpochSamples: int64(pos.Pos), GlobalSamples: global, Loss: lastLoss, Done: true, Result: res})
		if err != nil {
			return nil, fmt.Errorf("recording the result: %w", err)
		}
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
