package model

import (
	"fmt"
	"testing"
)

// TestSGDTwoSteps checks two steps against values computed by hand (and
// confirmed with torch.optim.SGD). Every number is a short binary fraction,
// so float32 holds each intermediate exactly and the comparison is exact.
//
// lr 0.5, weight decay 0.25, p₀ = (1, −2), grads (0.5, 1) then (−0.25, 0.5).
//
//	momentum 0:    g₁ = (0.75, 0.5)            p₁ = (0.625, −2.25)
//	               g₂ = (−0.09375, −0.0625)    p₂ = (0.671875, −2.21875)
//	momentum 0.5:  v₁ = g₁ = (0.75, 0.5)       p₁ = (0.625, −2.25)
//	               g₂ = (−0.09375, −0.0625)    v₂ = 0.5·v₁ + g₂ = (0.28125, 0.1875)
//	               p₂ = p₁ − 0.5·v₂ = (0.484375, −2.34375)
//	Nesterov:      v₁ = (0.75, 0.5)            p₁ = p₀ − 0.5·(g₁ + 0.5·v₁) = (0.4375, −2.375)
//	               g₂ = (−0.140625, −0.09375)  v₂ = (0.234375, 0.15625)
//	               p₂ = p₁ − 0.5·(g₂ + 0.5·v₂) = (0.44921875, −2.3671875)
func TestSGDTwoSteps(t *testing.T) {
	grads := [][]float32{{0.5, 1}, {-0.25, 0.5}}
	for _, tc := range []struct {
		name   string
		opt    SGD
		p1, p2 []float32
		v1, v2 []float32 // momentum buffer after each step; nil when there is none
	}{
		{"plain", SGD{LR: 0.5, WeightDecay: 0.25},
			[]float32{0.625, -2.25}, []float32{0.671875, -2.21875}, nil, nil},
		{"momentum", SGD{LR: 0.5, Momentum: 0.5, WeightDecay: 0.25},
			[]float32{0.625, -2.25}, []float32{0.484375, -2.34375}, []float32{0.75, 0.5}, []float32{0.28125, 0.1875}},
		{"nesterov", SGD{LR: 0.5, Momentum: 0.5, WeightDecay: 0.25, Nesterov: true},
			[]float32{0.4375, -2.375}, []float32{0.44921875, -2.3671875}, []float32{0.75, 0.5}, []float32{0.234375, 0.15625}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opt := tc.opt
			if err := opt.Validate(); err != nil {
				t.Fatal(err)
			}
			if opt.State() != nil || opt.Steps() != 0 {
				t.Fatalf("fresh optimizer: state %v, steps %d; want nil, 0", opt.State(), opt.Steps())
			}
			p := []float32{1, -2}
			for step, want := range [][2][]float32{{tc.p1, tc.v1}, {tc.p2, tc.v2}} {
				opt.Step(p, grads[step])
				if fmt.Sprint(p) != fmt.Sprint(want[0]) {
					t.Errorf("step %d: params %v, want %v", step+1, p, want[0])
				}
				if fmt.Sprint(opt.State()) != fmt.Sprint(want[1]) || (want[1] == nil) != (opt.State() == nil) {
					t.Errorf("step %d: momentum buffer %v, want %v", step+1, opt.State(), want[1])
				}
				if opt.Steps() != int64(step+1) {
					t.Errorf("step %d: Steps() = %d", step+1, opt.Steps())
				}
			}
		})
	}
}

// TestSGDResume checks that Steps and State carry everything: an optimizer
// restored from them continues bit-identically to one that never stopped.
func TestSGDResume(t *testing.T) {
	r := newRand(20)
	p0 := uniform32(r, 1000, -1, 1)
	grads := [][]float32{uniform32(r, 1000, -1, 1), uniform32(r, 1000, -1, 1), uniform32(r, 1000, -1, 1)}
	for _, nesterov := range []bool{false, true} {
		hyper := SGD{LR: 0.1, Momentum: 0.9, WeightDecay: 5e-4, Nesterov: nesterov}

		straight, pa := hyper, append([]float32(nil), p0...)
		for _, g := range grads {
			straight.Step(pa, g)
		}

		first, pb := hyper, append([]float32(nil), p0...)
		first.Step(pb, grads[0])
		first.Step(pb, grads[1])
		steps, state := first.Steps(), append([]float32(nil), first.State()...) // as a checkpoint would

		resumed := hyper
		if err := resumed.SetState(steps, state); err != nil {
			t.Fatal(err)
		}
		state[0] = 99 // SetState must have copied
		resumed.Step(pb, grads[2])
		equalBits(t, fmt.Sprintf("nesterov=%v: params after resuming", nesterov), pb, pa)
		equalBits(t, fmt.Sprintf("nesterov=%v: momentum after resuming", nesterov), resumed.State(), straight.State())
		if resumed.Steps() != 3 {
			t.Errorf("Steps() = %d after resuming at 2 and stepping once", resumed.Steps())
		}
	}

	// Restoring an empty buffer means the next step starts it from the
	// gradient, as PyTorch does with no momentum_buffer.
	var opt SGD
	opt.Momentum, opt.LR = 0.9, 1
	if err := opt.SetState(5, nil); err != nil {
		t.Fatal(err)
	}
	p := []float32{0}
	opt.Step(p, []float32{2})
	if p[0] != -2 || opt.State()[0] != 2 {
		t.Errorf("first step after restoring an empty buffer: p %v, v %v; want -2, 2", p[0], opt.State()[0])
	}
	if err := opt.SetState(-1, nil); err == nil {
		t.Error("SetState(-1): no error")
	}
}

func TestSGDValidate(t *testing.T) {
	for _, tc := range []struct {
		opt SGD
		ok  bool
	}{
		{SGD{LR: 0.1}, true},
		{SGD{LR: 0.1, Momentum: 0.9, Nesterov: true}, true},
		{SGD{LR: -1}, false},
		{SGD{LR: 0.1, Momentum: -0.5}, false},
		{SGD{LR: 0.1, WeightDecay: -1}, false},
		{SGD{LR: 0.1, Nesterov: true}, false},
	} {
		if err := tc.opt.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: Validate() = %v, want ok=%v", tc.opt, err, tc.ok)
		}
	}
	mustPanic(t, "Step with mismatched lengths", func() {
		opt := SGD{LR: 1}
		opt.Step(make([]float32, 3), make([]float32, 2))
	})
}

func TestSGDAllocatesNothing(t *testing.T) {
	opt := SGD{LR: 0.1, Momentum: 0.9, WeightDecay: 1e-4, Nesterov: true}
	p, g := make([]float32, 4096), make([]float32, 4096)
	opt.Step(p, g) // allocates the buffer
	if got := testing.AllocsPerRun(1, func() { opt.Step(p, g) }); got != 0 {
		t.Errorf("Step: %v allocations, want 0", got)
	}
}
