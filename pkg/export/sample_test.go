package export_test

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/mnist"
	"github.com/ringmaster/ringmaster/pkg/model"
)

var sampleDir = flag.String("sample-exports", "", "TestSampleExports: train a CNN, an LSTM and a GPT and write their checkpoints under this directory (see docs/models.md)")

// TestSampleExports makes the checkpoints that docs/models.md exports and
// loads into PyTorch with scripts/load_safetensors.py: the CNN trained on
// MNIST, the default LSTM and a GPT with tied embeddings trained on Go
// source (byte-level), each saved as the trainer saves it (the CNN without
// model_config, as checkpoints written before it). It prints each model's
// loss on the script's fixed input, which the script must reproduce from
// the exported file. It runs only with -sample-exports DIR.
func TestSampleExports(t *testing.T) {
	if *sampleDir == "" {
		t.Skip("writes sample checkpoints only with -sample-exports DIR")
	}
	dir, err := filepath.Abs(*sampleDir)
	if err != nil {
		t.Fatal(err)
	}
	store, err := checkpoint.NewFileStore(filepath.Join(dir, "ckpt"))
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(filepath.Join("..", "..", "scripts", "testdata", "fixed_input.txt"))
	if err != nil {
		t.Fatal(err)
	}
	corpus := goSource(t)
	var report strings.Builder
	for _, c := range []struct {
		job        string
		cfg        model.Config
		steps      int
		withConfig bool
	}{
		{"sample-cnn", model.Config{Name: "cnn"}, 300, false},
		{"sample-lstm", model.Config{Name: "lstm", Vocab: 256, Ctx: 64, Layers: 2, Dim: 128, Hidden: 256}, 300, true},
		{"sample-gpt", model.Config{Name: "gpt", Vocab: 256, Ctx: 64, Layers: 4, Dim: 128, Heads: 4, TieEmbeddings: true}, 300, true},
	} {
		be := model.NewCPU(0)
		m, err := model.New(c.cfg, be, 1)
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(1, 2))
		var next func() model.Batch
		var opt model.Optimizer
		if c.cfg.Name == "cnn" {
			mdir, err := mnist.DefaultDir()
			if err != nil {
				t.Fatal(err)
			}
			train, err := mnist.LoadSet(mdir, "train")
			if err != nil {
				t.Fatal(err)
			}
			const n = 32
			idx, b := make([]int32, n), model.Batch{N: n, X: make([]float32, n*model.CNNInputSize), Targets: make([]int32, n)}
			next = func() model.Batch {
				for i := range idx {
					idx[i] = int32(r.IntN(train.N))
				}
				train.Gather(idx, b.X, b.Targets)
				return b
			}
			opt = &model.SGD{LR: 0.05, Momentum: 0.9}
		} else {
			const n = 16
			T := c.cfg.Ctx
			b := model.Batch{N: n, T: T, Tokens: make([]int32, n*T), Targets: make([]int32, n*T)}
			next = func() model.Batch {
				for s := range n {
					at := r.IntN(len(corpus) - T - 1)
					for i := range T {
						b.Tokens[s*T+i], b.Targets[s*T+i] = int32(corpus[at+i]), int32(corpus[at+i+1])
					}
				}
				return b
			}
			a := model.NewAdamW(be, len(m.Params()))
			a.LR = 3e-3
			opt = a
		}
		for range c.steps {
			b := next()
			m.ZeroGrads()
			if _, err := m.ForwardBackward(b, 1/float32(b.Terms())); err != nil {
				t.Fatal(err)
			}
			opt.Step(m.Params(), m.Grads())
		}

		st := &checkpoint.State{Step: int64(c.steps), World: 1, Seed: 1,
			Meta: map[string]string{"job": c.job, "model": c.cfg.Name, "optimizer": opt.Name()}}
		if c.withConfig {
			st.Meta["model_config"] = mustJSON(t, c.cfg)
		}
		for _, ti := range m.Tensors() {
			st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "model." + ti.Name, Shape: ti.Shape, Data: ti.Slice(m.Params())})
		}
		for _, sb := range opt.Buffers() {
			for _, ti := range m.Tensors() {
				st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "optim." + sb.Name + "." + ti.Name, Shape: ti.Shape, Data: ti.Slice(sb.Data)})
			}
		}
		url := save(t, store, c.job, st)

		stats, err := m.Evaluate(fixedBatch(c.cfg, text))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&report, "%s %s params=%d go_fixed_input_loss=%.6f\n", c.job, url, len(m.Params()), stats.Mean())
	}
	if err := os.WriteFile(filepath.Join(dir, "go_losses.txt"), []byte(report.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + report.String())
}

// fixedBatch is scripts/load_safetensors.py's fixed input.
func fixedBatch(cfg model.Config, text []byte) model.Batch {
	if cfg.Name == "cnn" {
		const n = 8
		b := model.Batch{N: n, X: make([]float32, n*model.CNNInputSize), Targets: make([]int32, n)}
		for s := range n {
			for i := range 28 {
				for j := range 28 {
					b.X[s*784+28*i+j] = float32(math.Sin(0.1*float64(s*784+28*i+j) + float64(s)))
				}
			}
			b.Targets[s] = int32(s)
		}
		return b
	}
	T := min(cfg.Ctx, 64)
	b := model.Batch{N: 2, T: T, Tokens: make([]int32, 2*T), Targets: make([]int32, 2*T)}
	for i := range 2 * T {
		b.Tokens[i], b.Targets[i] = int32(int(text[i])%cfg.Vocab), int32(int(text[i+1])%cfg.Vocab)
	}
	return b
}

// goSource is a byte corpus: the Go files of a few standard packages.
func goSource(t *testing.T) []byte {
	var out []byte
	for _, pkg := range []string{"fmt", "strings", "bytes", "sort", "strconv"} {
		files, err := filepath.Glob(filepath.Join(runtime.GOROOT(), "src", pkg, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b...)
		}
	}
	return out
}
