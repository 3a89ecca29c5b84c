package model

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"gorgonia.org/tensor"
)

// Model is a network whose parameters and gradients each live in one flat
// float32 buffer, so that a whole gradient is one all-reduce and a whole
// checkpoint one write.
//
// A Model is not safe for concurrent use: it reuses its activation buffers.
type Model interface {
	// Name is the name New knows the model by.
	Name() string
	// Tensors lists the parameter tensors, in PyTorch naming and layout, with
	// their offsets into Params and Grads.
	Tensors() []TensorInfo
	// Params is the model's own parameter storage; callers may overwrite its
	// contents (e.g. when loading a checkpoint) but not replace it.
	Params() []float32
	// Grads is the gradient storage, with the same length and layout as
	// Params.
	Grads() []float32
	// ZeroGrads sets every gradient to zero.
	ZeroGrads()
	// ForwardBackward runs n samples, ACCUMULATES scale·∂(Σᵢ lossᵢ)/∂params
	// into Grads and returns Σᵢ lossᵢ. Callers pass scale = 1/globalBatch so
	// that data-parallel ranks each add their share and an all-reduce SUM
	// gives the mean gradient, even when ranks hold unequal counts (n may be
	// 0).
	ForwardBackward(x []float32, y []int32, n int, scale float32) (lossSum float64, err error)
	// Predict writes the argmax class of each of n samples into out.
	Predict(x []float32, n int, out []int32) error
}

// TensorInfo locates one parameter tensor in a model's flat buffers.
type TensorInfo struct {
	Name   string // PyTorch's state_dict key, e.g. "conv1.weight"
	Shape  []int  // PyTorch's shape, row-major
	Offset int    // index of the first element in Params and Grads
}

// Size is the number of elements, the product of Shape.
func (t TensorInfo) Size() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Slice returns the tensor's elements within buf, a model's Params or Grads.
func (t TensorInfo) Slice(buf []float32) []float32 {
	return buf[t.Offset : t.Offset+t.Size() : t.Offset+t.Size()]
}

// View returns a gorgonia tensor of t's shape that shares memory with buf, a
// model's Params or Grads: writes through either are seen by both.
func View(buf []float32, t TensorInfo) *tensor.Dense {
	return tensor.New(tensor.WithShape(t.Shape...), tensor.WithBacking(t.Slice(buf)))
}

// Names lists the models New knows.
func Names() []string { return []string{"cnn"} }

// New returns the named model with parameters initialised from seed.
func New(name string, be Backend, seed uint64) (Model, error) {
	if be == nil {
		return nil, fmt.Errorf("model: %s: nil backend", name)
	}
	switch name {
	case "cnn":
		return NewCNN(be, seed), nil
	}
	return nil, fmt.Errorf("model: unknown model %q (known: %s)", name, strings.Join(Names(), ", "))
}

// tensorSpec is a tensor's name and shape before offsets are assigned.
type tensorSpec struct {
	name  string
	shape []int
}

// layoutTensors packs tensors back to back in the given order and returns the
// table and the total number of elements.
func layoutTensors(specs ...tensorSpec) ([]TensorInfo, int) {
	table := make([]TensorInfo, len(specs))
	off := 0
	for i, s := range specs {
		table[i] = TensorInfo{Name: s.name, Shape: slices.Clone(s.shape), Offset: off}
		off += table[i].Size()
	}
	return table, off
}

// cloneTable returns a copy of table that callers cannot use to change it.
func cloneTable(table []TensorInfo) []TensorInfo {
	out := make([]TensorInfo, len(table))
	for i, t := range table {
		out[i] = TensorInfo{Name: t.Name, Shape: slices.Clone(t.Shape), Offset: t.Offset}
	}
	return out
}

// initSource is the parameter-initialisation stream: math/rand/v2's PCG
// (PCG-DXSM, whose output sequence is fixed by its specification) seeded with
// (seed, initStream). Uniforms are drawn by uniform below rather than
// rand.Rand.Float64 so that the values, not only the bits, are pinned
// independently of the Go release.
type initSource struct{ pcg *rand.PCG }

const initStream = 0x72696e676d6f64 // "ringmod": distinguishes this stream from other uses of a seed

func newInitSource(seed uint64) initSource { return initSource{rand.NewPCG(seed, initStream)} }

// uniform returns a float64 in [0, 1) from the top 53 bits of one Uint64.
func (s initSource) uniform() float64 { return float64(s.pcg.Uint64()>>11) * 0x1p-53 }

// fillUniform fills dst, in order, with U(−bound, bound) as
// float32(bound·(2u − 1)), one draw per element.
func (s initSource) fillUniform(dst []float32, bound float64) {
	for i := range dst {
		dst[i] = float32(bound * (2*s.uniform() - 1))
	}
}
