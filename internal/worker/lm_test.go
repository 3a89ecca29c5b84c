package worker

import (
	"context"
	"math"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/jobspec"
	"github.com/ringmaster/ringmaster/internal/versitygw"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/mnist"
	"github.com/ringmaster/ringmaster/pkg/model"
	"github.com/ringmaster/ringmaster/pkg/shard"
	"github.com/ringmaster/ringmaster/pkg/tokens"
)

// corpus writes token shards of the GOROOT files under dir matching
// include, and returns the training and validation globs.
func corpus(t *testing.T, name, dir string, include []string, shardTokens, valTokens int) (train, val string) {
	t.Helper()
	out := t.TempDir()
	_, err := tokens.Prepare(context.Background(), tokens.PrepareOptions{
		Inputs: []string{filepath.Join(runtime.GOROOT(), "src", dir)}, Include: include, Exclude: []string{"*_test.go"},
		OutDir: out, Name: name, ShardTokens: shardTokens, ValTokens: valTokens,
	})
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(out, name+"_train_*.bin"), filepath.Join(out, name+"_val_*.bin")
}

func openTokenData(t *testing.T, glob string, cfg model.Config) Data {
	t.Helper()
	src, err := tokens.OpenSource(context.Background(), glob, tokens.SourceOptions{T: cfg.Ctx})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return TokenData(src, cfg.Ctx, cfg.Vocab)
}

func lmSpec(name string, workers, batch int, steps int64) *pb.JobSpec {
	s := &pb.JobSpec{Name: "lm", Model: name, Dataset: &pb.Dataset{Name: "tokens"}, Workers: int32(workers), BatchSize: int32(batch),
		Optimizer: &pb.Optimizer{Name: "adamw", Lr: 3e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, GradClip: 1,
			Schedule: "cosine", WarmupSteps: 5, MinLrRatio: 0.1},
		Steps: steps, Seed: 7, Checkpoint: &pb.CheckpointPolicy{Keep: 10}, CollectiveTimeoutMs: 60000,
	}
	switch name {
	case "gpt":
		s.ModelConfig = &pb.ModelConfig{Vocab: 256, Ctx: 32, Layers: 2, Dim: 64, Heads: 2}
	case "lstm":
		s.ModelConfig = &pb.ModelConfig{Vocab: 256, Ctx: 32, Layers: 1, Dim: 64, Hidden: 64}
	}
	return s
}

// Two workers with batch 8 in two micro-batches each, all-reducing in
// overlapped buckets, reach the parameters of one worker with batch 16:
// sharding, accumulation, bucketing, clipping and AdamW agree.
func TestLanguageModelDataParallelEquivalence(t *testing.T) {
	for _, name := range []string{"gpt", "lstm"} {
		t.Run(name, func(t *testing.T) {
			spec1 := lmSpec(name, 1, 16, 12)
			cfg := jobspec.ModelConfig(spec1)
			train, _ := corpus(t, "strings", "strings", []string{"*.go"}, 1<<15, 0)
			data := openTokenData(t, train, cfg)
			_, one, err := runJob(t, run{spec: spec1, world: 1, train: data})
			if err != nil {
				t.Fatal(err)
			}
			spec2 := lmSpec(name, 2, 8, 12)
			spec2.GradAccum = 2
			spec2.Collective = &pb.Collective{BucketBytes: 16 << 10}
			_, two, err := runJob(t, run{spec: spec2, world: 2, train: data})
			if err != nil {
				t.Fatal(err)
			}
			if worst, at := maxRelDiff(one, two); worst > 1e-4 {
				t.Fatalf("1x16 and 2x(2x4) differ by %.3g relative at parameter %d (%v vs %v); want <= 1e-4", worst, at, one[at], two[at])
			} else {
				t.Logf("max relative difference %.3g", worst)
			}
		})
	}
}

// maxRelDiff is the largest difference between a and b relative to the
// element's magnitude, floored at the buffer's rms.
func maxRelDiff(a, b []float32) (float64, int) {
	var rms float64
	for _, v := range a {
		rms += float64(v) * float64(v)
	}
	rms = math.Sqrt(rms / float64(len(a)))
	worst, at := 0.0, 0
	for i := range a {
		d := math.Abs(float64(a[i]) - float64(b[i]))
		if rel := d / math.Max(math.Abs(float64(a[i])), rms); rel > worst {
			worst, at = rel, i
		}
	}
	return worst, at
}

// Overlapping the all-reduce with the backward pass in buckets gives the
// parameters of one all-reduce after it, bit for bit, for the CNN and the
// GPT.
func TestBucketedAllReduceIsExact(t *testing.T) {
	same := func(t *testing.T, a, b []float32) {
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("parameter %d: %v with buckets, %v without", i, b[i], a[i])
			}
		}
	}
	t.Run("cnn", func(t *testing.T) {
		_, a := train(t, testSpec(2, 8, 3), nil, nil, nil)
		bucketed := testSpec(2, 8, 3)
		bucketed.Collective = &pb.Collective{BucketBytes: 64 << 10}
		_, b := train(t, bucketed, nil, nil, nil)
		same(t, a, b)
	})
	t.Run("gpt", func(t *testing.T) {
		spec := lmSpec("gpt", 2, 4, 6)
		tr, _ := corpus(t, "strings", "strings", []string{"*.go"}, 1<<15, 0)
		data := openTokenData(t, tr, jobspec.ModelConfig(spec))
		_, a, err := runJob(t, run{spec: spec, world: 2, train: data})
		if err != nil {
			t.Fatal(err)
		}
		spec.Collective = &pb.Collective{BucketBytes: 16 << 10}
		_, b, err := runJob(t, run{spec: spec, world: 2, train: data})
		if err != nil {
			t.Fatal(err)
		}
		same(t, a, b)
	})
}

// A GPT trained with AdamW resumes bit for bit: the moments and step
// count travel in the checkpoint.
func TestLanguageModelResumeIsExact(t *testing.T) {
	spec := lmSpec("gpt", 2, 4, 10)
	spec.Checkpoint.EverySteps = 4
	train, _ := corpus(t, "strings", "strings", []string{"*.go"}, 1<<15, 0)
	data := openTokenData(t, train, jobspec.ModelConfig(spec))
	store, err := checkpoint.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mgr := checkpoint.NewManager(store, "lm", 10, zaptest.NewLogger(t))
	full, fullParams, err := runJob(t, run{spec: spec, world: 2, train: data, mgr: mgr})
	if err != nil {
		t.Fatal(err)
	}
	st, _, err := mgr.Load(context.Background(), 4)
	if err != nil {
		t.Fatal(err)
	}
	if st.Tensor("optim.exp_avg_sq.transformer.h.0.attn.c_attn.weight") == nil || st.Meta["optimizer"] != "adamw" {
		t.Fatalf("checkpoint lacks AdamW state: meta %v", st.Meta)
	}
	resumed, resumedParams, err := runJob(t, run{spec: spec, world: 2, train: data, start: st})
	if err != nil {
		t.Fatal(err)
	}
	for s := int64(5); s <= 10; s++ {
		if resumed.losses[s] != full.losses[s] {
			t.Errorf("step %d: resumed loss %v, uninterrupted %v", s, resumed.losses[s], full.losses[s])
		}
	}
	for i := range fullParams {
		if fullParams[i] != resumedParams[i] {
			t.Fatalf("parameter %d: resumed %v, uninterrupted %v", i, resumedParams[i], fullParams[i])
		}
	}
	// A checkpoint of SGD state cannot resume an AdamW job: no silent drop.
	spec.Optimizer = &pb.Optimizer{Name: "sgd", Lr: 0.1}
	if _, _, err := runJob(t, run{spec: spec, world: 1, train: data, start: st}); err == nil {
		t.Fatal("an SGD job resumed from AdamW state")
	} else {
		t.Logf("refused: %v", err)
	}
}

// Pretraining, then fine-tuning: a GPT pretrained on Go sources and
// fine-tuned on Go assembly reaches a lower validation loss than the same
// number of steps from scratch.
func TestGPTFineTuneBeatsScratch(t *testing.T) {
	goTrain, _ := corpus(t, "go", "strings", []string{"*.go"}, 1<<16, 0)
	asmTrain, asmVal := corpus(t, "asm", "runtime", []string{"*_amd64.s"}, 1<<16, 1<<14)
	pre := lmSpec("gpt", 1, 16, 80)
	cfg := jobspec.ModelConfig(pre)
	store, err := checkpoint.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mgr := checkpoint.NewManager(store, "pre", 2, zaptest.NewLogger(t))
	if _, _, err := runJob(t, run{spec: pre, world: 1, train: openTokenData(t, goTrain, cfg), mgr: mgr}); err != nil {
		t.Fatal(err)
	}
	init, _, err := mgr.Load(context.Background(), -1)
	if err != nil {
		t.Fatal(err)
	}
	ft := lmSpec("gpt", 1, 16, 20)
	ft.Optimizer.Lr = 1e-3
	asm, asmEval := openTokenData(t, asmTrain, cfg), openTokenData(t, asmVal, cfg)
	scratch, _, err := runJob(t, run{spec: ft, world: 1, train: asm, eval: asmEval})
	if err != nil {
		t.Fatal(err)
	}
	tuned, _, err := runJob(t, run{spec: ft, world: 1, train: asm, eval: asmEval, init: init})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("validation loss on assembly after 20 steps: from scratch %.4f, fine-tuned from Go %.4f", scratch.result.EvalLoss, tuned.result.EvalLoss)
	if !(tuned.result.EvalLoss < scratch.result.EvalLoss) {
		t.Fatalf("fine-tuned validation loss %.4f is not below from-scratch %.4f", tuned.result.EvalLoss, scratch.result.EvalLoss)
	}
}

// The CNN pretrained on digits 0-4 and fine-tuned on 5-9 classifies 5-9
// better than the same steps from scratch.
func TestCNNFineTuneOnNewDigits(t *testing.T) {
	full := loadMNIST(t)
	fullTest := data.Test // loadMNIST's cache holds the whole test set
	low, high := []int32{0, 1, 2, 3, 4}, []int32{5, 6, 7, 8, 9}
	store, err := checkpoint.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mgr := checkpoint.NewManager(store, "digits", 2, zaptest.NewLogger(t))
	pre := testSpec(1, 32, 30)
	if _, _, err := runJob(t, run{spec: pre, world: 1, train: MNISTData(digitFilter(full.Train, low)), eval: MNISTData(digitFilter(full.Test, low)), mgr: mgr}); err != nil {
		t.Fatal(err)
	}
	init, _, err := mgr.Load(context.Background(), -1)
	if err != nil {
		t.Fatal(err)
	}
	// A new classifier head: the pretrained one has learnt that 5-9 never
	// occur.
	ft := testSpec(1, 32, 10)
	ft.InitFrom, ft.InitExclude = "pretrained", []string{"fc2.*"}
	test5to9 := digitFilter(fullTest, high)
	test5to9 = &mnist.Set{N: 500, Images: test5to9.Images[:500*mnist.Pixels], Labels: test5to9.Labels[:500]}
	train, test := MNISTData(digitFilter(full.Train, high)), MNISTData(test5to9)
	scratch, _, err := runJob(t, run{spec: ft, world: 1, train: train, eval: test})
	if err != nil {
		t.Fatal(err)
	}
	tuned, _, err := runJob(t, run{spec: ft, world: 1, train: train, eval: test, init: init})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("digits 5-9 after 10 steps: from scratch accuracy %.4f loss %.4f; fine-tuned from 0-4 accuracy %.4f loss %.4f (%d test images)",
		scratch.result.TestAccuracy, scratch.result.EvalLoss, tuned.result.TestAccuracy, tuned.result.EvalLoss, tuned.result.TestSamples)
	if !(tuned.result.EvalLoss < scratch.result.EvalLoss) {
		t.Fatalf("fine-tuned test loss %.4f is not below from-scratch %.4f", tuned.result.EvalLoss, scratch.result.EvalLoss)
	}
}

// init_from loads what matches by name and shape and leaves the rest
// fresh; a checkpoint with nothing in common is refused.
func TestInitFromLoadsMatchingTensors(t *testing.T) {
	be := model.NewCPU(1)
	src, err := model.New(model.Config{Name: "gpt", Vocab: 256, Ctx: 16, Layers: 1, Dim: 32, Heads: 2}, be, 1)
	if err != nil {
		t.Fatal(err)
	}
	init := &checkpoint.State{Meta: map[string]string{"model": "gpt"}}
	for _, ti := range src.Tensors() {
		init.Tensors = append(init.Tensors, checkpoint.Tensor{Name: "model." + ti.Name, Shape: ti.Shape, Data: ti.Slice(src.Params())})
	}
	// Same blocks, a larger vocabulary: the embedding and head are new.
	dst, err := model.New(model.Config{Name: "gpt", Vocab: 300, Ctx: 16, Layers: 1, Dim: 32, Heads: 2}, be, 2)
	if err != nil {
		t.Fatal(err)
	}
	fresh := append([]float32(nil), dst.Params()...)
	tr := &Trainer{Init: init, Log: zaptest.NewLogger(t)}
	if err := tr.initFrom(dst); err != nil {
		t.Fatal(err)
	}
	for _, ti := range dst.Tensors() {
		got := ti.Slice(dst.Params())
		want := ti.Slice(fresh)
		if ct := init.Tensor("model." + ti.Name); ct != nil && slices.Equal(ct.Shape, ti.Shape) {
			want = ct.Data
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s[%d] = %v, want %v", ti.Name, i, got[i], want[i])
			}
		}
	}
	cnn, err := model.New(model.Config{Name: "cnn"}, be, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.initFrom(cnn); err == nil {
		t.Fatal("a CNN was initialised from a GPT checkpoint")
	}
}

// Two workers training a GPT on shards streamed from a real S3 server
// (versitygw) reach the parameters of the same job on the local files, bit
// for bit, fetching the shards as the job reaches them.
func TestTrainingFromS3EqualsLocal(t *testing.T) {
	srv := versitygw.Start(t, "data")
	for _, kv := range versitygw.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	// Shards of 128 samples: the job's 24 steps of 8 samples cross one.
	train, _ := corpus(t, "strings", "strings", []string{"*.go"}, 1<<12, 0)
	paths, err := filepath.Glob(train)
	if err != nil || len(paths) < 3 {
		t.Fatalf("want several shards, got %v (%v)", paths, err)
	}
	store, err := checkpoint.NewS3Store(srv.Config("data", "corpus"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.UploadShards(context.Background(), store, paths); err != nil {
		t.Fatal(err)
	}
	spec := lmSpec("gpt", 2, 4, 24)
	cfg := jobspec.ModelConfig(spec)
	_, local, err := runJob(t, run{spec: spec, world: 2, train: openTokenData(t, train, cfg)})
	if err != nil {
		t.Fatal(err)
	}
	loc := strings.Replace(srv.URL("data", "corpus"), "?", "/strings_train_*.bin?", 1)
	src, err := tokens.OpenSource(context.Background(), loc, tokens.SourceOptions{T: cfg.Ctx, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	_, remote, err := runJob(t, run{spec: spec, world: 2, train: TokenData(src, cfg.Ctx, cfg.Vocab)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range local {
		if local[i] != remote[i] {
			t.Fatalf("parameter %d: %v from S3, %v from local files", i, remote[i], local[i])
		}
	}
	st := src.(tokens.StatsSource).Stats()
	t.Logf("remote source: %+v", st)
	if st.Fetches < 2 || st.Fetches >= int64(len(paths)) {
		t.Errorf("%d fetches of %d shards; the job reads 2 and fetches a few ahead, not all", st.Fetches, len(paths))
	}
}

// prefetchRecorder keeps what the trainer tells the data it will read.
type prefetchRecorder struct {
	Data
	calls [][]int32
}

func (p *prefetchRecorder) Prefetch(up []int32) { p.calls = append(p.calls, slices.Clone(up)) }

// In an epoch's last steps the trainer tells the data about the next
// epoch's first samples too, so a new epoch's first shard is fetched ahead.
func TestPrefetchLooksIntoTheNextEpoch(t *testing.T) {
	full := loadMNIST(t)
	const n, batch = 64 * 3, 8
	set := &mnist.Set{N: n, Images: full.Train.Images[:n*mnist.Pixels], Labels: full.Train.Labels[:n]}
	rec := &prefetchRecorder{Data: MNISTData(set)}
	spec := testSpec(1, batch, 30) // 24 steps an epoch
	if _, _, err := runJob(t, run{spec: spec, world: 1, train: rec}); err != nil {
		t.Fatal(err)
	}
	span := prefetchSteps * batch
	order0, order1 := shard.Order(spec.Seed, 0, n), shard.Order(spec.Seed, 1, n)
	for i, got := range rec.calls[:n/batch] { // the calls made during epoch 0
		rest := order0[min((i+1)*batch, n):]
		if (i+1)*batch == n {
			rest = order1 // the last step's next position is the new epoch
		}
		want := rest
		if len(rest) < span {
			want = append(slices.Clone(rest), order1[:span]...)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: prefetch of %d samples, want %d (the rest of the epoch%s)", i+1, len(got), len(want),
				map[bool]string{true: " and the next epoch's first ones", false: ""}[len(rest) < span])
		}
	}
}

// A rank that leaves mid-job while gradients are all-reduced in overlapped
// buckets makes the other rank's step fail with an error that names it,
// rather than hang.
func TestBucketedStepFailsWhenAPeerLeaves(t *testing.T) {
	spec := testSpec(2, 8, 20)
	spec.Collective = &pb.Collective{BucketBytes: 64 << 10}
	comms := ringOverGRPC(t, 2, 1)
	_, _, err := runJob(t, run{spec: spec, world: 2, comms: comms, hook: func(rank int, step int64, _ model.Model) {
		if rank == 1 && step == 3 {
			comms[1].Close() // rank 1 goes away
		}
	}})
	// runJob reports the lowest failing rank: rank 0 must have failed, and
	// said which peer it lost.
	if err == nil || !strings.HasPrefix(err.Error(), "rank 0: ") || !strings.Contains(err.Error(), "rank 1 (") {
		t.Fatalf("got %v; want rank 0 to fail naming rank 1", err)
	}
	t.Log(err)
}
