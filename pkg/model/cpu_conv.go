package model

import (
	"fmt"
	"math"
)

// ---- im2col / col2im: one item per image ----

type im2colTask struct {
	col, x []float32
	g      ConvGeom
}

func (t *im2colTask) do(img, _ int) {
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

func (t *col2imTask) do(img, _ int) {
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

func (t *poolFwdTask) do(item, _ int) {
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

func (t *poolBwdTask) do(item, _ int) {
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

func (t *reluFwdTask) do(item, _ int) {
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

func (t *reluBwdTask) do(item, _ int) {
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

func (t *biasFwdTask) do(img, _ int) {
	if t.inner == 1 {
		// Rows of a linear layer's output; items are blocks of rows.
		c := len(t.bias)
		rows := len(t.x) / c
		for r := img * rowsPerItem; r < min((img+1)*rowsPerItem, rows); r++ {
			row := t.x[r*c : (r+1)*c]
			for i, b := range t.bias[:len(row)] {
				row[i] += b
			}
		}
		return
	}
	x := t.x[img*len(t.bias)*t.inner:][:len(t.bias)*t.inner]
	for ch, b := range t.bias {
		row := x[ch*t.inner : (ch+1)*t.inner]
		for i := range row {
			row[i] += b
		}
	}
}

// BiasForward implements Backend. Items are images, or blocks of rows when
// inner is 1.
func (c *CPU) BiasForward(x, bias []float32, n, inner int) {
	checkLen("BiasForward", "x", x, n*len(bias)*inner)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.biasFwd = biasFwdTask{x: x, bias: bias, inner: inner}
	items := n
	if inner == 1 {
		items = ceilDiv(n, rowsPerItem)
	}
	c.run(&c.biasFwd, items, len(x))
	c.biasFwd = biasFwdTask{}
}

type biasBwdTask struct {
	dbias, dy []float32
	n, inner  int
}

// onesVec returns n ones, from a buffer grown on demand; c.mu must be held.
func (c *CPU) onesVec(n int) []float32 {
	if len(c.ones) < n {
		c.ones = make([]float32, max(n, 2*len(c.ones)))
		fill(c.ones, 1)
	}
	return c.ones[:n]
}

// do reduces one channel. The sum runs in float64 in the fixed order (image,
// position), so it is exact enough for tens of thousands of terms and the
// same for any split of channels among workers.
func (t *biasBwdTask) do(ch, _ int) {
	channels := len(t.dbias)
	var sum float64
	for img := 0; img < t.n; img++ {
		for _, v := range t.dy[(img*channels+ch)*t.inner:][:t.inner] {
			sum += float64(v)
		}
	}
	t.dbias[ch] += float32(sum)
}

// BiasBackward implements Backend. For a linear layer (inner = 1) the sums
// over rows are a product with a row of ones, dbias += 1ᵀ·dy, which the GEMM
// computes in float32 in its fixed order (as PyTorch sums in float32);
// otherwise items are channels, each summed in float64 in (image, position)
// order.
func (c *CPU) BiasBackward(dbias, dy []float32, n, inner int) {
	checkLen("BiasBackward", "dy", dy, n*len(dbias)*inner)
	c.mu.Lock()
	defer c.mu.Unlock()
	if inner == 1 {
		if n > 0 && len(dbias) > 0 {
			c.gemmLocked(false, false, 1, len(dbias), n, 1, c.onesVec(n), n, 0, dy, len(dbias), 0, 1, dbias, len(dbias), 0, 1)
		}
		return
	}
	c.biasBwd = biasBwdTask{dbias: dbias, dy: dy, n: n, inner: inner}
	c.run(&c.biasBwd, len(dbias), len(dy))
	c.biasBwd = biasBwdTask{}
}
