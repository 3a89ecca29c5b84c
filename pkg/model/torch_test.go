package model

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"
)

var torchDump = flag.String("torch-dump", "", "write the inputs of TestTorchReference to this directory and skip it (see testdata/torch_cnn_reference.py)")

// torchReference is testdata/torch_cnn_reference.json.
type torchReference struct {
	Torch   string    `json:"torch"`
	N       int       `json:"n"`
	LossSum float64   `json:"loss_sum"`
	Logits  []float64 `json:"logits"`
	Grads   map[string]struct {
		Index []int     `json:"index"`
		Value []float64 `json:"value"`
		L2    float64   `json:"l2"`
		Sum   float64   `json:"sum"`
	} `json:"grads"`
}

// torchCase is the reference case: the seed-1 CNN, four inputs from a pinned
// stream (the same recipe as parameter initialisation, so the inputs do not
// depend on math/rand's helpers) and fixed labels.
func torchCase() (*CNN, []float32, []int32) {
	m := NewCNN(NewCPU(0), 1)
	y := []int32{3, 7, 0, 9}
	x := make([]float32, len(y)*CNNInputSize)
	newInitSource(99).fillUniform(x, 1)
	return m, x, y
}

// TestTorchReference compares the CNN with PyTorch's on the same parameters
// and inputs: loss, logits and gradients (scale 1/n, the trainer's
// convention). It pins what the gradient checks cannot: that the tensor
// layout, the flatten order and every layer mean what they mean in PyTorch.
func TestTorchReference(t *testing.T) {
	m, x, y := torchCase()
	if *torchDump != "" {
		writeTorchInputs(t, *torchDump, m.Params(), x, y)
		t.Skipf("wrote the inputs to %s; now run testdata/torch_cnn_reference.py", *torchDump)
	}
	data, err := os.ReadFile(filepath.Join("testdata", "torch_cnn_reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref torchReference
	if err := json.Unmarshal(data, &ref); err != nil {
		t.Fatal(err)
	}
	n := len(y)
	if ref.N != n {
		t.Fatalf("reference has %d samples, want %d", ref.N, n)
	}
	loss, err := cnnFB(m, x, y, n, 1/float32(n))
	if err != nil {
		t.Fatal(err)
	}
	// Both sides compute in float32 with different summation orders (PyTorch
	// through oneDNN), so agreement is to a few float32 ulps of each
	// quantity's scale, not bit for bit.
	if math.Abs(loss-ref.LossSum) > 1e-6*ref.LossSum {
		t.Errorf("loss sum %.9g, PyTorch %s %.9g", loss, ref.Torch, ref.LossSum)
	}
	for i, want := range ref.Logits {
		if got := float64(m.fwd.logits[i]); math.Abs(got-want) > 1e-6*(1+math.Abs(want)) {
			t.Errorf("logit %d: %.7g, PyTorch %.7g", i, got, want)
		}
	}
	tensors := m.Tensors()
	if len(ref.Grads) != len(tensors) {
		t.Errorf("PyTorch has %d parameter tensors, the CNN %d", len(ref.Grads), len(tensors))
	}
	for _, tn := range tensors {
		want, ok := ref.Grads[tn.Name]
		if !ok {
			t.Errorf("%s: not among PyTorch's parameters", tn.Name)
			continue
		}
		grad := tn.Slice(m.Grads())
		var l2, sum float64
		for _, g := range grad {
			l2 += float64(g) * float64(g)
			sum += float64(g)
		}
		l2 = math.Sqrt(l2)
		rms := want.L2 / math.Sqrt(float64(tn.Size()))
		if math.Abs(l2-want.L2) > 1e-5*want.L2 {
			t.Errorf("%s: gradient L2 norm %.7g, PyTorch %.7g", tn.Name, l2, want.L2)
		}
		if math.Abs(sum-want.Sum) > 1e-5*want.L2 {
			t.Errorf("%s: gradient sum %.7g, PyTorch %.7g", tn.Name, sum, want.Sum)
		}
		for j, i := range want.Index {
			if got := float64(grad[i]); math.Abs(got-want.Value[j]) > 1e-5*(math.Abs(want.Value[j])+rms) {
				t.Errorf("%s[%d]: gradient %.7g, PyTorch %.7g", tn.Name, i, got, want.Value[j])
			}
		}
	}
}

func writeTorchInputs(t *testing.T, dir string, params, x []float32, y []int32) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]any{"params.f32": params, "x.f32": x, "y.i32": y} {
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
