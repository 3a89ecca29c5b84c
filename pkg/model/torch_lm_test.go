package model

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// lmCase is one PyTorch reference case for a language model.
type lmCase struct {
	name string
	cfg  Config
	n, t int
	// ignoreEvery, if positive, sets every ignoreEvery-th target to −1.
	ignoreEvery int
}

// lmCases are small configurations that still exercise every path: several
// layers, heads wider than one, a sequence shorter than the context, tied
// embeddings, ignored targets, truncated BPTT.
var lmCases = []lmCase{
	{"lstm_full", Config{Name: "lstm", Vocab: 20, Ctx: 7, Layers: 2, Dim: 8, Hidden: 12}, 3, 7, 0},
	{"lstm_tbptt", Config{Name: "lstm", Vocab: 20, Ctx: 7, Layers: 2, Dim: 8, Hidden: 12, BPTT: 3}, 3, 7, 5},
	{"gpt_untied", Config{Name: "gpt", Vocab: 24, Ctx: 8, Layers: 2, Dim: 16, Heads: 2}, 2, 8, 0},
	{"gpt_tied", Config{Name: "gpt", Vocab: 24, Ctx: 8, Layers: 2, Dim: 16, Heads: 4, Hidden: 24, TieEmbeddings: true}, 3, 6, 4},
}

// build returns the case's model, with every parameter moved off its
// initial value by U(−0.1, 0.1) so that biases and layer-norm weights are
// not the special values 0 and 1, and the batch, all from pinned streams.
func (c lmCase) build(t *testing.T, be Backend) (Model, Batch) {
	t.Helper()
	m, err := New(c.cfg, be, 1)
	if err != nil {
		t.Fatal(err)
	}
	noise := make([]float32, len(m.Params()))
	newInitSource(77).fillUniform(noise, 0.1)
	for i := range noise {
		m.Params()[i] += noise[i]
	}
	u := make([]float32, 2*c.n*c.t)
	newInitSource(78).fillUniform(u, 0.5)
	b := Batch{N: c.n, T: c.t, Tokens: make([]int32, c.n*c.t), Targets: make([]int32, c.n*c.t)}
	V := float32(c.cfg.Vocab)
	for i := range b.Tokens {
		b.Tokens[i] = min(int32((u[i]+0.5)*V), int32(V-1))
		b.Targets[i] = min(int32((u[len(b.Tokens)+i]+0.5)*V), int32(V-1))
		if c.ignoreEvery > 0 && i%c.ignoreEvery == 1 {
			b.Targets[i] = -1
		}
	}
	return m, b
}

// lmReference is testdata/torch_{lstm,gpt}_reference.json.
type lmReference struct {
	Torch string `json:"torch"`
	Cases []struct {
		Case    string          `json:"case"`
		LossSum float64         `json:"loss_sum"`
		Terms   int             `json:"terms"`
		Logits  []float64       `json:"logits"`
		Grads   map[string]grad `json:"grads"`
	} `json:"cases"`
}

type grad struct {
	Index []int     `json:"index"`
	Value []float64 `json:"value"`
	L2    float64   `json:"l2"`
	Sum   float64   `json:"sum"`
}

// TestTorchReferenceLM compares the LSTM and the GPT with the equivalent
// PyTorch modules on the same parameters and batch: loss, logits and every
// parameter's gradient, to 1e-4 of each quantity's scale. It pins what the
// gradient checks cannot: names, layouts, gate order, head split, masking,
// and that every layer means what it means in PyTorch.
func TestTorchReferenceLM(t *testing.T) {
	if *torchDump != "" {
		for _, c := range lmCases {
			m, b := c.build(t, NewCPU(0))
			writeLMCase(t, filepath.Join(*torchDump, c.name), c, m, b)
		}
		t.Skipf("wrote the inputs to %s; now run testdata/torch_lm_reference.py", *torchDump)
	}
	refs := map[string]lmReference{}
	for _, name := range []string{"lstm", "gpt"} {
		data, err := os.ReadFile(filepath.Join("testdata", "torch_"+name+"_reference.json"))
		if err != nil {
			t.Fatal(err)
		}
		var ref lmReference
		if err := json.Unmarshal(data, &ref); err != nil {
			t.Fatal(err)
		}
		refs[name] = ref
	}
	for _, c := range lmCases {
		for _, be := range testBackends() {
			t.Run(c.name+"/"+be.Kernel(), func(t *testing.T) {
				ref := refs[c.cfg.Name]
				idx := -1
				for i, rc := range ref.Cases {
					if rc.Case == c.name {
						idx = i
					}
				}
				if idx < 0 {
					t.Fatalf("no case %s in the %s reference", c.name, c.cfg.Name)
				}
				want := ref.Cases[idx]
				m, b := c.build(t, be)
				if b.Terms() != want.Terms {
					t.Fatalf("%d loss terms, PyTorch %d", b.Terms(), want.Terms)
				}
				st, err := m.ForwardBackward(b, 1/float32(b.Terms()))
				if err != nil {
					t.Fatal(err)
				}
				if st.Terms != want.Terms {
					t.Errorf("ForwardBackward counted %d terms, want %d", st.Terms, want.Terms)
				}
				if math.Abs(st.Loss-want.LossSum) > 1e-5*want.LossSum {
					t.Errorf("loss sum %.9g, PyTorch %s %.9g", st.Loss, ref.Torch, want.LossSum)
				}
				logits := lmLogits(m, c.n, c.t)
				var rms float64
				for _, v := range want.Logits {
					rms += v * v
				}
				rms = math.Sqrt(rms / float64(len(want.Logits)))
				for i, w := range want.Logits {
					if got := float64(logits[i]); math.Abs(got-w) > 1e-4*(math.Abs(w)+rms) {
						t.Errorf("logit %d: %.7g, PyTorch %.7g", i, got, w)
					}
				}
				compareGrads(t, m, want.Grads, 1e-4)
			})
		}
	}
}

// lmLogits returns the logits of the last forward in batch-major order
// ([n][t][vocab]), undoing the LSTM's time-major layout.
func lmLogits(m Model, n, t int) []float32 {
	switch m := m.(type) {
	case *GPT:
		return m.logits[:n*t*m.cfg.Vocab]
	case *LSTM:
		V := m.cfg.Vocab
		out := make([]float32, n*t*V)
		for s := 0; s < n; s++ {
			for p := 0; p < t; p++ {
				copy(out[(s*t+p)*V:(s*t+p+1)*V], m.logits[(p*n+s)*V:])
			}
		}
		return out
	}
	panic("not a language model")
}

// compareGrads checks every tensor's gradient against PyTorch's: its L2 norm
// and sum, and 16 sampled values, each to tol of the tensor's scale.
func compareGrads(t *testing.T, m Model, ref map[string]grad, tol float64) {
	t.Helper()
	tensors := m.Tensors()
	if len(ref) != len(tensors) {
		t.Errorf("PyTorch has %d parameter tensors, the model %d", len(ref), len(tensors))
	}
	for _, tn := range tensors {
		want, ok := ref[tn.Name]
		if !ok {
			t.Errorf("%s: not among PyTorch's parameters", tn.Name)
			continue
		}
		g := tn.Slice(m.Grads())
		var l2, sum float64
		for _, v := range g {
			l2 += float64(v) * float64(v)
			sum += float64(v)
		}
		l2 = math.Sqrt(l2)
		rms := want.L2 / math.Sqrt(float64(tn.Size()))
		if math.Abs(l2-want.L2) > tol*want.L2 {
			t.Errorf("%s: gradient L2 norm %.7g, PyTorch %.7g", tn.Name, l2, want.L2)
		}
		if math.Abs(sum-want.Sum) > tol*want.L2 {
			t.Errorf("%s: gradient sum %.7g, PyTorch %.7g", tn.Name, sum, want.Sum)
		}
		for j, i := range want.Index {
			if got := float64(g[i]); math.Abs(got-want.Value[j]) > tol*(math.Abs(want.Value[j])+rms) {
				t.Errorf("%s[%d]: gradient %.7g, PyTorch %.7g", tn.Name, i, got, want.Value[j])
			}
		}
	}
}

func writeLMCase(t *testing.T, dir string, c lmCase, m Model, b Batch) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	meta, err := json.Marshal(map[string]any{"name": c.name, "config": m.Config(), "n": c.n, "t": c.t})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "case.json"), meta, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]any{"params.f32": m.Params(), "tokens.i32": b.Tokens, "targets.i32": b.Targets} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := binary.Write(f, binary.LittleEndian, v); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// testBackends are the CPU backends every model test runs on: the best
// micro-kernel of this CPU and the pure-Go one (other architectures' path).
func testBackends() []*CPU {
	bes := []*CPU{NewCPU(2)}
	if bes[0].Kernel() != "go" {
		bes = append(bes, NewCPUPureGo(2))
	}
	return bes
}
