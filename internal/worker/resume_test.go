package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/versitygw"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/mnist"
	"github.com/ringmaster/ringmaster/pkg/model"
)

// smallMNIST is the first n training samples: an epoch of a few steps.
func smallMNIST(t *testing.T, n int) *mnist.Dataset {
	ds := loadMNIST(t)
	return &mnist.Dataset{Train: &mnist.Set{N: n, Images: ds.Train.Images[:n*mnist.Pixels], Labels: ds.Train.Labels[:n]}, Test: ds.Test}
}

// s3Manager is a checkpoint manager on a fresh versitygw server.
func s3Manager(t *testing.T, retry checkpoint.RetryPolicy) (*checkpoint.Manager, *versitygw.Server) {
	srv := versitygw.Start(t, "ckpt")
	cfg := srv.Config("ckpt", "jobs")
	cfg.Retry = retry
	store, err := checkpoint.NewS3Store(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return checkpoint.NewManager(store, "t", 10, zaptest.NewLogger(t)), srv
}

// sampleLog records which samples each step trained on, over all ranks.
type sampleLog struct {
	mu    sync.Mutex
	steps map[int64][]int32
	dup   []string
}

func newSampleLog() *sampleLog { return &sampleLog{steps: map[int64][]int32{}} }

func (l *sampleLog) add(rank int, step int64, idx []int32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, i := range idx {
		if slices.Contains(l.steps[step], i) {
			l.dup = append(l.dup, fmt.Sprintf("step %d: sample %d twice (rank %d)", step, i, rank))
		}
		l.steps[step] = append(l.steps[step], i)
	}
}

func (l *sampleLog) batch(step int64) []int32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := slices.Clone(l.steps[step])
	slices.Sort(b)
	return b
}

// One checkpoint in S3, saved by 2 workers mid-epoch, resumed with 1, 2
// and 4 workers: every run continues at the next step and data position,
// trains every later step on exactly the samples of the uninterrupted run
// (so every sample of each epoch once), and its losses continue the
// uninterrupted run's: bit for bit with 2 workers, within float rounding
// of another summation order with 1 or 4 (the global batch is the same).
func TestResumeWithOneTwoFourWorkers(t *testing.T) {
	const n, epochs, every, from = 104, 2, 5, 5 // 7 steps an epoch at global batch 16 (the 7th of 8)
	ds := smallMNIST(t, n)
	spec := testSpec(2, 8, 0)
	spec.Epochs = epochs
	spec.Checkpoint.EverySteps = every
	mgr, _ := s3Manager(t, checkpoint.DefaultRetry)

	refSamples := newSampleLog()
	full, fullParams, err := runJob(t, run{spec: spec, world: 2, data: ds, mgr: mgr, samples: refSamples.add})
	if err != nil {
		t.Fatal(err)
	}
	const total = 14
	if len(full.losses) != total {
		t.Fatalf("uninterrupted run: %d steps, want %d", len(full.losses), total)
	}
	st, info, err := mgr.LoadStep(context.Background(), from)
	if err != nil {
		t.Fatal(err)
	}
	if st.World != 2 || st.Epoch != 0 || st.EpochSamples != from*16 {
		t.Fatalf("checkpoint at step %d: world %d, epoch %d at %d", from, st.World, st.Epoch, st.EpochSamples)
	}
	t.Logf("resuming from %s", info.URL)

	for _, world := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("%d workers", world), func(t *testing.T) {
			samples := newSampleLog()
			got, params, err := runJob(t, run{spec: spec, world: world, data: ds, start: st, samples: samples.add})
			if err != nil {
				t.Fatal(err)
			}
			var steps []int64
			for s := range got.losses {
				steps = append(steps, s)
			}
			slices.Sort(steps)
			if len(steps) != total-from || steps[0] != from+1 || steps[len(steps)-1] != total {
				t.Fatalf("resumed run trained steps %v, want %d..%d", steps, from+1, total)
			}
			if len(samples.dup) > 0 {
				t.Errorf("samples seen twice within a step: %v", samples.dup)
			}
			seen := map[int32]int{}
			for s := int64(from + 1); s <= total; s++ {
				b := samples.batch(s)
				if !slices.Equal(b, refSamples.batch(s)) {
					t.Errorf("step %d trained on %v, the uninterrupted run on %v", s, b, refSamples.batch(s))
				}
				if s > 7 { // epoch 1
					for _, i := range b {
						seen[i]++
					}
				}
			}
			for i := range int32(n) {
				if seen[i] != 1 {
					t.Errorf("epoch 1 visited sample %d %d times, want once", i, seen[i])
					break
				}
			}
			last := got.progress[len(got.progress)-1]
			if last.GlobalSamples != epochs*n || !last.Done {
				t.Errorf("final progress %v, want %d samples, done", last, epochs*n)
			}
			worst := 0.0
			for s := int64(from + 1); s <= total; s++ {
				d := math.Abs(got.losses[s]-full.losses[s]) / math.Abs(full.losses[s])
				worst = max(worst, d)
				if world == 2 && got.losses[s] != full.losses[s] {
					t.Errorf("step %d: loss %v, uninterrupted %v (same workers: must be exact)", s, got.losses[s], full.losses[s])
				}
			}
			pdiff := 0.0
			for i := range params {
				pdiff = max(pdiff, math.Abs(float64(params[i]-fullParams[i])))
			}
			t.Logf("%d workers: first loss %.6f (uninterrupted %.6f), worst relative loss difference %.2g, max parameter difference %.2g",
				world, got.losses[from+1], full.losses[from+1], worst, pdiff)
			if worst > 1e-4 {
				t.Errorf("losses drift from the uninterrupted run by %.2g relative; want <= 1e-4 (only summation order differs)", worst)
			}
			if world == 2 && pdiff != 0 {
				t.Errorf("final parameters differ by %g", pdiff)
			}
		})
	}
}

// Rank-local state in a checkpoint is refused when the number of workers
// changes, before any training.
func TestRankLocalStateIsNotResharded(t *testing.T) {
	spec := testSpec(2, 8, 3)
	store, err := checkpoint.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mgr := checkpoint.NewManager(store, "t", 3, zaptest.NewLogger(t))
	if _, _, err := runJob(t, run{spec: spec, world: 2, mgr: mgr}); err != nil {
		t.Fatal(err)
	}
	st, _, err := mgr.Load(context.Background(), -1)
	if err != nil {
		t.Fatal(err)
	}
	st.RNG = append(st.RNG, checkpoint.RNGState{Name: "dropout", State: []byte{1}, Local: true, Rank: 1})
	spec.Steps = 5
	_, _, err = runJob(t, run{spec: spec, world: 1, start: st})
	if !errors.Is(err, checkpoint.ErrNotReshardable) {
		t.Fatalf("resuming rank-local state on 1 worker: %v, want ErrNotReshardable", err)
	}
	t.Log(err)
}

// The S3 server dies while training runs: the saves it misses fail and are
// reported, training goes on to the end with the same losses as a run
// whose saves all succeed, and once the server is back the next save
// commits.
func TestTrainingGoesOnWhenTheStoreDies(t *testing.T) {
	spec := testSpec(2, 8, 12)
	spec.Checkpoint.EverySteps = 3
	mgr, srv := s3Manager(t, checkpoint.RetryPolicy{Attempts: 2, Base: 10 * time.Millisecond, Cap: 50 * time.Millisecond, AttemptTimeout: 10 * time.Second})
	restarted := make(chan error, 1)
	hook := func(rank int, step int64, _ model.Model) {
		if rank != 0 {
			return
		}
		switch step {
		case 3: // before the save of step 3
			srv.Kill()
		case 7:
			restarted <- srv.Restart(context.Background())
		}
	}
	rep, _, err := runJob(t, run{spec: spec, world: 2, mgr: mgr, hook: hook})
	if err != nil {
		t.Fatalf("training stopped: %v", err)
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if len(rep.losses) != 12 {
		t.Fatalf("trained %d steps, want 12", len(rep.losses))
	}
	if !slices.Contains(rep.failed, 3) {
		t.Errorf("failed saves %v, want step 3 among them", rep.failed)
	}
	var saved []int64
	for _, c := range rep.ckpts {
		saved = append(saved, c.Step)
	}
	if !slices.Contains(saved, 9) || !slices.Contains(saved, 12) || slices.Contains(saved, 3) {
		t.Errorf("committed saves %v, want 9 and 12 and not 3", saved)
	}
	list, err := mgr.List(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list {
		if !c.Valid || !slices.Contains(saved, c.Step) {
			t.Errorf("store holds %+v, which was not reported as committed", c)
		}
	}
	t.Logf("failed: %v, committed: %v", rep.failed, saved)
	// The numbers are those of a run without trouble.
	ref, _ := train(t, spec, nil, nil, nil)
	for s, l := range ref.losses {
		if rep.losses[s] != l {
			t.Errorf("step %d: loss %v, %v without store trouble", s, rep.losses[s], l)
		}
	}
	_ = pb.JobState_JOB_STATE_RUNNING
}
