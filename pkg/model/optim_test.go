package model

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// adamwCase: six parameters, the first three decayed (weight decay 0.1) and
// the others not, three steps of the given gradients, lr 0.1, betas 0.9 and
// 0.999, ε 1e-8. torchAdamW holds torch.optim.AdamW's parameters after each
// step (torch 1.13, float32, two param groups), printed with full precision
// by a script equivalent to:
//
//	opt = torch.optim.AdamW([{"params": [a], "weight_decay": 0.1},
//	                         {"params": [b], "weight_decay": 0.0}], lr=0.1)
//	for g in grads: a.grad, b.grad = ...; opt.step()
var (
	adamwP0    = []float32{1, -2, 0.5, 3, -0.75, 0.125}
	adamwGrads = [][]float32{
		{0.5, 1, -0.25, 0, 3, -1e-3},
		{-0.25, 0.5, 2, 1e-3, -3, 0},
		{1.5, -0.5, 0.25, -2, 0.5, 1e-6},
	}
	torchAdamW = [][]float64{
		{0.89000004529953, -2.0799999237060547, 0.5949999690055847, 3.0, -0.8500000238418579, 0.22499899566173553},
		{0.8544663786888123, -2.1524178981781006, 0.5235173106193542, 2.9255874156951904, -0.8447368741035461, 0.292003870010376},
		{0.7788716554641724, -2.1705641746520996, 0.4601436257362366, 2.9894399642944336, -0.8481787443161011, 0.3437346816062927},
	}
	torchExpAvg   = []float64{0.1679999977350235, 0.07600000500679016, 0.1847500056028366, -0.1999099999666214, 0.02300000749528408, -8.089999755611643e-05}
	torchExpAvgSq = []float64{0.0025619377847760916, 0.0014977511018514633, 0.0041208756156265736, 0.00400000112131238, 0.018223008140921593, 9.98002236407558e-10}
)

func TestAdamWMatchesPyTorchAndHand(t *testing.T) {
	for _, be := range testBackends() {
		t.Run(be.Kernel(), func(t *testing.T) {
			p := append([]float32(nil), adamwP0...)
			opt := NewAdamW(be, len(p))
			opt.LR, opt.WeightDecay = 0.1, 0.1
			opt.NoDecay = []Range{{3, 6}}
			if err := opt.Validate(); err != nil {
				t.Fatal(err)
			}
			// The formula by hand, in float64.
			hp, hm, hv := make([]float64, len(p)), make([]float64, len(p)), make([]float64, len(p))
			for i, v := range adamwP0 {
				hp[i] = float64(v)
			}
			for step, g := range adamwGrads {
				opt.Step(p, g)
				tt := float64(step + 1)
				for i := range hp {
					wd := 0.1
					if i >= 3 {
						wd = 0
					}
					gi := float64(g[i])
					hp[i] *= 1 - 0.1*wd
					hm[i] = 0.9*hm[i] + 0.1*gi
					hv[i] = 0.999*hv[i] + 0.001*gi*gi
					denom := math.Sqrt(hv[i])/math.Sqrt(1-math.Pow(0.999, tt)) + 1e-8
					hp[i] -= 0.1 / (1 - math.Pow(0.9, tt)) * hm[i] / denom
				}
				for i := range p {
					if d := math.Abs(float64(p[i]) - torchAdamW[step][i]); d > 1e-6*math.Abs(torchAdamW[step][i]) {
						t.Errorf("step %d: p[%d] = %.9g, PyTorch %.9g", step+1, i, p[i], torchAdamW[step][i])
					}
					if d := math.Abs(float64(p[i]) - hp[i]); d > 1e-6*math.Abs(hp[i]) {
						t.Errorf("step %d: p[%d] = %.9g, by hand %.9g", step+1, i, p[i], hp[i])
					}
				}
			}
			bufs := opt.Buffers()
			for i := range p {
				if d := math.Abs(float64(bufs[0].Data[i]) - torchExpAvg[i]); d > 1e-6*math.Abs(torchExpAvg[i]) {
					t.Errorf("exp_avg[%d] = %.9g, PyTorch %.9g", i, bufs[0].Data[i], torchExpAvg[i])
				}
				if d := math.Abs(float64(bufs[1].Data[i]) - torchExpAvgSq[i]); d > 1e-6*math.Abs(torchExpAvgSq[i]) {
					t.Errorf("exp_avg_sq[%d] = %.9g, PyTorch %.9g", i, bufs[1].Data[i], torchExpAvgSq[i])
				}
			}
			if opt.Steps() != 3 || bufs[0].Name != "exp_avg" || bufs[1].Name != "exp_avg_sq" {
				t.Errorf("steps %d, buffers %s, %s", opt.Steps(), bufs[0].Name, bufs[1].Name)
			}
		})
	}
}

// TestAdamWRestore checks that Buffers and Restore round-trip: an optimizer
// restored from another's state continues bit for bit.
func TestAdamWRestore(t *testing.T) {
	be := NewCPU(2)
	r := newRand(1)
	const n = 40000 // more than one chunk of the kernel
	p := uniform32(r, n, -1, 1)
	a := NewAdamW(be, n)
	a.NoDecay = []Range{{100, 200}, {39000, 40000}}
	g1, g2 := uniform32(r, n, -1, 1), uniform32(r, n, -1, 1)
	a.Step(p, g1)
	saved := map[string][]float32{}
	for _, b := range a.Buffers() {
		saved[b.Name] = append([]float32(nil), b.Data...)
	}
	pa := append([]float32(nil), p...)
	a.Step(pa, g2)

	b := NewAdamW(NewCPU(1), n)
	b.NoDecay = a.NoDecay
	if err := b.Restore(a.Steps()-1, saved); err != nil {
		t.Fatal(err)
	}
	pb := append([]float32(nil), p...)
	b.Step(pb, g2)
	equalBits(t, "parameters after a restored step", pb, pa)
	equalBits(t, "exp_avg_sq after a restored step", b.Buffers()[1].Data, a.Buffers()[1].Data)

	if err := b.Restore(1, map[string][]float32{"momentum": saved["exp_avg"]}); err == nil {
		t.Error("Restore accepted an SGD buffer")
	}
	if err := b.Restore(1, map[string][]float32{"exp_avg": saved["exp_avg"][:5]}); err == nil {
		t.Error("Restore accepted a short buffer")
	}
	if err := b.Restore(2, nil); err != nil || b.Steps() != 2 || b.Buffers()[0].Data[7] != 0 {
		t.Errorf("Restore with no buffers: %v, steps %d, exp_avg[7] %v; want zeroed state", err, b.Steps(), b.Buffers()[0].Data[7])
	}
}

func TestAdamWValidate(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*AdamW)
		want string
	}{
		{func(o *AdamW) { o.LR = -1 }, "learning rate"},
		{func(o *AdamW) { o.Beta1 = 1 }, "beta1"},
		{func(o *AdamW) { o.Beta2 = math.NaN() }, "beta2"},
		{func(o *AdamW) { o.Eps = -1 }, "epsilon"},
		{func(o *AdamW) { o.WeightDecay = -0.1 }, "weight decay"},
		{func(o *AdamW) { o.NoDecay = []Range{{5, 8}, {2, 3}} }, "sorted"},
		{func(o *AdamW) { o.NoDecay = []Range{{5, 11}} }, "within"},
	} {
		o := NewAdamW(NewCPU(1), 10)
		tc.mod(o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want one mentioning %q", err, tc.want)
		}
	}
	if err := NewAdamW(NewCPU(1), 10).Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

// TestSGDOptimizerInterface checks SGD's Buffers and Restore against its
// State and SetState.
func TestSGDOptimizerInterface(t *testing.T) {
	o := &SGD{LR: 0.5, Momentum: 0.9}
	if b := o.Buffers(); len(b) != 1 || b[0].Name != "momentum" || b[0].Data != nil {
		t.Fatalf("buffers before a step: %+v", b)
	}
	p := []float32{1, 2}
	o.Step(p, []float32{0.5, 0.25})
	o.SetLR(0.25)
	if o.LR != 0.25 {
		t.Errorf("SetLR: LR %v", o.LR)
	}
	q := &SGD{LR: 0.25, Momentum: 0.9}
	if err := q.Restore(o.Steps(), map[string][]float32{"momentum": o.Buffers()[0].Data}); err != nil {
		t.Fatal(err)
	}
	p2 := append([]float32(nil), p...)
	o.Step(p, []float32{1, 1})
	q.Step(p2, []float32{1, 1})
	equalBits(t, "SGD restored through the Optimizer interface", p2, p)
	if err := q.Restore(1, map[string][]float32{"exp_avg": {1, 2}}); err == nil {
		t.Error("SGD accepted an AdamW buffer")
	}
}

func TestNoDecayRanges(t *testing.T) {
	cfg := Config{Name: "gpt", Vocab: 10, Ctx: 4, Layers: 1, Dim: 8, Heads: 2}
	m, err := New(cfg, NewCPU(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	rs := NoDecayRanges(m.Tensors())
	inRange := func(i int) bool {
		for _, r := range rs {
			if i >= r.Lo && i < r.Hi {
				return true
			}
		}
		return false
	}
	for _, tn := range m.Tensors() {
		want := len(tn.Shape) < 2 // biases and layer norms
		for _, i := range []int{tn.Offset, tn.Offset + tn.Size() - 1} {
			if inRange(i) != want {
				t.Errorf("%s (shape %v): element %d in a no-decay range: %v, want %v", tn.Name, tn.Shape, i, inRange(i), want)
			}
		}
	}
	for i := 1; i < len(rs); i++ {
		if rs[i].Lo <= rs[i-1].Hi {
			t.Errorf("ranges %v and %v are not merged or not sorted", rs[i-1], rs[i])
		}
	}
}

// TestClipGradNorm checks torch.nn.utils.clip_grad_norm_'s semantics:
// clip_grad_norm_([g], 6.5) on (3, 4, 0, 12) returns 13 and leaves g =
// (1.4999999, 1.9999999, 0, 5.9999995) (values from torch 1.13).
func TestClipGradNorm(t *testing.T) {
	be := NewCPU(2)
	g := []float32{3, 4, 0, 12}
	if n := ClipGradNorm(be, g, 6.5); n != 13 {
		t.Errorf("norm %v, want 13", n)
	}
	for i, want := range []float64{1.4999998807907104, 1.9999998807907104, 0, 5.999999523162842} {
		if math.Abs(float64(g[i])-want) > 1e-7*want {
			t.Errorf("clipped g[%d] = %.9g, PyTorch %.9g", i, g[i], want)
		}
	}
	g = []float32{3, 4}
	if n := ClipGradNorm(be, g, 10); n != 5 || g[0] != 3 || g[1] != 4 {
		t.Errorf("below the bound: norm %v, g %v; want 5 and g unchanged", n, g)
	}
	g = []float32{float32(math.NaN()), 1}
	if n := ClipGradNorm(be, g, 1); !math.IsNaN(n) || g[1] != 1 {
		t.Errorf("NaN gradient: norm %v, g %v; want NaN and no scaling", n, g)
	}
	// A long buffer: the norm is the float64 sum in a fixed order, the
	// same for any number of workers.
	r := newRand(3)
	long := uniform32(r, 100003, -1, 1)
	var want float64
	for _, v := range long {
		want += float64(v) * float64(v)
	}
	for _, w := range []int{1, 2, 3} {
		got := NewCPU(w).SumSquares(long)
		if math.Abs(got-want) > 1e-12*want {
			t.Errorf("workers=%d: sum of squares %.15g, want %.15g", w, got, want)
		}
		if w > 1 && got != NewCPU(1).SumSquares(long) {
			t.Errorf("workers=%d: sum of squares differs from one worker's", w)
		}
	}
}

// TestSchedule pins the schedule the trainer used before it moved here.
func TestSchedule(t *testing.T) {
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-7 }
	constant := Schedule{Base: 0.1, Total: 100}
	if got := constant.LR(57); got != 0.1 {
		t.Errorf("constant: %v", got)
	}
	cos := Schedule{Base: 0.1, Total: 100, Cosine: true, MinRatio: 0.1}
	for _, c := range []struct {
		step int64
		want float64
	}{{0, 0.1}, {99, 0.01}, {200, 0.01}, {49, 0.01 + 0.09*0.5*(1+math.Cos(math.Pi*49/99))}} {
		if got := cos.LR(c.step); !near(got, c.want) {
			t.Errorf("cosine step %d: %v, want %v", c.step, got, c.want)
		}
	}
	warm := Schedule{Base: 0.1, Warmup: 10, Total: 100, Cosine: true}
	for _, c := range []struct {
		step int64
		want float64
	}{{0, 0.01}, {9, 0.1}, {10, 0.1}, {99, 0}} {
		if got := warm.LR(c.step); !near(got, c.want) {
			t.Errorf("warmup step %d: %v, want %v", c.step, got, c.want)
		}
	}
	for _, bad := range []Schedule{{Base: -1}, {Base: 1, Warmup: -1}, {Base: 1, MinRatio: 2}, {Base: 1, Cosine: true}} {
		if bad.Validate() == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

// TestGradBuckets checks that buckets tile the buffer on tensor boundaries,
// in backward order, each reaching the target unless it is the last.
func TestGradBuckets(t *testing.T) {
	m := NewCNN(NewCPU(1), 1)
	tensors := m.Tensors()
	bounds := map[int]bool{len(m.Params()): true}
	for _, tn := range tensors {
		bounds[tn.Offset] = true
	}
	for _, target := range []int{1, 1000, 50000, 1 << 30} {
		t.Run(fmt.Sprint(target), func(t *testing.T) {
			bs := GradBuckets(tensors, target)
			next := len(m.Params())
			for i, b := range bs {
				if b.Hi != next || !bounds[b.Lo] || b.Lo >= b.Hi {
					t.Fatalf("bucket %d = %v; want one ending at %d, starting on a tensor boundary", i, b, next)
				}
				if b.Hi-b.Lo < target && i != len(bs)-1 {
					t.Errorf("bucket %d = %v is smaller than %d and not the last", i, b, target)
				}
				next = b.Lo
			}
			if next != 0 {
				t.Errorf("buckets stop at %d, want 0", next)
			}
		})
	}
}
