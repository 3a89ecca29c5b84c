package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/pkg/allreduce"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/mnist"
	"github.com/ringmaster/ringmaster/pkg/model"
)

var (
	dataOnce sync.Once
	data     *mnist.Dataset
	dataErr  error
)

func loadMNIST(t testing.TB) *mnist.Dataset {
	dataOnce.Do(func() {
		dir, err := mnist.DefaultDir()
		if err != nil {
			dataErr = err
			return
		}
		data, dataErr = mnist.Load(dir)
	})
	if dataErr != nil {
		t.Fatal(dataErr)
	}
	// Evaluation is not under test here: keep it short.
	return &mnist.Dataset{Train: data.Train, Test: &mnist.Set{N: 64, Images: data.Test.Images[:64*mnist.Pixels], Labels: data.Test.Labels[:64]}}
}

// memReporter keeps what rank 0 reports.
type memReporter struct {
	mu       sync.Mutex
	losses   map[int64]float64
	progress []*pb.Progress
	ckpts    []*pb.CheckpointRecord
	failed   []int64
	result   *pb.JobResult // rank 0's, set by runJob
}

func newMemReporter() *memReporter { return &memReporter{losses: map[int64]float64{}} }

func (r *memReporter) Step(m *pb.StepMetrics) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.losses[m.Step] = m.Loss
}
func (r *memReporter) Progress(_ context.Context, p *pb.Progress) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.progress = append(r.progress, p)
	return nil
}
func (r *memReporter) CheckpointFailed(step int64, _ error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = append(r.failed, step)
}
func (r *memReporter) Checkpoint(_ context.Context, c *pb.CheckpointRecord) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ckpts = append(r.ckpts, c)
	return nil
}

func testSpec(workers, batch int, steps int64) *pb.JobSpec {
	return &pb.JobSpec{Name: "t", Model: "cnn", Dataset: &pb.Dataset{Name: "mnist"}, Workers: int32(workers), BatchSize: int32(batch),
		Optimizer: &pb.Optimizer{Name: "sgd", Lr: 0.05, Momentum: 0.9}, Steps: steps, Seed: 3,
		Checkpoint: &pb.CheckpointPolicy{Keep: 10}, CollectiveTimeoutMs: 60000}
}

// ringOverGRPC starts world hubs on loopback and returns a communicator per
// rank.
func ringOverGRPC(t testing.TB, world int, gen uint64) []*allreduce.Comm {
	addrs := make([]string, world)
	hubs := make([]*allreduce.Hub, world)
	for i := range hubs {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hubs[i] = allreduce.NewHub(zaptest.NewLogger(t), nil)
		srv := grpc.NewServer(allreduce.ServerOptions(nil)...)
		hubs[i].Register(srv)
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
		addrs[i] = lis.Addr().String()
	}
	comms := make([]*allreduce.Comm, world)
	var wg sync.WaitGroup
	errs := make([]error, world)
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			tr, err := hubs[r].Dial(ctx, allreduce.Peering{Job: "t", Generation: gen, Rank: r, World: world, Addrs: addrs})
			if err == nil {
				comms[r], err = allreduce.New(allreduce.Config{Rank: r, World: world, Generation: gen, Timeout: time.Minute}, tr)
			}
			errs[r] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, c := range comms {
			c.Close()
		}
	})
	return comms
}

// train runs every rank of a job to the end and returns rank 0's reporter
// and final parameters.
func train(t *testing.T, spec *pb.JobSpec, mgr *checkpoint.Manager, start *checkpoint.State, hook func(rank int, step int64, m model.Model)) (*memReporter, []float32) {
	rep, params, err := runJob(t, run{spec: spec, world: int(spec.Workers), mgr: mgr, start: start, hook: hook})
	if err != nil {
		t.Fatal(err)
	}
	return rep, params
}

// run describes one run of a job for runJob.
type run struct {
	spec    *pb.JobSpec
	world   int
	data    *mnist.Dataset // nil: loadMNIST, unless train is set
	train   Data
	eval    Data
	init    *checkpoint.State
	comms   []*allreduce.Comm // nil: a new ring over gRPC
	mgr     *checkpoint.Manager
	start   *checkpoint.State
	hook    func(rank int, step int64, m model.Model)
	samples func(rank int, step int64, idx []int32)
	maySave func() error // rank 0's Trainer.MaySave
}

// runJob runs every rank of a job to the end and returns rank 0's
// reporter, its parameters after the last step, and the first rank error.
func runJob(t *testing.T, j run) (*memReporter, []float32, error) {
	comms := j.comms
	if comms == nil {
		comms = ringOverGRPC(t, j.world, 1)
	}
	rep := newMemReporter()
	if j.train == nil {
		ds := j.data
		if ds == nil {
			ds = loadMNIST(t)
		}
		j.train, j.eval = MNISTData(ds.Train), MNISTData(ds.Test)
	}
	var results []*pb.JobResult
	var resMu sync.Mutex
	var params []float32
	errs := make([]error, j.world)
	var wg sync.WaitGroup
	for r := range j.world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &Trainer{JobID: "t", Spec: j.spec, Rank: r, World: j.world, Generation: 1, Comm: comms[r], Train: j.train, Eval: j.eval,
				Backend: model.NewCPU(2), Start: j.start, Init: j.init, Reporter: rep, Log: zaptest.NewLogger(t), ReplicaCheckEvery: 5}
			if r == 0 {
				tr.Checkpoints, tr.MaySave = j.mgr, j.maySave
			}
			tr.StepHook = func(step int64, m model.Model) {
				if j.hook != nil {
					j.hook(r, step, m)
				}
				if r == 0 {
					params = append(params[:0], m.Params()...)
				}
			}
			if j.samples != nil {
				tr.SampleHook = func(step int64, idx []int32) { j.samples(r, step, idx) }
			}
			res, err := tr.Run(context.Background())
			errs[r] = err
			if r == 0 {
				resMu.Lock()
				results = append(results, res)
				resMu.Unlock()
			}
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			return rep, params, fmt.Errorf("rank %d: %w", r, err)
		}
	}
	rep.result = results[0]
	return rep, params, nil
}

// Two workers with batch 32 reach the parameters that one worker with
// batch 64 reaches over the same samples: the proof that sharding and
// gradient averaging are right.
func TestDataParallelEquivalence(t *testing.T) {
	const steps = 20
	_, one := train(t, testSpec(1, 64, steps), nil, nil, nil)
	_, two := train(t, testSpec(2, 32, steps), nil, nil, nil)
	if len(one) != len(two) || len(one) == 0 {
		t.Fatalf("parameter counts %d and %d", len(one), len(two))
	}
	// Relative to the parameter's scale, with a floor at the typical
	// magnitude so that parameters near zero do not make a relative test
	// meaningless.
	worst, worstAt := maxRelDiff(one, two)
	t.Logf("max relative difference %.3g (at %d: %v vs %v)", worst, worstAt, one[worstAt], two[worstAt])
	if worst > 1e-5 {
		t.Fatalf("2x32 and 1x64 differ by %.3g relative at parameter %d (%v vs %v); want <= 1e-5", worst, worstAt, one[worstAt], two[worstAt])
	}
}

// Resuming from the checkpoint at step K reproduces every later loss and the
// final parameters bit for bit.
func TestResumeFromCheckpointIsExact(t *testing.T) {
	const steps, every = 16, 6
	store, err := checkpoint.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	spec := testSpec(2, 8, steps)
	spec.Checkpoint.EverySteps = every
	mgr := checkpoint.NewManager(store, "t", 10, zaptest.NewLogger(t))
	full, fullParams := train(t, spec, mgr, nil, nil)
	if len(full.ckpts) != 3 || full.ckpts[0].Step != 6 || full.ckpts[1].Step != 12 || full.ckpts[2].Step != 16 {
		t.Fatalf("checkpoints at %v, want steps 6, 12 and the final 16", full.ckpts)
	}
	st, _, err := mgr.Load(context.Background(), every)
	if err != nil || st.Step != every {
		t.Fatalf("loading step %d: %v %v", every, st, err)
	}
	resumed, resumedParams := train(t, spec, nil, st, nil)
	for s := int64(every + 1); s <= steps; s++ {
		if resumed.losses[s] != full.losses[s] {
			t.Errorf("step %d: resumed loss %v, uninterrupted %v", s, resumed.losses[s], full.losses[s])
		}
	}
	if _, ok := resumed.losses[every]; ok {
		t.Errorf("the resumed run repeated step %d", every)
	}
	for i := range fullParams {
		if fullParams[i] != resumedParams[i] {
			t.Fatalf("parameter %d: resumed %v, uninterrupted %v", i, resumedParams[i], fullParams[i])
		}
	}
}

// A rank whose parameters diverge is caught by the replica check, with both
// checksums in the error.
func TestReplicaDivergenceIsDetected(t *testing.T) {
	spec := testSpec(2, 4, 10)
	world := 2
	comms := ringOverGRPC(t, world, 1)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &Trainer{JobID: "t", Spec: spec, Rank: r, World: world, Generation: 1, Comm: comms[r], Train: MNISTData(loadMNIST(t).Train), Eval: MNISTData(loadMNIST(t).Test),
				Backend: model.NewCPU(1), Reporter: newMemReporter(), Log: zaptest.NewLogger(t), ReplicaCheckEvery: 5,
				StepHook: func(step int64, m model.Model) {
					if r == 1 && step == 3 {
						m.Params()[0] += 1e-3 // a silent corruption on one rank
					}
				}}
			_, errs[r] = tr.Run(context.Background())
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err == nil || !errors.Is(err, ErrReplicaMismatch) {
			t.Errorf("rank %d: %v, want a replica mismatch", r, err)
		} else {
			t.Logf("rank %d: %v", r, err)
		}
	}
}

func TestLearningRateSchedule(t *testing.T) {
	near := func(a, b float32) bool { return math.Abs(float64(a-b)) < 1e-6 }
	constant := &pb.Optimizer{Lr: 0.1, Schedule: "constant"}
	if got := float32(learningRate(constant, 57, 100)); got != 0.1 {
		t.Errorf("constant: %v", got)
	}
	cos := &pb.Optimizer{Lr: 0.1, Schedule: "cosine", MinLrRatio: 0.1}
	for _, c := range []struct {
		step int64
		want float32
	}{{0, 0.1}, {99, 0.01}, {33, 0.01 + 0.09*0.5*(1+float32(math.Cos(math.Pi/3)))}} {
		if got := float32(learningRate(cos, c.step, 100)); !near(got, c.want) {
			t.Errorf("cosine step %d: %v, want %v", c.step, got, c.want)
		}
	}
	warm := &pb.Optimizer{Lr: 0.1, Schedule: "cosine", WarmupSteps: 10}
	if got := float32(learningRate(warm, 0, 100)); !near(got, 0.01) {
		t.Errorf("warmup step 0: %v, want 0.01", got)
	}
	if got := float32(learningRate(warm, 9, 100)); !near(got, 0.1) {
		t.Errorf("warmup step 9: %v, want 0.1", got)
	}
	if got := float32(learningRate(warm, 10, 100)); !near(got, 0.1) {
		t.Errorf("first step after warmup: %v, want 0.1", got)
	}
	if got := float32(learningRate(warm, 99, 100)); !near(got, 0) {
		t.Errorf("last step: %v, want 0", got)
	}
}

// A rank that cannot rule out that its lease expired writes no checkpoint
// (its job may run on another ring by now); training goes on, and the
// final checkpoint waits until the lease is confirmed.
func TestNoCheckpointWithoutTheLease(t *testing.T) {
	spec := testSpec(2, 8, 12)
	spec.Checkpoint.EverySteps = 2
	store, err := checkpoint.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mgr := checkpoint.NewManager(store, "t", 100, zaptest.NewLogger(t))
	var step atomic.Int64
	var finalRefusals atomic.Int32
	maySave := func() error {
		switch s := step.Load(); {
		case s < 6:
			return errors.New("lease unconfirmed")
		case s == 12 && finalRefusals.Add(1) <= 3:
			return errors.New("lease unconfirmed at the end")
		}
		return nil
	}
	rep, _, err := runJob(t, run{spec: spec, world: 2, mgr: mgr, maySave: maySave,
		hook: func(rank int, s int64, _ model.Model) {
			if rank == 0 {
				step.Store(s)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	list, err := mgr.List(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	var saved []int64
	for _, c := range list {
		saved = append(saved, c.Step)
	}
	slices.Sort(saved)
	if want := []int64{6, 8, 10, 12}; !slices.Equal(saved, want) {
		t.Errorf("checkpoints at steps %v, want %v (none while the lease was unconfirmed)", saved, want)
	}
	if n := finalRefusals.Load(); n < 4 {
		t.Errorf("the final checkpoint asked %d times, want it to wait until allowed", n)
	}
	if rep.result == nil || rep.result.LastCheckpoint == "" {
		t.Errorf("no final checkpoint recorded: %+v", rep.result)
	}
}
