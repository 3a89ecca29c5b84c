package model

import (
	"errors"
	"fmt"
	"math"
)

// Optimizer updates a model's flat parameters from its flat gradients. Its
// state lives in flat buffers of the parameters' length and layout, so a
// checkpoint can store them tensor by tensor with the model's Tensors.
type Optimizer interface {
	// Name is "sgd" or "adamw".
	Name() string
	// Validate reports hyperparameters PyTorch would refuse.
	Validate() error
	// SetLR sets the learning rate for the next steps (a schedule calls it
	// before every step).
	SetLR(lr float64)
	// Step applies one update to params from grads.
	Step(params, grads []float32)
	// Steps is the number of steps taken (or restored).
	Steps() int64
	// Buffers returns the state buffers, named as in PyTorch's optimizer
	// state ("momentum_buffer" is called "momentum" here). Data is the
	// optimizer's own storage, nil where a buffer does not exist yet.
	Buffers() []StateBuffer
	// Restore sets the step count and copies the named buffers in; a buffer
	// left out means its initial state.
	Restore(steps int64, bufs map[string][]float32) error
}

// StateBuffer is one of an optimizer's per-parameter state buffers.
type StateBuffer struct {
	Name string
	Data []float32
}

// Range is the half-open range [Lo, Hi) of a flat buffer.
type Range struct{ Lo, Hi int }

var (
	_ Optimizer = (*SGD)(nil)
	_ Optimizer = (*AdamW)(nil)
)

// AdamW is Adam with decoupled weight decay, with the semantics of PyTorch's
// torch.optim.AdamW (amsgrad off). On step t, per element, with λ the weight
// decay where it applies (see NoDecay) and 0 elsewhere:
//
//	p = p·(1 − LR·λ)
//	m = β₁·m + (1 − β₁)·g
//	v = β₂·v + (1 − β₂)·g²
//	p = p − LR/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
//
// The hyperparameters are float64, as PyTorch's are Python floats; the
// per-step scalars are computed in float64 and rounded once to float32, and
// the elementwise arithmetic runs in float32 in the backend (Backend.AdamW).
// The state is Steps and the buffers "exp_avg" (m) and "exp_avg_sq" (v).
type AdamW struct {
	LR, Beta1, Beta2, Eps, WeightDecay float64
	// NoDecay lists the ranges of the flat buffer that get no weight decay
	// (nanoGPT exempts biases and layer norms: NoDecayRanges).
	NoDecay []Range

	be    Backend
	m, v  []float32
	steps int64
}

// NewAdamW returns AdamW for n parameters with PyTorch's defaults (LR 1e-3,
// betas 0.9 and 0.999, ε 1e-8, weight decay 0.01) and zeroed moments
// allocated from be.
func NewAdamW(be Backend, n int) *AdamW {
	return &AdamW{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, be: be, m: be.Alloc(n), v: be.Alloc(n)}
}

// Name returns "adamw".
func (o *AdamW) Name() string { return "adamw" }

// Validate implements Optimizer.
func (o *AdamW) Validate() error {
	switch {
	case !(o.LR >= 0):
		return fmt.Errorf("model: adamw: invalid learning rate %g", o.LR)
	case !(o.Beta1 >= 0 && o.Beta1 < 1):
		return fmt.Errorf("model: adamw: beta1 %g outside [0, 1)", o.Beta1)
	case !(o.Beta2 >= 0 && o.Beta2 < 1):
		return fmt.Errorf("model: adamw: beta2 %g outside [0, 1)", o.Beta2)
	case !(o.Eps >= 0):
		return fmt.Errorf("model: adamw: invalid epsilon %g", o.Eps)
	case !(o.WeightDecay >= 0):
		return fmt.Errorf("model: adamw: invalid weight decay %g", o.WeightDecay)
	}
	prev := 0
	for _, r := range o.NoDecay {
		if r.Lo < prev || r.Hi < r.Lo || r.Hi > len(o.m) {
			return fmt.Errorf("model: adamw: no-decay ranges must be sorted, disjoint and within the %d parameters; %v is not", len(o.m), r)
		}
		prev = r.Hi
	}
	return nil
}

// SetLR implements Optimizer.
func (o *AdamW) SetLR(lr float64) { o.LR = lr }

// Step implements Optimizer.
func (o *AdamW) Step(params, grads []float32) {
	if len(params) != len(o.m) || len(grads) != len(o.m) {
		panic(fmt.Sprintf("model: adamw: %d parameters and %d gradients for state of %d", len(params), len(grads), len(o.m)))
	}
	o.steps++
	t := float64(o.steps)
	bc1 := 1 - math.Pow(o.Beta1, t)
	bc2 := 1 - math.Pow(o.Beta2, t)
	h := AdamWStep{
		Beta1: float32(o.Beta1), OneMinusBeta1: float32(1 - o.Beta1),
		Beta2: float32(o.Beta2), OneMinusBeta2: float32(1 - o.Beta2),
		StepSize: float32(o.LR / bc1), BiasCorrection2Sqrt: float32(math.Sqrt(bc2)), Eps: float32(o.Eps),
	}
	decayed, plain := h, h
	decayed.DecayFactor = float32(1 - o.LR*o.WeightDecay)
	plain.DecayFactor = 1
	lo := 0
	update := func(hi int, s AdamWStep) {
		if hi > lo {
			o.be.AdamW(params[lo:hi], grads[lo:hi], o.m[lo:hi], o.v[lo:hi], s)
		}
		lo = hi
	}
	for _, r := range o.NoDecay {
		update(r.Lo, decayed)
		update(r.Hi, plain)
	}
	update(len(params), decayed)
}

// Steps implements Optimizer.
func (o *AdamW) Steps() int64 { return o.steps }

// Buffers implements Optimizer: "exp_avg" and "exp_avg_sq".
func (o *AdamW) Buffers() []StateBuffer {
	return []StateBuffer{{Name: "exp_avg", Data: o.m}, {Name: "exp_avg_sq", Data: o.v}}
}

// Restore implements Optimizer. Buffers left out are zeroed.
func (o *AdamW) Restore(steps int64, bufs map[string][]float32) error {
	if steps < 0 {
		return fmt.Errorf("model: adamw: negative step count %d", steps)
	}
	for name, b := range bufs {
		if name != "exp_avg" && name != "exp_avg_sq" {
			return fmt.Errorf("model: adamw: unknown state buffer %q", name)
		}
		if len(b) != len(o.m) {
			return fmt.Errorf("model: adamw: state buffer %s has %d values for %d parameters", name, len(b), len(o.m))
		}
	}
	o.steps = steps
	for _, s := range o.Buffers() {
		if b, ok := bufs[s.Name]; ok {
			copy(s.Data, b)
		} else {
			clear(s.Data)
		}
	}
	return nil
}

// NoDecayRanges returns the ranges of the tensors with fewer than two
// dimensions (biases, layer-norm weights), merged where adjacent: nanoGPT's
// rule for which parameters AdamW does not decay.
func NoDecayRanges(tensors []TensorInfo) []Range {
	var rs []Range
	for _, t := range tensors {
		if len(t.Shape) >= 2 {
			continue
		}
		lo, hi := t.Offset, t.Offset+t.Size()
		if n := len(rs); n > 0 && rs[n-1].Hi == lo {
			rs[n-1].Hi = hi
			continue
		}
		rs = append(rs, Range{lo, hi})
	}
	return rs
}

// ClipGradNorm scales grads so that their global L2 norm is at most maxNorm,
// as torch.nn.utils.clip_grad_norm_ does (coefficient maxNorm/(norm + 1e-6),
// applied when below 1), and returns the norm before clipping. Call it on the
// all-reduced gradient, so every rank computes the same norm and the same
// scale. The sum of squares runs in float64 in a fixed order (PyTorch takes
// the norm of per-tensor norms in float32; the two agree to float32
// rounding). A non-finite norm is returned without scaling: the caller
// decides what a NaN means.
func ClipGradNorm(be Backend, grads []float32, maxNorm float64) float64 {
	norm := math.Sqrt(be.SumSquares(grads))
	if coef := maxNorm / (norm + 1e-6); maxNorm > 0 && coef < 1 {
		be.Scale(grads, float32(coef))
	}
	return norm
}

// Schedule is a learning-rate schedule: a linear warmup over Warmup steps to
// Base, then Base constant or, with Cosine, a cosine decay to Base·MinRatio
// at step Total−1.
type Schedule struct {
	Base     float64
	Warmup   int64
	Total    int64
	Cosine   bool
	MinRatio float64
}

// Validate reports a schedule that cannot be followed.
func (s Schedule) Validate() error {
	switch {
	case !(s.Base >= 0):
		return fmt.Errorf("model: schedule: invalid base rate %g", s.Base)
	case s.Warmup < 0:
		return fmt.Errorf("model: schedule: negative warmup %d", s.Warmup)
	case !(s.MinRatio >= 0 && s.MinRatio <= 1):
		return fmt.Errorf("model: schedule: min ratio %g outside [0, 1]", s.MinRatio)
	case s.Cosine && s.Total <= 0:
		return errors.New("model: schedule: a cosine decay needs the total step count")
	}
	return nil
}

// LR is the rate for the step after step (0-based) steps: Base·(step+1)/Warmup
// during the warmup; then Base, or with Cosine
// Base·(MinRatio + (1 − MinRatio)·½(1 + cos(π·min(1, (step−Warmup)/(Total−1−Warmup))))).
func (s Schedule) LR(step int64) float64 {
	base := s.Base
	if w := s.Warmup; w > 0 && step < w {
		return base * float64(step+1) / float64(w)
	}
	if !s.Cosine || s.Total <= 1 {
		return base
	}
	frac := float64(step-s.Warmup) / float64(max(s.Total-1-s.Warmup, 1))
	minLR := base * s.MinRatio
	return minLR + (base-minLR)*0.5*(1+math.Cos(math.Pi*min(frac, 1)))
}

// GradBuckets cuts a model's flat gradient into buckets for an overlapped
// all-reduce: contiguous ranges on tensor boundaries of at least
// targetElems elements each (the last may be smaller, a single larger
// tensor is a bucket of its own), listed in the order the backward pass
// finishes them, which is from the end of the buffer towards its start.
// Each bucket is a union of ranges the gradient-ready hook reports.
func GradBuckets(tensors []TensorInfo, targetElems int) []Range {
	var out []Range
	hi := -1
	lo := 0
	for i := len(tensors) - 1; i >= 0; i-- {
		t := tensors[i]
		if hi < 0 {
			hi = t.Offset + t.Size()
		}
		lo = t.Offset
		if hi-lo >= targetElems {
			out = append(out, Range{lo, hi})
			hi = -1
		}
	}
	if hi >= 0 {
		out = append(out, Range{lo, hi})
	}
	return out
}
