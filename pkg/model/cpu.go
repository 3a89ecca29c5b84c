package model

import (
	"fmt"
	"math"
	"runtime"
	"sync"
)

// CPU is the Backend for the host's cores. Its GEMM packs operands and runs
// assembly micro-kernels (AVX-512 or AVX2 with FMA; see gemm.go), or a Go
// kernel on other CPUs; the other kernels are loops over caller-owned
// buffers.
//
// Parallelism is over disjoint outputs only (tiles of C, images, rows,
// planes, channels, ranges of a vocabulary), each output element computed by
// one goroutine with the same arithmetic in the same order whatever the
// number of workers. Reductions run either inside one item in a fixed order
// (BiasBackward's channels, EmbeddingBackward's rows) or over blocks whose
// size is a constant, their partial results then summed in block order
// (LayerNormBackward, SumSquares). So results are bit-identical run to run
// and for any workers or GOMAXPROCS.
//
// A CPU is safe for concurrent use, but its calls are serialised: it keeps one
// preallocated descriptor per kernel so that a call allocates nothing, and
// parallelism comes from inside each call. Give each concurrently training
// model its own CPU.
type CPU struct {
	kern    microKernel
	vec     vecKernels
	workers int

	mu   sync.Mutex // guards team, the task descriptors and the scratch below
	team *team

	gemm         gemmTask
	scratch      []gemmScratch // one per worker
	packA, packB alignedBuf    // operands packed for all workers

	im2col  im2colTask
	col2im  col2imTask
	poolFwd poolFwdTask
	poolBwd poolBwdTask
	reluFwd reluFwdTask
	reluBwd reluBwdTask
	biasFwd biasFwdTask
	biasBwd biasBwdTask
	smaxFwd softmaxTask
	smaxBwd softmaxBwdTask
	embFwd  embFwdTask
	embBwd  embBwdTask
	lnFwd   lnFwdTask
	lnBwd   lnBwdTask
	elt     eltTask
	attnFwd attnTask
	attnBwd attnTask
	lstmFwd lstmTask
	lstmBwd lstmTask
	adamw   adamwTask

	partials []float64 // per-item partial sums of a reduction, summed in item order
	ones     []float32 // a row of ones (BiasBackward of linear layers)
	lnParts  []float32 // LayerNormBackward's per-block partial dweight, dbias
}

// NewCPU returns a CPU backend that uses up to workers goroutines per kernel;
// workers <= 0 means runtime.GOMAXPROCS(0) at the time of the call. The
// number of workers changes speed, never results. The GEMM uses the fastest
// micro-kernel the CPU supports.
func NewCPU(workers int) *CPU {
	return newCPU(workers, bestKernel(), bestVec())
}

// NewCPUPureGo is NewCPU without any assembly, whatever the CPU: the pure-Go
// GEMM micro-kernel and scalar elementwise kernels, the path other
// architectures take; here for tests and comparisons.
func NewCPUPureGo(workers int) *CPU {
	return newCPU(workers, goKernel, vecKernels{})
}

func newCPU(workers int, kern microKernel, vec vecKernels) *CPU {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if kern.name == "go" {
		vec = vecKernels{}
	}
	return &CPU{kern: kern, vec: vec, workers: workers, team: newTeam(workers), scratch: make([]gemmScratch, workers)}
}

var _ Backend = (*CPU)(nil)

// Name returns "cpu".
func (c *CPU) Name() string { return "cpu" }

// Kernel names the GEMM micro-kernel in use: "avx512", "avx2" or "go".
func (c *CPU) Kernel() string { return c.kern.name }

// Workers returns the number of goroutines a kernel may use.
func (c *CPU) Workers() int { return c.workers }

// Alloc implements Backend with ordinary Go memory.
func (c *CPU) Alloc(n int) []float32 { return make([]float32, n) }

// AllocInt32 implements Backend with ordinary Go memory.
func (c *CPU) AllocInt32(n int) []int32 { return make([]int32, n) }

// Work below this many multiply-adds or element updates runs on the calling
// goroutine: starting helpers costs about a microsecond, and a kernel this
// small takes less.
const minParallelWork = 1 << 15

func (c *CPU) run(tk task, items, work int) {
	if work < minParallelWork || c.workers == 1 {
		for i := 0; i < items; i++ {
			tk.do(i, 0)
		}
		return
	}
	c.team.run(tk, items)
}

// sumPartials returns the sum, in item order, of the first n partials.
func (c *CPU) sumPartials(n int) float64 {
	var s float64
	for _, v := range c.partials[:n] {
		s += v
	}
	return s
}

func (c *CPU) growPartials(n int) {
	if cap(c.partials) < n {
		c.partials = make([]float64, n)
	}
	c.partials = c.partials[:n]
}

// ---- softmax cross-entropy: items are rows ----

type softmaxTask struct {
	vec           *vecKernels
	probs, logits []float32
	labels        []int32
	classes       int
	loss          []float64
}

// do computes one row: e = exp(z − max) in float32 (expSub), probs = e/Σe,
// and the loss −log softmax = log Σe − (z_label − max) in float64, free of
// overflow.
func (t *softmaxTask) do(row, _ int) {
	logits := t.logits[row*t.classes:][:t.classes]
	probs := t.probs[row*t.classes:][:t.classes]
	mx := logits[0]
	for _, v := range logits[1:] {
		mx = max(mx, v)
	}
	sum := expSub(t.vec, probs, logits, mx)
	inv := 1 / sum
	for j := range probs {
		probs[j] *= inv
	}
	if l := t.labels[row]; l >= 0 {
		t.loss[row] = math.Log(float64(sum)) - (float64(logits[l]) - float64(mx))
	} else {
		t.loss[row] = 0
	}
}

// expSub sets dst = exp(src − shift) and returns its sum, with the vector
// kernel if there is one.
func expSub(vec *vecKernels, dst, src []float32, shift float32) float32 {
	if f := vec.expSub; f != nil {
		return f(dst, src, shift)
	}
	var sum float32
	for j, v := range src {
		e := expf(v - shift)
		dst[j] = e
		sum += e
	}
	return sum
}

// SoftmaxCrossEntropyForward implements Backend. Rows are computed in
// parallel; their losses are then summed in row order so the total does not
// depend on the split.
func (c *CPU) SoftmaxCrossEntropyForward(probs, logits []float32, labels []int32, n, classes int) float64 {
	checkLen("SoftmaxCrossEntropyForward", "logits", logits, n*classes)
	checkLen("SoftmaxCrossEntropyForward", "probs", probs, n*classes)
	checkLabels("SoftmaxCrossEntropyForward", labels, n, classes)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.growPartials(n)
	c.smaxFwd = softmaxTask{vec: &c.vec, probs: probs, logits: logits, labels: labels, classes: classes, loss: c.partials}
	// exp is some tens of times the cost of an add.
	c.run(&c.smaxFwd, n, 32*n*classes)
	c.smaxFwd = softmaxTask{}
	return c.sumPartials(n)
}

type softmaxBwdTask struct {
	dlogits, probs []float32
	labels         []int32
	classes        int
	scale          float32
}

const rowsPerItem = 16

func (t *softmaxBwdTask) do(item, _ int) {
	n := len(t.labels)
	for i := item * rowsPerItem; i < min((item+1)*rowsPerItem, n); i++ {
		p := t.probs[i*t.classes : (i+1)*t.classes]
		d := t.dlogits[i*t.classes : (i+1)*t.classes]
		l := int(t.labels[i])
		if l < 0 {
			clear(d)
			continue
		}
		for j, v := range p {
			if j == l {
				v--
			}
			d[j] = t.scale * v
		}
	}
}

// SoftmaxCrossEntropyBackward implements Backend.
func (c *CPU) SoftmaxCrossEntropyBackward(dlogits, probs []float32, labels []int32, n, classes int, scale float32) {
	checkLen("SoftmaxCrossEntropyBackward", "probs", probs, n*classes)
	checkLen("SoftmaxCrossEntropyBackward", "dlogits", dlogits, n*classes)
	checkLabels("SoftmaxCrossEntropyBackward", labels, n, classes)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.smaxBwd = softmaxBwdTask{dlogits: dlogits, probs: probs, labels: labels, classes: classes, scale: scale}
	c.run(&c.smaxBwd, ceilDiv(n, rowsPerItem), n*classes)
	c.smaxBwd = softmaxBwdTask{}
}

// ArgmaxMatches implements Backend. It is cheap next to the softmax, so it
// runs on the calling goroutine.
func (c *CPU) ArgmaxMatches(x []float32, labels []int32, n, classes int) int {
	checkLen("ArgmaxMatches", "x", x, n*classes)
	checkLabels("ArgmaxMatches", labels, n, classes)
	matches := 0
	for i := 0; i < n; i++ {
		if labels[i] >= 0 && argmax(x[i*classes:(i+1)*classes]) == int(labels[i]) {
			matches++
		}
	}
	return matches
}

// argmax returns the index of the first maximum of row (NaNs never win).
func argmax(row []float32) int {
	best := 0
	for j, v := range row {
		if v > row[best] {
			best = j
		}
	}
	return best
}

func checkLabels(op string, labels []int32, n, classes int) {
	if len(labels) != n {
		panic(fmt.Sprintf("model: %s: %d labels for %d rows", op, len(labels), n))
	}
	for i, l := range labels {
		if l < -1 || int(l) >= classes {
			panic(fmt.Sprintf("model: %s: label %d of row %d outside [0,%d) and not -1", op, l, i, classes))
		}
	}
}

func checkLen(op, name string, x []float32, want int) {
	if len(x) != want {
		panic(fmt.Sprintf("model: %s: %s has %d elements, want %d", op, name, len(x), want))
	}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
