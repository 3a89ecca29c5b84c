package model

import (
	"fmt"
	"math"
	"testing"
)

// The layer tests below check each backward kernel against central
// differences of its forward kernel. The loss is a fixed random projection
// L = Σ r·out, accumulated in float64, so dL/dout = r.
//
// Choice of step and tolerance: conv, linear, ReLU and max-pool are
// piecewise linear, so the central difference is exact, apart from float32
// rounding of the outputs, as long as no kink is crossed. Inputs are drawn
// away from the kinks (|x| ≥ 0.1 for ReLU, pool windows whose values differ
// by ≥ 0.05), so a step of 1e-2 crosses none, and the rounding noise,
// about 2⁻²⁴·|out|·√(outputs touched)/(2·1e-2), stays below 1e-4 for the
// O(1) values used. Hence |analytic − numeric| ≤ 1e-3 + 1e-3·|numeric|.
const (
	fdEps  = 1e-2
	fdAtol = 1e-3
	fdRtol = 1e-3
)

// naiveConv is the direct convolution, in float64, of n NCHW images.
func naiveConv(x, w, b []float32, n, outC int, g ConvGeom) []float64 {
	oh, ow := g.OutH(), g.OutW()
	y := make([]float64, n*outC*oh*ow)
	for img := 0; img < n; img++ {
		for oc := 0; oc < outC; oc++ {
			for oy := 0; oy < oh; oy++ {
				for ox := 0; ox < ow; ox++ {
					s := float64(b[oc])
					for c := 0; c < g.C; c++ {
						for kh := 0; kh < g.KH; kh++ {
							for kw := 0; kw < g.KW; kw++ {
								iy, ix := oy*g.Stride-g.Pad+kh, ox*g.Stride-g.Pad+kw
								if iy < 0 || iy >= g.H || ix < 0 || ix >= g.W {
									continue
								}
								s += float64(w[((oc*g.C+c)*g.KH+kh)*g.KW+kw]) * float64(x[((img*g.C+c)*g.H+iy)*g.W+ix])
							}
						}
					}
					y[((img*outC+oc)*oh+oy)*ow+ox] = s
				}
			}
		}
	}
	return y
}

var convGeoms = []ConvGeom{
	{C: 3, H: 5, W: 6, KH: 3, KW: 3, Pad: 1, Stride: 1}, // the CNN's shape, small
	{C: 2, H: 7, W: 5, KH: 2, KW: 3, Pad: 0, Stride: 2},
	{C: 1, H: 4, W: 4, KH: 3, KW: 3, Pad: 2, Stride: 1}, // padding wider than a border
	{C: 2, H: 8, W: 9, KH: 3, KW: 2, Pad: 1, Stride: 3},
}

// TestIm2ColCol2ImAdjoint checks Im2Col against its definition and Col2Im as
// its adjoint: <Col2Im(c), x> = <c, Im2Col(x)> for random c and x.
func TestIm2ColCol2ImAdjoint(t *testing.T) {
	r := newRand(10)
	be := NewCPU(2)
	for _, g := range convGeoms {
		t.Run(fmt.Sprintf("%+v", g), func(t *testing.T) {
			const n = 3
			oh, ow := g.OutH(), g.OutW()
			x := uniform32(r, n*g.C*g.H*g.W, -1, 1)
			col := make([]float32, n*g.ColRows()*g.ColCols())
			be.Im2Col(col, x, n, g)
			for img := 0; img < n; img++ {
				for c := 0; c < g.C; c++ {
					for kh := 0; kh < g.KH; kh++ {
						for kw := 0; kw < g.KW; kw++ {
							for oy := 0; oy < oh; oy++ {
								for ox := 0; ox < ow; ox++ {
									row := (c*g.KH+kh)*g.KW + kw
									got := col[(img*g.ColRows()+row)*g.ColCols()+oy*ow+ox]
									iy, ix := oy*g.Stride-g.Pad+kh, ox*g.Stride-g.Pad+kw
									var want float32
									if iy >= 0 && iy < g.H && ix >= 0 && ix < g.W {
										want = x[((img*g.C+c)*g.H+iy)*g.W+ix]
									}
									if got != want {
										t.Fatalf("col[img %d][c %d kh %d kw %d][%d,%d] = %v, want %v", img, c, kh, kw, oy, ox, got, want)
									}
								}
							}
						}
					}
				}
			}
			c := uniform32(r, len(col), -1, 1)
			dx := uniform32(r, len(x), -1, 1) // Col2Im must overwrite, not add to, this
			be.Col2Im(dx, c, n, g)
			if lhs, rhs := dot64(dx, x), dot64(c, col); math.Abs(lhs-rhs) > 1e-5*(1+math.Abs(rhs)) {
				t.Errorf("<Col2Im(c), x> = %.9g, <c, Im2Col(x)> = %.9g", lhs, rhs)
			}
		})
	}
}

// TestConvGradients checks the CNN's convolution (im2col + GEMM + bias)
// against the direct convolution, and its backward against central
// differences for the input, weight and bias.
func TestConvGradients(t *testing.T) {
	r := newRand(11)
	for _, g := range convGeoms {
		t.Run(fmt.Sprintf("%+v", g), func(t *testing.T) {
			const n, outC = 2, 4
			m := &CNN{flatModel: flatModel{be: NewCPU(2)}}
			rows, cols := g.ColRows(), g.ColCols()
			x := uniform32(r, n*g.C*g.H*g.W, -1, 1)
			w := uniform32(r, outC*rows, -1, 1)
			b := uniform32(r, outC, -1, 1)
			proj := uniform32(r, n*outC*cols, -1, 1)
			col := make([]float32, n*rows*cols)
			y := make([]float32, n*outC*cols)
			loss := func() float64 {
				m.convForward(g, outC, w, b, col, x, y, n)
				return dot64(proj, y)
			}
			loss()
			for i, want := range naiveConv(x, w, b, n, outC, g) {
				if d := math.Abs(float64(y[i]) - want); d > 1e-5*(1+math.Abs(want)) {
					t.Fatalf("forward y[%d] = %.7g, direct convolution %.7g", i, y[i], want)
				}
			}
			// Gradients accumulate: start dw and db from non-zero values.
			dw0, db0 := uniform32(r, len(w), -1, 1), uniform32(r, len(b), -1, 1)
			dw, db := append([]float32(nil), dw0...), append([]float32(nil), db0...)
			dx, dcol := make([]float32, len(x)), make([]float32, len(col))
			m.convBackward(g, outC, dx, dcol, dw, db, proj, col, w, n)
			for i := range dw {
				dw[i] -= dw0[i]
			}
			for i := range db {
				db[i] -= db0[i]
			}
			gradCheck(t, "dx", x, dx, allCoords(len(x)), fdEps, fdAtol, fdRtol, loss)
			gradCheck(t, "dw", w, dw, allCoords(len(w)), fdEps, fdAtol, fdRtol, loss)
			gradCheck(t, "db", b, db, allCoords(len(b)), fdEps, fdAtol, fdRtol, loss)
		})
	}
}

func TestLinearGradients(t *testing.T) {
	r := newRand(12)
	const n, in, out = 3, 7, 5
	m := &CNN{flatModel: flatModel{be: NewCPU(2)}}
	x, w, b := uniform32(r, n*in, -1, 1), uniform32(r, out*in, -1, 1), uniform32(r, out, -1, 1)
	proj := uniform32(r, n*out, -1, 1)
	y := make([]float32, n*out)
	loss := func() float64 {
		m.linearForward(y, x, w, b, n, in, out)
		return dot64(proj, y)
	}
	loss()
	for i := 0; i < n; i++ { // y = x·wᵀ + b, nn.Linear's convention
		for o := 0; o < out; o++ {
			want := float64(b[o]) + dot64(x[i*in:(i+1)*in], w[o*in:(o+1)*in])
			if d := math.Abs(float64(y[i*out+o]) - want); d > 1e-5 {
				t.Fatalf("forward y[%d][%d] = %.7g, want %.7g", i, o, y[i*out+o], want)
			}
		}
	}
	dx, dw, db := make([]float32, len(x)), make([]float32, len(w)), make([]float32, len(b))
	m.linearBackward(dx, dw, db, proj, x, w, n, in, out)
	gradCheck(t, "dx", x, dx, allCoords(len(x)), fdEps, fdAtol, fdRtol, loss)
	gradCheck(t, "dw", w, dw, allCoords(len(w)), fdEps, fdAtol, fdRtol, loss)
	gradCheck(t, "db", b, db, allCoords(len(b)), fdEps, fdAtol, fdRtol, loss)
}

func TestReLUGradients(t *testing.T) {
	r := newRand(13)
	be := NewCPU(2)
	const n = 50000 // above the parallel threshold and not a multiple of the chunk
	x := awayFromZero(r, n, 0.1, 1)
	proj := uniform32(r, n, -1, 1)
	y := make([]float32, n)
	loss := func() float64 {
		be.ReLUForward(y, x)
		return dot64(proj, y)
	}
	loss()
	for i, v := range x {
		if want := float32(math.Max(float64(v), 0)); y[i] != want {
			t.Fatalf("relu(%v) = %v, want %v", v, y[i], want)
		}
	}
	dx := make([]float32, n)
	be.ReLUBackward(dx, proj, y)
	gradCheck(t, "dx", x, dx, someCoords(r, n, 100), fdEps, fdAtol, fdRtol, loss)

	// In place, as the CNN uses them; NaN propagates forward as in PyTorch.
	z := []float32{-1, 2, float32(math.NaN()), 0}
	be.ReLUForward(z, z)
	if z[0] != 0 || z[1] != 2 || !math.IsNaN(float64(z[2])) || z[3] != 0 {
		t.Errorf("in-place relu gave %v, want [0 2 NaN 0]", z)
	}
	d := []float32{5, 6, 7, 8}
	be.ReLUBackward(d, d, z)
	if d[0] != 0 || d[1] != 6 || d[2] != 0 || d[3] != 0 {
		t.Errorf("in-place relu backward gave %v, want [0 6 0 0]", d)
	}
}

func TestMaxPoolGradients(t *testing.T) {
	r := newRand(14)
	be := NewCPU(2)
	for _, sz := range [][3]int{{3, 4, 6}, {2, 5, 7}, {40, 28, 28}} { // planes, h, w; odd sizes drop the last row/column
		planes, h, w := sz[0], sz[1], sz[2]
		t.Run(fmt.Sprintf("%dx%dx%d", planes, h, w), func(t *testing.T) {
			oh, ow := h/2, w/2
			// Distinct values 0.05 apart, shuffled: no window has a near tie.
			x := make([]float32, planes*h*w)
			for i, p := range r.Perm(len(x)) {
				x[i] = float32(p)*0.05 - 10
			}
			proj := uniform32(r, planes*oh*ow, -1, 1)
			y, argmax := make([]float32, len(proj)), make([]int32, len(proj))
			loss := func() float64 {
				be.MaxPool2x2Forward(y, argmax, x, planes, h, w)
				return dot64(proj, y)
			}
			loss()
			for p := 0; p < planes; p++ {
				for oy := 0; oy < oh; oy++ {
					for ox := 0; ox < ow; ox++ {
						plane := x[p*h*w : (p+1)*h*w]
						want := max(plane[2*oy*w+2*ox], plane[2*oy*w+2*ox+1], plane[(2*oy+1)*w+2*ox], plane[(2*oy+1)*w+2*ox+1])
						o := (p*oh+oy)*ow + ox
						if y[o] != want || plane[argmax[o]] != want {
							t.Fatalf("plane %d out (%d,%d): max %v at %d, want %v", p, oy, ox, y[o], argmax[o], want)
						}
					}
				}
			}
			dx := uniform32(r, len(x), -1, 1) // must be overwritten
			be.MaxPool2x2Backward(dx, proj, argmax, planes, h, w)
			gradCheck(t, "dx", x, dx, someCoords(r, len(x), 400), fdEps, fdAtol, fdRtol, loss)
		})
	}
}

// TestMaxPoolTiesAndNaN pins PyTorch's choice in every 2×2 window over
// {−Inf, −1, −0, +0, 1, NaN}: scanning in row-major order from −Inf, a
// strictly greater value or a NaN takes over. So the first maximum wins a
// tie, the last NaN wins outright, and the output is the chosen element
// itself (bit for bit: −0 stays −0).
func TestMaxPoolTiesAndNaN(t *testing.T) {
	be := NewCPU(1)
	negZero := float32(math.Copysign(0, -1))
	vals := []float32{float32(math.Inf(-1)), -1, negZero, 0, 1, float32(math.NaN())}
	const windows = 6 * 6 * 6 * 6
	// All windows side by side: a 2×(2·windows) plane.
	w := 2 * windows
	x := make([]float32, 2*w)
	for i := 0; i < windows; i++ {
		v := []int{i % 6, i / 6 % 6, i / 36 % 6, i / 216}
		x[2*i], x[2*i+1], x[w+2*i], x[w+2*i+1] = vals[v[0]], vals[v[1]], vals[v[2]], vals[v[3]]
	}
	y, am := make([]float32, windows), make([]int32, windows)
	be.MaxPool2x2Forward(y, am, x, 1, 2, w)
	for i := 0; i < windows; i++ {
		best, bi := float32(math.Inf(-1)), 2*i
		for _, j := range []int{2 * i, 2*i + 1, w + 2*i, w + 2*i + 1} {
			if v := x[j]; v > best || v != v {
				best, bi = v, j
			}
		}
		if am[i] != int32(bi) || math.Float32bits(y[i]) != math.Float32bits(x[bi]) {
			t.Errorf("window [%v %v; %v %v]: picked %v at %d, want %v at %d",
				x[2*i], x[2*i+1], x[w+2*i], x[w+2*i+1], y[i], am[i], x[bi], bi)
		}
	}
}

func TestSoftmaxCrossEntropyGradients(t *testing.T) {
	r := newRand(15)
	be := NewCPU(2)
	const n, classes = 7, 10
	logits := uniform32(r, n*classes, -4, 4)
	logits[3] = 80 // large logits must not overflow
	labels := make([]int32, n)
	for i := range labels {
		labels[i] = int32(r.IntN(classes))
	}
	probs := make([]float32, n*classes)
	loss := func() float64 { return be.SoftmaxCrossEntropyForward(probs, logits, labels, n, classes) }
	total := loss()
	var want float64
	for i := 0; i < n; i++ {
		row := logits[i*classes : (i+1)*classes]
		var sum, psum float64
		for _, v := range row {
			sum += math.Exp(float64(v) - 80)
		}
		want += math.Log(sum) + 80 - float64(row[labels[i]])
		for j, v := range row {
			p := math.Exp(float64(v)-80) / sum
			psum += float64(probs[i*classes+j])
			if d := math.Abs(float64(probs[i*classes+j]) - p); d > 1e-7 {
				t.Errorf("probs[%d][%d] = %.9g, want %.9g", i, j, probs[i*classes+j], p)
			}
		}
		if math.Abs(psum-1) > 1e-6 {
			t.Errorf("row %d: probabilities sum to %.9g", i, psum)
		}
	}
	if math.Abs(total-want) > 1e-9*want {
		t.Errorf("loss sum %.12g, want %.12g", total, want)
	}
	const scale = 0.25
	dl := make([]float32, n*classes)
	be.SoftmaxCrossEntropyBackward(dl, probs, labels, n, classes, scale)
	for i := range dl {
		dl[i] /= scale // gradCheck differentiates the unscaled sum
	}
	// The loss is smooth and evaluated in float64 (the kernel's own loss
	// carries float32 exponentials): a step of 1e-3 leaves a truncation error
	// of order 1e-7, and the analytic gradient carries the float32 rounding
	// of probs, 2⁻²⁴ ≈ 6e-8.
	loss64 := func() float64 {
		var s float64
		for i := 0; i < n; i++ {
			row := logits[i*classes : (i+1)*classes]
			mx := math.Inf(-1)
			for _, v := range row {
				mx = math.Max(mx, float64(v))
			}
			var sum float64
			for _, v := range row {
				sum += math.Exp(float64(v) - mx)
			}
			s += math.Log(sum) + mx - float64(row[labels[i]])
		}
		return s
	}
	gradCheck(t, "dlogits", logits, dl, allCoords(len(logits)), 1e-3, 1e-5, 1e-4, loss64)
}

// TestKernelsWorkerInvariant runs every kernel with 1, 2 and 3 workers on
// inputs large enough to run in parallel and requires bit-identical outputs.
func TestKernelsWorkerInvariant(t *testing.T) {
	r := newRand(16)
	g := ConvGeom{C: 8, H: 14, W: 14, KH: 3, KW: 3, Pad: 1, Stride: 1}
	const n, classes = 24, 10 // n·C·H·W = 37632: every kernel is above minParallelWork
	x := uniform32(r, n*g.C*g.H*g.W, -1, 1)
	dy := uniform32(r, len(x), -1, 1)
	colIn := uniform32(r, n*g.ColRows()*g.ColCols(), -1, 1)
	bias := uniform32(r, g.C, -1, 1)
	logits := uniform32(r, 3000*classes, -3, 3)
	labels := make([]int32, 3000)
	for i := range labels {
		labels[i] = int32(r.IntN(classes))
	}
	run := func(workers int) (outs [][]float32, loss float64) {
		be := NewCPU(workers)
		col := make([]float32, len(colIn))
		be.Im2Col(col, x, n, g)
		dx := make([]float32, len(x))
		be.Col2Im(dx, colIn, n, g)
		pool, am := make([]float32, len(x)/4), make([]int32, len(x)/4)
		be.MaxPool2x2Forward(pool, am, x, n*g.C, g.H, g.W)
		dpool := make([]float32, len(x))
		be.MaxPool2x2Backward(dpool, pool, am, n*g.C, g.H, g.W)
		relu, drelu := make([]float32, len(x)), make([]float32, len(x))
		be.ReLUForward(relu, x)
		be.ReLUBackward(drelu, dy, relu)
		biased := append([]float32(nil), x...)
		be.BiasForward(biased, bias, n, g.H*g.W)
		db := make([]float32, g.C)
		be.BiasBackward(db, dy, n, g.H*g.W)
		// A linear layer's bias (inner 1): rows of 14·14·8 channels.
		rowsBiased := append([]float32(nil), x...)
		rowBias := uniform32(newRand(17), g.H*g.W*g.C, -1, 1)
		be.BiasForward(rowsBiased, rowBias, n, 1)
		dbRows := make([]float32, len(rowBias))
		be.BiasBackward(dbRows, dy, n, 1)
		probs := make([]float32, len(logits))
		loss = be.SoftmaxCrossEntropyForward(probs, logits, labels, len(labels), classes)
		dl := make([]float32, len(logits))
		be.SoftmaxCrossEntropyBackward(dl, probs, labels, len(labels), classes, 0.5)
		return [][]float32{col, dx, pool, dpool, relu, drelu, biased, db, rowsBiased, dbRows, probs, dl}, loss
	}
	want, wantLoss := run(1)
	for _, workers := range []int{2, 3} {
		got, loss := run(workers)
		for i := range want {
			equalBits(t, fmt.Sprintf("workers=%d output %d", workers, i), got[i], want[i])
		}
		if loss != wantLoss {
			t.Errorf("workers=%d: loss %v, want %v", workers, loss, wantLoss)
		}
	}
}

func TestKernelsPanicOnBadLengths(t *testing.T) {
	be := NewCPU(1)
	g := ConvGeom{C: 1, H: 4, W: 4, KH: 3, KW: 3, Pad: 1, Stride: 1}
	mustPanic(t, "Im2Col short col", func() { be.Im2Col(make([]float32, 10), make([]float32, 16), 1, g) })
	mustPanic(t, "Im2Col bad geometry", func() { be.Im2Col(nil, nil, 1, ConvGeom{C: 1, H: 2, W: 2, KH: 5, KW: 5, Stride: 1}) })
	mustPanic(t, "MaxPool short argmax", func() {
		be.MaxPool2x2Forward(make([]float32, 4), make([]int32, 3), make([]float32, 16), 1, 4, 4)
	})
	mustPanic(t, "ReLU mismatched", func() { be.ReLUForward(make([]float32, 3), make([]float32, 4)) })
	mustPanic(t, "softmax label out of range", func() {
		be.SoftmaxCrossEntropyForward(make([]float32, 2), make([]float32, 2), []int32{2}, 1, 2)
	})
}
