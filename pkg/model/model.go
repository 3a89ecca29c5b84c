package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

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
	// Config returns the configuration the model was built from, with
	// defaults filled in.
	Config() Config
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
	// ForwardBackward runs the batch, ADDS scale·∂(Σ losses)/∂params into
	// Grads and returns the loss sum, the number of loss terms (images, or
	// target tokens other than −1) and how many of them the model predicts
	// correctly. Callers pass scale = 1/(loss terms over all ranks and
	// micro-batches of the step), so that an all-reduce SUM gives the mean
	// gradient whatever the split (a batch may be empty).
	//
	// If a hook is set (SetGradReadyHook), it is called during the backward
	// pass as ranges of Grads become final.
	ForwardBackward(b Batch, scale float32) (Stats, error)
	// Evaluate runs the batch forward only and returns the same statistics;
	// Grads are untouched.
	Evaluate(b Batch) (Stats, error)
	// SetGradReadyHook sets the function ForwardBackward calls, on its own
	// goroutine, each time a range Grads()[lo:hi] is final for the call:
	// ranges come in backward order (from the end of the buffer towards its
	// start, see Tensors), on tensor boundaries, and cover the whole buffer
	// exactly once per call. nil (the default) disables it. The hook must
	// not write to Grads and must return quickly; what it starts on a range
	// (an all-reduce) may run on while the backward pass goes on below lo.
	// With gradient accumulation, set it for the last micro-batch only.
	SetGradReadyHook(hook func(lo, hi int))
}

// Batch is one batch, or micro-batch, of samples. Which fields a model reads
// depends on its family: the CNN reads X and Targets, the language models
// Tokens and Targets.
type Batch struct {
	// N is the number of samples: images, or sequences of T tokens.
	N int
	// T is the sequence length for the language models, 1 ≤ T ≤ Config.Ctx;
	// 0 means Config.Ctx. Unused by the CNN.
	T int
	// X holds the CNN's N images, [N][1][28][28], already normalised.
	X []float32
	// Tokens holds the language models' inputs, [N][T] token ids in
	// [0, Vocab).
	Tokens []int32
	// Targets holds what the loss compares against: one class per image
	// (CNN), or the next token at each position, [N][T] (language models),
	// where −1 means no loss term there.
	Targets []int32
}

// Terms is the number of loss terms in b: the targets other than −1. A
// trainer sums it over ranks and micro-batches to get the scale.
func (b Batch) Terms() int {
	n := 0
	for _, y := range b.Targets {
		if y >= 0 {
			n++
		}
	}
	return n
}

// Stats are the loss statistics of one call. They add up across calls, ranks
// and micro-batches.
type Stats struct {
	// Loss is the sum of the per-term cross-entropy losses, in nats.
	Loss float64
	// Terms is the number of loss terms (images, or target tokens).
	Terms int
	// Correct is how many terms the model's top prediction gets right.
	Correct int
}

// Add returns the sum of s and o.
func (s Stats) Add(o Stats) Stats {
	return Stats{Loss: s.Loss + o.Loss, Terms: s.Terms + o.Terms, Correct: s.Correct + o.Correct}
}

// Mean is the mean loss per term (0 without terms).
func (s Stats) Mean() float64 {
	if s.Terms == 0 {
		return 0
	}
	return s.Loss / float64(s.Terms)
}

// Perplexity is e^Mean, the language models' usual measure.
func (s Stats) Perplexity() float64 { return math.Exp(s.Mean()) }

// Accuracy is Correct/Terms (0 without terms).
func (s Stats) Accuracy() float64 {
	if s.Terms == 0 {
		return 0
	}
	return float64(s.Correct) / float64(s.Terms)
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

// Slice returns the tensor's elements within buf, a model's Params or Grads
// (or an optimizer state buffer of the same layout).
func (t TensorInfo) Slice(buf []float32) []float32 {
	return buf[t.Offset : t.Offset+t.Size() : t.Offset+t.Size()]
}

// View returns a gorgonia tensor of t's shape that shares memory with buf, a
// model's Params or Grads: writes through either are seen by both.
func View(buf []float32, t TensorInfo) *tensor.Dense {
	return tensor.New(tensor.WithShape(t.Shape...), tensor.WithBacking(t.Slice(buf)))
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

// flatModel is what every model shares: the tensor table, the flat buffers
// and the gradient-ready hook.
type flatModel struct {
	be      Backend
	tensors []TensorInfo
	params  []float32
	grads   []float32
	index   map[string]int // tensor name → position in tensors
	ready   gradReady
}

func newFlatModel(be Backend, specs ...tensorSpec) flatModel {
	table, size := layoutTensors(specs...)
	f := flatModel{be: be, tensors: table, params: be.Alloc(size), grads: be.Alloc(size), index: map[string]int{}}
	for i, t := range table {
		f.index[t.Name] = i
	}
	return f
}

// Tensors implements Model. It returns a copy.
func (f *flatModel) Tensors() []TensorInfo { return cloneTable(f.tensors) }

// Params implements Model.
func (f *flatModel) Params() []float32 { return f.params }

// Grads implements Model.
func (f *flatModel) Grads() []float32 { return f.grads }

// ZeroGrads implements Model.
func (f *flatModel) ZeroGrads() { clear(f.grads) }

// SetGradReadyHook implements Model.
func (f *flatModel) SetGradReadyHook(hook func(lo, hi int)) { f.ready.hook = hook }

// tensor returns the named tensor's table entry; names are the model's own,
// so a miss is a programming error.
func (f *flatModel) tensor(name string) TensorInfo {
	i, ok := f.index[name]
	if !ok {
		panic("model: no tensor " + name)
	}
	return f.tensors[i]
}

// p and g return the named tensor's parameters and gradients.
func (f *flatModel) p(name string) []float32 { return f.tensor(name).Slice(f.params) }
func (f *flatModel) g(name string) []float32 { return f.tensor(name).Slice(f.grads) }

// gradReady reports final ranges of the gradient buffer to the hook. The
// backward pass calls final(name) after the last write to each tensor's
// gradient, in backward order; since tensors are laid out in forward order,
// every call finalises the range from that tensor's offset up to the last
// one reported, which keeps ranges contiguous, on tensor boundaries and
// without overlap. finish reports whatever is left (tensors a call did not
// touch, e.g. with an empty batch).
type gradReady struct {
	hook  func(lo, hi int)
	armed bool
	next  int // [next, len(grads)) has been reported
}

func (r *gradReady) start(size int) {
	r.armed = r.hook != nil
	r.next = size
}

func (r *gradReady) final(lo int) {
	if !r.armed || lo >= r.next {
		return
	}
	r.hook(lo, r.next)
	r.next = lo
}

func (r *gradReady) finish() {
	r.final(0)
	r.armed = false
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

// fillNormal fills dst, in order, with N(0, std²) by the Box–Muller
// transform, two draws per element: u₁ ∈ (0, 1] and u₂ give
// std·√(−2 ln u₁)·cos(2π u₂). (The sine half is not used, so that every
// element costs the same two draws.)
func (s initSource) fillNormal(dst []float32, std float64) {
	for i := range dst {
		u1 := 1 - s.uniform()
		u2 := s.uniform()
		dst[i] = float32(std * math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2))
	}
}

// fill sets every element of dst to v.
func fill(dst []float32, v float32) {
	for i := range dst {
		dst[i] = v
	}
}

// grow returns buf with length n, allocating from the backend only when its
// capacity is smaller: activation buffers grow to the largest batch seen and
// are resliced for smaller ones.
func (f *flatModel) grow(buf []float32, n int) []float32 {
	if cap(buf) < n {
		return f.be.Alloc(n)
	}
	return buf[:n]
}

// growInt32 is grow for int32 buffers.
func (f *flatModel) growInt32(buf []int32, n int) []int32 {
	if cap(buf) < n {
		return f.be.AllocInt32(n)
	}
	return buf[:n]
}

// errorf returns an error prefixed with "model: name: ".
func errorf(name, format string, args ...any) error {
	return fmt.Errorf("model: "+name+": "+format, args...)
}
