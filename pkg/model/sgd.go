package model

import (
	"errors"
	"fmt"
)

// SGD is stochastic gradient descent with momentum and weight decay, with the
// semantics of PyTorch's torch.optim.SGD (dampening 0). Per element, with p
// the parameter and v the momentum buffer:
//
//	g = grad + WeightDecay·p
//	v = g                  on the first step with momentum (PyTorch's empty buffer)
//	v = Momentum·v + g     afterwards
//	p = p − LR·(g + Momentum·v)   if Nesterov
//	p = p − LR·v                  otherwise
//
// With Momentum 0 there is no buffer and p = p − LR·g.
//
// Each product is rounded to float32 before it is added (explicit conversions
// forbid the compiler to fuse a multiply-add), so every platform computes the
// same bits.
//
// The hyperparameters may change between steps (a learning-rate schedule).
// The state, for checkpoints, is Steps and State.
type SGD struct {
	LR, Momentum, WeightDecay float32
	Nesterov                  bool

	buf   []float32 // v; nil until the first step with Momentum != 0
	steps int64
}

// Validate reports hyperparameters PyTorch would refuse.
func (o *SGD) Validate() error {
	switch {
	case o.LR < 0:
		return fmt.Errorf("model: sgd: negative learning rate %g", o.LR)
	case o.Momentum < 0:
		return fmt.Errorf("model: sgd: negative momentum %g", o.Momentum)
	case o.WeightDecay < 0:
		return fmt.Errorf("model: sgd: negative weight decay %g", o.WeightDecay)
	case o.Nesterov && o.Momentum == 0:
		return errors.New("model: sgd: Nesterov momentum needs a non-zero momentum")
	}
	return nil
}

// Step applies one update to params from grads. The momentum buffer is
// allocated on the first step that needs it; later steps allocate nothing.
func (o *SGD) Step(params, grads []float32) {
	if len(grads) != len(params) {
		panic(fmt.Sprintf("model: sgd: %d gradients for %d parameters", len(grads), len(params)))
	}
	if o.buf != nil && len(o.buf) != len(params) {
		panic(fmt.Sprintf("model: sgd: momentum buffer has %d elements for %d parameters", len(o.buf), len(params)))
	}
	lr, mom, wd := o.LR, o.Momentum, o.WeightDecay
	first := o.buf == nil
	if mom != 0 && first {
		o.buf = make([]float32, len(params))
	}
	buf := o.buf
	for i, p := range params {
		g := grads[i]
		if wd != 0 {
			g += float32(wd * p)
		}
		if mom != 0 {
			v := g
			if !first {
				v = float32(mom*buf[i]) + g
			}
			buf[i] = v
			if o.Nesterov {
				g += float32(mom * v)
			} else {
				g = v
			}
		}
		params[i] = p - float32(lr*g)
	}
	o.steps++
}

// Name returns "sgd".
func (o *SGD) Name() string { return "sgd" }

// SetLR implements Optimizer.
func (o *SGD) SetLR(lr float64) { o.LR = float32(lr) }

// Buffers implements Optimizer: "momentum", nil before the first step with
// momentum.
func (o *SGD) Buffers() []StateBuffer { return []StateBuffer{{Name: "momentum", Data: o.buf}} }

// Restore implements Optimizer: SetState with the "momentum" buffer (absent:
// the empty buffer).
func (o *SGD) Restore(steps int64, bufs map[string][]float32) error {
	for name := range bufs {
		if name != "momentum" {
			return fmt.Errorf("model: sgd: unknown state buffer %q", name)
		}
	}
	return o.SetState(steps, bufs["momentum"])
}

// Steps returns the number of Steps taken, or restored by SetState.
func (o *SGD) Steps() int64 { return o.steps }

// State returns the momentum buffer, the optimizer's state besides Steps:
// nil before the first step with momentum (PyTorch's empty buffer, which the
// next step fills with the gradient), else one value per parameter. It is the
// optimizer's own storage.
func (o *SGD) State() []float32 { return o.buf }

// SetState restores what Steps and State returned. It copies momentum; a nil
// or empty momentum means the empty buffer.
func (o *SGD) SetState(steps int64, momentum []float32) error {
	if steps < 0 {
		return fmt.Errorf("model: sgd: negative step count %d", steps)
	}
	o.steps = steps
	o.buf = nil
	if len(momentum) > 0 {
		o.buf = append([]float32(nil), momentum...)
	}
	return nil
}
