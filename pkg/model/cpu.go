package model

import (
	"fmt"
	"math"
	"runtime"
	"sync"

	"gonum.org/v1/gonum/blas"
	"gorgonia.org/tensor"
)

// CPU is the pure-Go Backend. GEMM goes through gorgonia.org/tensor's BLAS
// (gonum's native implementation unless tensor.Use installed another); the
// other kernels are plain loops.
//
// Parallelism is over disjoint outputs only (tiles of C, images, planes,
// channels), each output element computed by one goroutine with the same
// arithmetic in the same order whatever the number of workers; reductions
// (BiasBackward) run over a fixed order inside one item. So results are
// bit-identical run to run and for any workers or GOMAXPROCS.
//
// A CPU is safe for concurrent use, but its calls are serialised: it keeps one
// preallocated descriptor per kernel so that a call allocates nothing, and
// parallelism comes from inside each call. Give each concurrently training
// model its own CPU.
type CPU struct {
	blas    blas.Float32
	workers int

	mu   sync.Mutex // guards team and the task descriptors below
	team *team

	gemm     gemmTask
	im2col   im2colTask
	col2im   col2imTask
	poolFwd  poolFwdTask
	poolBwd  poolBwdTask
	reluFwd  reluFwdTask
	reluBwd  reluBwdTask
	biasFwd  biasFwdTask
	biasBwd  biasBwdTask
	smaxFwd  softmaxTask
	smaxLoss []float64 // per-row losses of the last SoftmaxCrossEntropyForward, summed in row order
}

// NewCPU returns a CPU backend that uses up to workers goroutines per kernel;
// workers <= 0 means runtime.GOMAXPROCS(0) at the time of the call. The
// number of workers changes speed, never results.
func NewCPU(workers int) *CPU {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	return &CPU{blas: tensor.WhichBLAS(), workers: workers, team: newTeam(workers)}
}

var _ Backend = (*CPU)(nil)

// Name returns "cpu".
func (c *CPU) Name() string { return "cpu" }

// Workers returns the number of goroutines a kernel may use.
func (c *CPU) Workers() int { return c.workers }

// Work below this many multiply-adds or element updates runs on the calling
// goroutine: starting helpers costs about a microsecond, and a kernel this
// small takes less.
const minParallelWork = 1 << 15

func (c *CPU) run(tk task, items, work int) {
	if work < minParallelWork {
		for i := 0; i < items; i++ {
			tk.do(i)
		}
		return
	}
	c.team.run(tk, items)
}

// ---- GEMM ----

// C is cut into tiles of at most gemmTileM×gemmTileN, each computed by one
// call to the BLAS over the whole k. The tiles must span at most 3 of gonum's
// 64×64 blocks: then gonum computes each call serially instead of starting
// goroutines of its own (which would allocate, and split k).
//
// Neither the tiling nor the split among workers can change results: every
// element of C comes from the same operations over k in the same order. (For
// op(B) = Bᵀ gonum uses a SIMD dot product whose summation order depends on
// the 16-byte alignment of B's rows; the model's buffers are its own
// allocations, which Go aligns to 16 bytes, so that order is fixed too.)
const (
	gemmTileM = 32
	gemmTileN = 128
)

type gemmTask struct {
	blas          blas.Float32
	tA, tB        blas.Transpose
	m, n, k       int
	alpha, beta   float32
	a, b, c       []float32
	lda, ldb, ldc int
	sa, sb, sc    int  // strides between the matrices of a batch
	tilesN, tiles int  // tiles across a row of C, and per matrix
	wholeMatrices bool // an item is a whole matrix rather than one tile
}

func (t *gemmTask) do(item int) {
	if t.wholeMatrices {
		for tile := 0; tile < t.tiles; tile++ {
			t.tile(item, tile)
		}
		return
	}
	t.tile(item/t.tiles, item%t.tiles)
}

func (t *gemmTask) tile(mat, tile int) {
	i0 := (tile / t.tilesN) * gemmTileM
	j0 := (tile % t.tilesN) * gemmTileN
	mm := min(gemmTileM, t.m-i0)
	nn := min(gemmTileN, t.n-j0)
	// The tile's rows of op(A) and columns of op(B), as views into the
	// stored matrices: a row of op(A) is a column of A when A is transposed.
	a, b := t.a[mat*t.sa:], t.b[mat*t.sb:]
	if t.tA == blas.Trans {
		a = a[i0:]
	} else {
		a = a[i0*t.lda:]
	}
	if t.tB == blas.Trans {
		b = b[j0*t.ldb:]
	} else {
		b = b[j0:]
	}
	t.blas.Sgemm(t.tA, t.tB, mm, nn, t.k, t.alpha, a, t.lda, b, t.ldb, t.beta, t.c[mat*t.sc+i0*t.ldc+j0:], t.ldc)
}

// Gemm implements Backend.
func (c *CPU) Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, cm []float32, ldc int) {
	c.GemmStridedBatched(transA, transB, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, cm, ldc, 0, 1)
}

// GemmStridedBatched implements Backend.
func (c *CPU) GemmStridedBatched(transA, transB bool, m, n, k int, alpha float32, a []float32, lda, strideA int, b []float32, ldb, strideB int, beta float32, cm []float32, ldc, strideC int, batch int) {
	checkGemm(transA, transB, m, n, k, a, lda, strideA, b, ldb, strideB, cm, ldc, strideC, batch)
	if m == 0 || n == 0 || batch == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		// BLAS semantics: A and B are not read; gonum would still multiply
		// them by zero, turning an Inf in them into a NaN in C.
		for i := 0; i < batch; i++ {
			scaleRows(cm[i*strideC:], m, n, ldc, beta)
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &c.gemm
	*t = gemmTask{
		blas: c.blas, tA: blas.NoTrans, tB: blas.NoTrans, m: m, n: n, k: k, alpha: alpha, beta: beta,
		a: a, b: b, c: cm, lda: lda, ldb: ldb, ldc: ldc, sa: strideA, sb: strideB, sc: strideC,
		tilesN: ceilDiv(n, gemmTileN),
	}
	if transA {
		t.tA = blas.Trans
	}
	if transB {
		t.tB = blas.Trans
	}
	t.tiles = ceilDiv(m, gemmTileM) * t.tilesN
	items := batch * t.tiles
	// With matrices enough to keep every worker busy, a worker takes whole
	// matrices: their operands then stay in its own cache.
	if batch >= 2*c.workers {
		t.wholeMatrices, items = true, batch
	}
	c.run(t, items, batch*m*n*k)
	*t = gemmTask{}
}

func checkGemm(transA, transB bool, m, n, k int, a []float32, lda, strideA int, b []float32, ldb, strideB int, c []float32, ldc, strideC int, batch int) {
	if m < 0 || n < 0 || k < 0 || batch < 0 {
		panic(fmt.Sprintf("model: Gemm: negative size m=%d n=%d k=%d batch=%d", m, n, k, batch))
	}
	// Rows and columns of A and B as stored.
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	checkMatrix("A", a, ar, ac, lda, strideA, batch)
	checkMatrix("B", b, br, bc, ldb, strideB, batch)
	checkMatrix("C", c, m, n, ldc, strideC, batch)
	if batch > 1 && m > 0 && n > 0 && strideC < (m-1)*ldc+n {
		panic(fmt.Sprintf("model: Gemm: strideC=%d makes the %d×%d outputs of a batch overlap", strideC, m, n))
	}
}

func checkMatrix(name string, x []float32, rows, cols, ld, stride, batch int) {
	if ld < max(cols, 1) {
		panic(fmt.Sprintf("model: Gemm: ld%s=%d < %d columns", name, ld, cols))
	}
	if stride < 0 {
		panic(fmt.Sprintf("model: Gemm: negative stride%s=%d", name, stride))
	}
	if batch > 0 && rows > 0 && cols > 0 {
		if need := (batch-1)*stride + (rows-1)*ld + cols; len(x) < need {
			panic(fmt.Sprintf("model: Gemm: %s has %d elements, want at least %d for %d matrices of %d×%d (stride %d, ld %d)",
				name, len(x), need, batch, rows, cols, stride, ld))
		}
	}
}

func scaleRows(c []float32, m, n, ldc int, beta float32) {
	if beta == 1 {
		return
	}
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row) // BLAS: C is not read, so a NaN in it does not survive
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}

// ---- im2col / col2im: one item per image ----

type im2colTask struct {
	col, x []float32
	g      ConvGeom
}

func (t *im2colTask) do(img int) {
	g := t.g
	im2col(t.col[img*g.ColRows()*g.ColCols():][:g.ColRows()*g.ColCols()], t.x[img*g.C*g.H*g.W:][:g.C*g.H*g.W], g)
}

// Im2Col implements Backend.
func (c *CPU) Im2Col(col, x []float32, n int, g ConvGeom) {
	g.check()
	checkLen("Im2Col", "col", col, n*g.ColRows()*g.ColCols())
	checkLen("Im2Col", "x", x, n*g.C*g.H*g.W)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.im2col = im2colTask{col: col, x: x, g: g}
	c.run(&c.im2col, n, len(col))
	c.im2col = im2colTask{}
}

type col2imTask struct {
	dx, col []float32
	g       ConvGeom
}

func (t *col2imTask) do(img int) {
	g := t.g
	col2im(t.dx[img*g.C*g.H*g.W:][:g.C*g.H*g.W], t.col[img*g.ColRows()*g.ColCols():][:g.ColRows()*g.ColCols()], g)
}

// Col2Im implements Backend.
func (c *CPU) Col2Im(dx, col []float32, n int, g ConvGeom) {
	g.check()
	checkLen("Col2Im", "col", col, n*g.ColRows()*g.ColCols())
	checkLen("Col2Im", "dx", dx, n*g.C*g.H*g.W)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.col2im = col2imTask{dx: dx, col: col, g: g}
	c.run(&c.col2im, n, len(col))
	c.col2im = col2imTask{}
}

// validSpan returns the range [lo, hi) of output positions o whose input
// position o*stride − pad + k lies in [0, size).
func validSpan(out, size, k, pad, stride int) (lo, hi int) {
	if pad > k {
		lo = ceilDiv(pad-k, stride)
	}
	last := size - 1 + pad - k // largest o*stride allowed
	if last < 0 {
		return 0, 0
	}
	hi = min(out, last/stride+1)
	return min(lo, hi), hi
}

// im2col unfolds one C×H×W image. Rows are (c, kh, kw); each row is written as
// whole output rows so that, for stride 1, the interior is a single copy.
func im2col(col, x []float32, g ConvGeom) {
	oh, ow := g.OutH(), g.OutW()
	r := 0
	for ch := 0; ch < g.C; ch++ {
		plane := x[ch*g.H*g.W : (ch+1)*g.H*g.W]
		for kh := 0; kh < g.KH; kh++ {
			ylo, yhi := validSpan(oh, g.H, kh, g.Pad, g.Stride)
			for kw := 0; kw < g.KW; kw++ {
				row := col[r*oh*ow : (r+1)*oh*ow]
				r++
				xlo, xhi := validSpan(ow, g.W, kw, g.Pad, g.Stride)
				clear(row[:ylo*ow])
				clear(row[yhi*ow:])
				for y := ylo; y < yhi; y++ {
					dst := row[y*ow : (y+1)*ow]
					src := plane[(y*g.Stride-g.Pad+kh)*g.W:][:g.W]
					clear(dst[:xlo])
					clear(dst[xhi:])
					if g.Stride == 1 {
						copy(dst[xlo:xhi], src[xlo-g.Pad+kw:])
						continue
					}
					for xo := xlo; xo < xhi; xo++ {
						dst[xo] = src[xo*g.Stride-g.Pad+kw]
					}
				}
			}
		}
	}
}

// col2im is im2col's adjoint for one image. Each input pixel sums its taps in
// the fixed order (c, kh, kw, y, x).
func col2im(dx, col []float32, g ConvGeom) {
	oh, ow := g.OutH(), g.OutW()
	clear(dx)
	r := 0
	for ch := 0; ch < g.C; ch++ {
		plane := dx[ch*g.H*g.W : (ch+1)*g.H*g.W]
		for kh := 0; kh < g.KH; kh++ {
			ylo, yhi := validSpan(oh, g.H, kh, g.Pad, g.Stride)
			for kw := 0; kw < g.KW; kw++ {
				row := col[r*oh*ow : (r+1)*oh*ow]
				r++
				xlo, xhi := validSpan(ow, g.W, kw, g.Pad, g.Stride)
				for y := ylo; y < yhi; y++ {
					src := row[y*ow : (y+1)*ow]
					dst := plane[(y*g.Stride-g.Pad+kh)*g.W:][:g.W]
					if g.Stride == 1 {
						d := dst[xlo-g.Pad+kw:][:xhi-xlo]
						for i, v := range src[xlo:xhi] {
							d[i] += v
						}
						continue
					}
					for xo := xlo; xo < xhi; xo++ {
						dst[xo*g.Stride-g.Pad+kw] += src[xo]
					}
				}
			}
		}
	}
}

// ---- max pool: items are groups of planes ----

const poolPlanesPerItem = 16

type poolFwdTask struct {
	y, x       []float32
	argmax     []int32
	planes     int
	h, w       int
	outH, outW int
}

func (t *poolFwdTask) do(item int) {
	p0 := item * poolPlanesPerItem
	w := t.w
	for p := p0; p < min(p0+poolPlanesPerItem, t.planes); p++ {
		x := t.x[p*t.h*w:][:t.h*w]
		for oy := 0; oy < t.outH; oy++ {
			r0 := x[2*oy*w:][:w]
			r1 := x[(2*oy+1)*w:][:w]
			y := t.y[(p*t.outH+oy)*t.outW:][:t.outW]
			am := t.argmax[(p*t.outH+oy)*t.outW:][:t.outW]
			for ox := range y {
				k := windowArgmax(r0[2*ox], r0[2*ox+1], r1[2*ox], r1[2*ox+1], w)
				i := 2*oy*w + 2*ox + k
				y[ox] = x[i]
				am[ox] = int32(i)
			}
		}
	}
}

// windowArgmax returns the offset (0, 1, w or w+1) of the element of the
// window [a b; c d] that PyTorch's max pooling picks: scanning in row-major
// order from −Inf, a strictly greater value or a NaN takes over, so the first
// maximum wins a tie and the last NaN wins outright. Without NaNs it is the
// first element equal to the maximum, found without branches: with random
// data a compare-and-branch scan mispredicts about once per window and is
// four times slower.
func windowArgmax(a, b, c, d float32, w int) int {
	m := max(a, b, c, d) // NaN if any is NaN
	if m != m {
		switch {
		case d != d:
			return w + 1
		case c != c:
			return w
		case b != b:
			return 1
		}
		return 0
	}
	na, nb, nc := b2i(a != m), b2i(b != m), b2i(c != m)
	return na * (1 + nb*(w-1+nc))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// MaxPool2x2Forward implements Backend.
func (c *CPU) MaxPool2x2Forward(y []float32, argmax []int32, x []float32, planes, h, w int) {
	oh, ow := h/2, w/2
	checkLen("MaxPool2x2Forward", "x", x, planes*h*w)
	checkLen("MaxPool2x2Forward", "y", y, planes*oh*ow)
	if len(argmax) != planes*oh*ow {
		panic(fmt.Sprintf("model: MaxPool2x2Forward: argmax has %d elements, want %d", len(argmax), planes*oh*ow))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.poolFwd = poolFwdTask{y: y, x: x, argmax: argmax, planes: planes, h: h, w: w, outH: oh, outW: ow}
	c.run(&c.poolFwd, ceilDiv(planes, poolPlanesPerItem), len(x))
	c.poolFwd = poolFwdTask{}
}

type poolBwdTask struct {
	dx, dy          []float32
	argmax          []int32
	planes          int
	inSize, outSize int // elements per plane
}

func (t *poolBwdTask) do(item int) {
	p0 := item * poolPlanesPerItem
	for p := p0; p < min(p0+poolPlanesPerItem, t.planes); p++ {
		dx := t.dx[p*t.inSize:][:t.inSize]
		dy := t.dy[p*t.outSize:][:t.outSize]
		am := t.argmax[p*t.outSize:][:t.outSize]
		clear(dx)
		for o, i := range am {
			dx[i] += dy[o]
		}
	}
}

// MaxPool2x2Backward implements Backend.
func (c *CPU) MaxPool2x2Backward(dx, dy []float32, argmax []int32, planes, h, w int) {
	oh, ow := h/2, w/2
	checkLen("MaxPool2x2Backward", "dx", dx, planes*h*w)
	checkLen("MaxPool2x2Backward", "dy", dy, planes*oh*ow)
	if len(argmax) != planes*oh*ow {
		panic(fmt.Sprintf("model: MaxPool2x2Backward: argmax has %d elements, want %d", len(argmax), planes*oh*ow))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.poolBwd = poolBwdTask{dx: dx, dy: dy, argmax: argmax, planes: planes, inSize: h * w, outSize: oh * ow}
	c.run(&c.poolBwd, ceilDiv(planes, poolPlanesPerItem), len(dx))
	c.poolBwd = poolBwdTask{}
}

// ---- ReLU: items are fixed-size chunks ----

const eltChunk = 1 << 14

type reluFwdTask struct{ y, x []float32 }

func (t *reluFwdTask) do(item int) {
	lo := item * eltChunk
	hi := min(lo+eltChunk, len(t.x))
	y := t.y[lo:hi]
	for i, v := range t.x[lo:hi] {
		// The builtin compiles without a branch (a compare-and-branch is
		// four times slower on random signs) and keeps NaN, as PyTorch does.
		y[i] = max(v, 0)
	}
}

// ReLUForward implements Backend.
func (c *CPU) ReLUForward(y, x []float32) {
	checkLen("ReLUForward", "y", y, len(x))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reluFwd = reluFwdTask{y: y, x: x}
	c.run(&c.reluFwd, ceilDiv(len(x), eltChunk), len(x))
	c.reluFwd = reluFwdTask{}
}

type reluBwdTask struct{ dx, dy, y []float32 }

func (t *reluBwdTask) do(item int) {
	lo := item * eltChunk
	hi := min(lo+eltChunk, len(t.y))
	dx, dy := t.dx[lo:hi], t.dy[lo:hi]
	for i, v := range t.y[lo:hi] {
		// Masking the bits lets the compiler use a conditional move instead
		// of a branch that mispredicts on random signs (eight times slower).
		var mask uint32
		if v > 0 {
			mask = ^uint32(0)
		}
		dx[i] = math.Float32frombits(math.Float32bits(dy[i]) & mask)
	}
}

// ReLUBackward implements Backend.
func (c *CPU) ReLUBackward(dx, dy, y []float32) {
	checkLen("ReLUBackward", "dx", dx, len(y))
	checkLen("ReLUBackward", "dy", dy, len(y))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reluBwd = reluBwdTask{dx: dx, dy: dy, y: y}
	c.run(&c.reluBwd, ceilDiv(len(y), eltChunk), len(y))
	c.reluBwd = reluBwdTask{}
}

// ---- bias ----

type biasFwdTask struct {
	x, bias []float32
	inner   int
}

func (t *biasFwdTask) do(img int) {
	x := t.x[img*len(t.bias)*t.inner:][:len(t.bias)*t.inner]
	for ch, b := range t.bias {
		row := x[ch*t.inner : (ch+1)*t.inner]
		for i := range row {
			row[i] += b
		}
	}
}

// BiasForward implements Backend. Items are images.
func (c *CPU) BiasForward(x, bias []float32, n, inner int) {
	checkLen("BiasForward", "x", x, n*len(bias)*inner)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.biasFwd = biasFwdTask{x: x, bias: bias, inner: inner}
	c.run(&c.biasFwd, n, len(x))
	c.biasFwd = biasFwdTask{}
}

type biasBwdTask struct {
	dbias, dy []float32
	n, inner  int
}

// do reduces one channel. The sum runs in float64 in the fixed order (image,
// position), so it is exact enough for tens of thousands of terms and the
// same for any split of channels among workers.
func (t *biasBwdTask) do(ch int) {
	channels := len(t.dbias)
	var sum float64
	for img := 0; img < t.n; img++ {
		for _, v := range t.dy[(img*channels+ch)*t.inner:][:t.inner] {
			sum += float64(v)
		}
	}
	t.dbias[ch] += float32(sum)
}

// BiasBackward implements Backend. Items are channels.
func (c *CPU) BiasBackward(dbias, dy []float32, n, inner int) {
	checkLen("BiasBackward", "dy", dy, n*len(dbias)*inner)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.biasBwd = biasBwdTask{dbias: dbias, dy: dy, n: n, inner: inner}
	c.run(&c.biasBwd, len(dbias), len(dy))
	c.biasBwd = biasBwdTask{}
}

// ---- softmax cross-entropy: items are rows ----

type softmaxTask struct {
	probs, logits []float32
	labels        []int32
	classes       int
	loss          []float64
}

func (t *softmaxTask) do(row int) {
	logits := t.logits[row*t.classes:][:t.classes]
	probs := t.probs[row*t.classes:][:t.classes]
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = math.Max(mx, float64(v))
	}
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v) - mx)
	}
	for j, v := range logits {
		probs[j] = float32(math.Exp(float64(v)-mx) / sum)
	}
	// −log softmax = log Σ exp(z − max) − (z_label − max), free of overflow.
	t.loss[row] = math.Log(sum) - (float64(logits[t.labels[row]]) - mx)
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
	if cap(c.smaxLoss) < n {
		c.smaxLoss = make([]float64, n)
	}
	c.smaxFwd = softmaxTask{probs: probs, logits: logits, labels: labels, classes: classes, loss: c.smaxLoss[:n]}
	// exp is some tens of times the cost of an add.
	c.run(&c.smaxFwd, n, 32*n*classes)
	c.smaxFwd = softmaxTask{}
	var total float64
	for _, l := range c.smaxLoss[:n] {
		total += l
	}
	return total
}

// SoftmaxCrossEntropyBackward implements Backend. It is cheap next to the
// GEMMs, so it runs on the calling goroutine.
func (c *CPU) SoftmaxCrossEntropyBackward(dlogits, probs []float32, labels []int32, n, classes int, scale float32) {
	checkLen("SoftmaxCrossEntropyBackward", "probs", probs, n*classes)
	checkLen("SoftmaxCrossEntropyBackward", "dlogits", dlogits, n*classes)
	checkLabels("SoftmaxCrossEntropyBackward", labels, n, classes)
	for i := 0; i < n; i++ {
		p := probs[i*classes : (i+1)*classes]
		d := dlogits[i*classes : (i+1)*classes]
		for j, v := range p {
			if j == int(labels[i]) {
				v--
			}
			d[j] = scale * v
		}
	}
}

func checkLabels(op string, labels []int32, n, classes int) {
	if len(labels) != n {
		panic(fmt.Sprintf("model: %s: %d labels for %d rows", op, len(labels), n))
	}
	for i, l := range labels {
		if l < 0 || int(l) >= classes {
			panic(fmt.Sprintf("model: %s: label %d of row %d outside [0,%d)", op, l, i, classes))
		}
	}
}

func checkLen(op, name string, x []float32, want int) {
	if len(x) != want {
		panic(fmt.Sprintf("model: %s: %s has %d elements, want %d", op, name, len(x), want))
	}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
