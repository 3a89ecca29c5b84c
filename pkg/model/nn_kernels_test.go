package model

import (
	"fmt"
	"math"
	"testing"
)

// Tests of the language models' kernels. Each forward kernel is compared with
// a float64 reference written out here, and each backward kernel with central
// differences of that reference (gradCheck), on every backend of
// testBackends: the assembly paths and the pure-Go one.
//
// The references are smooth, and float64 leaves the central difference's
// truncation error, O(h²), as its only error: with steps of 1e-3 on O(1)
// inputs it is below 1e-6 relative, so the tolerance 1e-5 + 1e-4·|numeric|
// measures the float32 kernels, not the check.
const (
	smoothEps  = 1e-3
	smoothAtol = 1e-5
	smoothRtol = 1e-4
)

// layerNorm64 is LayerNorm in float64.
func layerNorm64(x, w, b []float32, n, c int) []float64 {
	out := make([]float64, n*c)
	for r := 0; r < n; r++ {
		var m, v float64
		for _, xv := range x[r*c : (r+1)*c] {
			m += float64(xv)
		}
		m /= float64(c)
		for _, xv := range x[r*c : (r+1)*c] {
			v += (float64(xv) - m) * (float64(xv) - m)
		}
		rs := 1 / math.Sqrt(v/float64(c)+lnEps)
		for i, xv := range x[r*c : (r+1)*c] {
			out[r*c+i] = (float64(xv)-m)*rs*float64(w[i]) + float64(b[i])
		}
	}
	return out
}

func TestLayerNorm(t *testing.T) {
	const n, c = 37, 24 // more than one lnBlock of rows
	for _, be := range testBackends() {
		t.Run(be.Kernel(), func(t *testing.T) {
			r := newRand(21)
			x := uniform32(r, n*c, -2, 2)
			for i := 0; i < c; i++ {
				x[5*c+i] += 30 // a row with a large mean
			}
			w, b := uniform32(r, c, 0.5, 1.5), uniform32(r, c, -1, 1)
			out, mean, rstd := make([]float32, n*c), make([]float32, n), make([]float32, n)
			be.LayerNormForward(out, mean, rstd, x, w, b, n, c)
			for i, want := range layerNorm64(x, w, b, n, c) {
				if d := math.Abs(float64(out[i]) - want); d > 2e-6*(1+math.Abs(want)) {
					t.Fatalf("out[%d] = %.8g, float64 %.8g", i, out[i], want)
				}
			}
			proj := uniform32(r, n*c, -1, 1)
			// Gradients accumulate: start every one from non-zero values.
			dx0, dw0, db0 := uniform32(r, n*c, -1, 1), uniform32(r, c, -1, 1), uniform32(r, c, -1, 1)
			dx, dw, db := clone32(dx0), clone32(dw0), clone32(db0)
			be.LayerNormBackward(dx, dw, db, proj, x, w, mean, rstd, n, c)
			loss := func() float64 {
				var s float64
				for i, v := range layerNorm64(x, w, b, n, c) {
					s += float64(proj[i]) * v
				}
				return s
			}
			gradCheck(t, "dinp", x, diff32(dx, dx0), someCoords(r, n*c, 60), smoothEps, smoothAtol, smoothRtol, loss)
			gradCheck(t, "dweight", w, diff32(dw, dw0), allCoords(c), smoothEps, smoothAtol, smoothRtol, loss)
			gradCheck(t, "dbias", b, diff32(db, db0), allCoords(c), smoothEps, smoothAtol, smoothRtol, loss)
		})
	}
}

// gelu64 is the exact GELU and its derivative in float64.
func gelu64(x float64) (y, dy float64) {
	cdf := 0.5 * (1 + math.Erf(x/math.Sqrt2))
	pdf := math.Exp(-x*x/2) / math.Sqrt(2*math.Pi)
	return x * cdf, cdf + x*pdf
}

func TestGELU(t *testing.T) {
	r := newRand(22)
	const n = 2*eltChunk + 21 // chunks and a tail that is not a whole vector
	x := uniform32(r, n, -6, 6)
	copy(x, []float32{0, 1e-30, -1e-30, 20, -20, 1e4, -1e4, 0.5, -0.5, 3, -3})
	x[n-1] = float32(math.NaN())
	dout := uniform32(r, n, -1, 1)
	for _, be := range testBackends() {
		t.Run(be.Kernel(), func(t *testing.T) {
			y, dx := make([]float32, n), make([]float32, n)
			be.GELUForward(y, x)
			be.GELUBackward(dx, dout, x)
			worst := 0.0
			for i := 0; i < n-1; i++ {
				wy, wd := gelu64(float64(x[i]))
				// The erf approximation is good to 1.5e-7 absolute (as
				// PyTorch's vectorised one), exp and the rest to a few
				// float32 ulps.
				tol := 2e-7 * (1 + math.Abs(float64(x[i])))
				if d := math.Abs(float64(y[i]) - wy); !(d <= tol) {
					t.Fatalf("gelu(%g) = %.9g, float64 %.9g", x[i], y[i], wy)
				}
				if d := math.Abs(float64(dx[i]) - float64(dout[i])*wd); !(d <= 4e-7*(1+math.Abs(float64(x[i])))) {
					t.Fatalf("gelu'(%g)·%g = %.9g, float64 %.9g", x[i], dout[i], dx[i], float64(dout[i])*wd)
				}
				worst = max(worst, math.Abs(float64(y[i])-wy)/tol)
			}
			if !math.IsNaN(float64(y[n-1])) || !math.IsNaN(float64(dx[n-1])) {
				t.Errorf("gelu(NaN) = %v, gelu'(NaN) = %v; want NaN", y[n-1], dx[n-1])
			}
			if y[0] != 0 || y[3] != 20 || y[4] != 0 || y[5] != 1e4 {
				t.Errorf("gelu(0, 20, -20, 1e4) = %v %v %v %v", y[0], y[3], y[4], y[5])
			}
			t.Logf("largest error %.2g of the tolerance", worst)
			// In place, as the GPT calls it.
			z := clone32(x)
			be.GELUForward(z, z)
			equalBits(t, "GELUForward in place", z[:n-1], y[:n-1])
			d := clone32(dout)
			be.GELUBackward(d, d, x)
			equalBits(t, "GELUBackward in place", d[:n-1], dx[:n-1])
		})
	}
}

// attention64 is causal multi-head attention in float64, with the naive
// loops: out[s][i][h·hs+d] = Σⱼ≤ᵢ softmaxⱼ(q_i·k_j/√hs)·v_j[d].
func attention64(qkv []float32, n, t, c, heads int) []float64 {
	hs := c / heads
	out := make([]float64, n*t*c)
	at := func(s, i, part, h, d int) float64 { return float64(qkv[(s*t+i)*3*c+part*c+h*hs+d]) }
	for s := 0; s < n; s++ {
		for h := 0; h < heads; h++ {
			for i := 0; i < t; i++ {
				scores := make([]float64, i+1)
				mx := math.Inf(-1)
				for j := 0; j <= i; j++ {
					var dot float64
					for d := 0; d < hs; d++ {
						dot += at(s, i, 0, h, d) * at(s, j, 1, h, d)
					}
					scores[j] = dot / math.Sqrt(float64(hs))
					mx = math.Max(mx, scores[j])
				}
				var sum float64
				for j := range scores {
					scores[j] = math.Exp(scores[j] - mx)
					sum += scores[j]
				}
				for d := 0; d < hs; d++ {
					var y float64
					for j := range scores {
						y += scores[j] / sum * at(s, j, 2, h, d)
					}
					out[(s*t+i)*c+h*hs+d] = y
				}
			}
		}
	}
	return out
}

func TestAttention(t *testing.T) {
	for _, tc := range []struct{ n, t, c, heads int }{{2, 5, 8, 2}, {1, 1, 4, 1}, {3, 9, 12, 3}} {
		for _, be := range testBackends() {
			t.Run(fmt.Sprintf("%+v/%s", tc, be.Kernel()), func(t *testing.T) {
				r := newRand(23)
				n, T, c, heads := tc.n, tc.t, tc.c, tc.heads
				qkv := uniform32(r, n*T*3*c, -1.5, 1.5)
				out, att := make([]float32, n*T*c), make([]float32, n*heads*T*T)
				be.AttentionForward(out, att, qkv, n, T, c, heads)
				for i, want := range attention64(qkv, n, T, c, heads) {
					if d := math.Abs(float64(out[i]) - want); d > 1e-5*(1+math.Abs(want)) {
						t.Fatalf("out[%d] = %.8g, float64 %.8g", i, out[i], want)
					}
				}
				// Each row of att is a distribution over the past only.
				for row := 0; row < n*heads*T; row++ {
					i := row % T
					var s float64
					for j, a := range att[row*T : (row+1)*T] {
						if j > i && a != 0 {
							t.Fatalf("att row %d attends to the future (%d)", row, j)
						}
						s += float64(a)
					}
					if math.Abs(s-1) > 1e-6 {
						t.Fatalf("att row %d sums to %v", row, s)
					}
				}
				proj := uniform32(r, n*T*c, -1, 1)
				dqkv := uniform32(r, len(qkv), -1, 1) // must be overwritten
				be.AttentionBackward(dqkv, proj, qkv, att, n, T, c, heads)
				loss := func() float64 {
					var s float64
					for i, v := range attention64(qkv, n, T, c, heads) {
						s += float64(proj[i]) * v
					}
					return s
				}
				gradCheck(t, "dqkv", qkv, dqkv, someCoords(r, len(qkv), 80), smoothEps, smoothAtol, smoothRtol, loss)
			})
		}
	}
}

// lstmCell64 is the LSTM cell in float64: it returns h and c for the
// pre-activations (i, f, g, o) and cPrev (nil: zero).
func lstmCell64(pre, cPrev []float32, n, hd int) (h, c []float64) {
	sig := func(x float32) float64 { return 1 / (1 + math.Exp(-float64(x))) }
	h, c = make([]float64, n*hd), make([]float64, n*hd)
	for r := 0; r < n; r++ {
		g := pre[r*4*hd:]
		for j := 0; j < hd; j++ {
			i, f, gg, o := sig(g[j]), sig(g[hd+j]), math.Tanh(float64(g[2*hd+j])), sig(g[3*hd+j])
			cv := i * gg
			if cPrev != nil {
				cv += f * float64(cPrev[r*hd+j])
			}
			c[r*hd+j] = cv
			h[r*hd+j] = o * math.Tanh(cv)
		}
	}
	return h, c
}

func TestLSTMCell(t *testing.T) {
	const n, hd = 19, 6 // more than one block of rows
	for _, withPrev := range []bool{true, false} {
		for _, be := range testBackends() {
			t.Run(fmt.Sprintf("cPrev=%v/%s", withPrev, be.Kernel()), func(t *testing.T) {
				r := newRand(24)
				pre := uniform32(r, n*4*hd, -2, 2)
				var cPrev, dcPrev []float32
				if withPrev {
					cPrev = uniform32(r, n*hd, -1.5, 1.5)
					dcPrev = make([]float32, n*hd)
				}
				gates := clone32(pre)
				h, c, tc := make([]float32, n*hd), make([]float32, n*hd), make([]float32, n*hd)
				be.LSTMCellForward(h, c, tc, gates, cPrev, n, hd)
				wh, wc := lstmCell64(pre, cPrev, n, hd)
				for i := range wh {
					if math.Abs(float64(h[i])-wh[i]) > 1e-6 || math.Abs(float64(c[i])-wc[i]) > 1e-6*(1+math.Abs(wc[i])) {
						t.Fatalf("h, c [%d] = %.8g, %.8g; float64 %.8g, %.8g", i, h[i], c[i], wh[i], wc[i])
					}
					if math.Abs(float64(tc[i])-math.Tanh(float64(c[i]))) > 1e-6 {
						t.Fatalf("tanhC[%d] = %v for c = %v", i, tc[i], c[i])
					}
				}
				// L = Σ rh·h + Σ rc·c: dh = rh, and dc = rc is the gradient
				// reaching c from the next step.
				rh, rc := uniform32(r, n*hd, -1, 1), uniform32(r, n*hd, -1, 1)
				dg := make([]float32, n*4*hd)
				be.LSTMCellBackward(dg, dcPrev, rh, rc, gates, cPrev, tc, n, hd)
				loss := func() float64 {
					h, c := lstmCell64(pre, cPrev, n, hd)
					var s float64
					for i := range h {
						s += float64(rh[i])*h[i] + float64(rc[i])*c[i]
					}
					return s
				}
				gradCheck(t, "dgates", pre, dg, allCoords(n*4*hd), smoothEps, smoothAtol, smoothRtol, loss)
				if withPrev {
					gradCheck(t, "dcPrev", cPrev, dcPrev, allCoords(n*hd), smoothEps, smoothAtol, smoothRtol, loss)
				}
			})
		}
	}
}

func TestEmbedding(t *testing.T) {
	const n, T, c, vocab = 5, 7, 6, 9
	r := newRand(25)
	tokens := make([]int32, n*T)
	for i := range tokens {
		tokens[i] = int32(r.IntN(4)) // few distinct tokens: rows repeat
	}
	tokens[3] = vocab - 1
	wte, wpe := uniform32(r, vocab*c, -1, 1), uniform32(r, T*c, -1, 1)
	dout := uniform32(r, n*T*c, -1, 1)
	for _, be := range testBackends() {
		for _, withPos := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/pos=%v", be.Kernel(), withPos), func(t *testing.T) {
				pos := wpe
				if !withPos {
					pos = nil
				}
				out := make([]float32, n*T*c)
				be.EmbeddingForward(out, tokens, wte, pos, n, T, c)
				for row, tok := range tokens {
					for i := 0; i < c; i++ {
						want := wte[int(tok)*c+i]
						if withPos {
							want += wpe[(row%T)*c+i]
						}
						if out[row*c+i] != want {
							t.Fatalf("out[%d][%d] = %v, want %v", row, i, out[row*c+i], want)
						}
					}
				}
				// The gradient adds, in row order per element, so a float32
				// loop in the same order gives the same bits.
				dwte0, dwpe0 := uniform32(r, len(wte), -1, 1), uniform32(r, len(wpe), -1, 1)
				dwte, dwpe := clone32(dwte0), clone32(dwpe0)
				var dpos []float32
				if withPos {
					dpos = dwpe
				}
				be.EmbeddingBackward(dwte, dpos, dout, tokens, n, T, c)
				want := clone32(dwte0)
				for row, tok := range tokens {
					for i := 0; i < c; i++ {
						want[int(tok)*c+i] += dout[row*c+i]
					}
				}
				equalBits(t, "dwte", dwte, want)
				want = clone32(dwpe0)
				if withPos {
					for s := 0; s < n; s++ {
						for p := 0; p < T; p++ {
							for i := 0; i < c; i++ {
								want[p*c+i] += dout[(s*T+p)*c+i]
							}
						}
					}
				}
				equalBits(t, "dwpe", dwpe, want)
			})
		}
	}
	be := NewCPU(1)
	mustPanic(t, "token out of range", func() { be.EmbeddingForward(make([]float32, c), []int32{vocab}, wte, nil, 1, 1, c) })
	mustPanic(t, "negative token", func() { be.EmbeddingBackward(make([]float32, len(wte)), nil, make([]float32, c), []int32{-1}, 1, 1, c) })
}

func TestSoftmaxCrossEntropyIgnore(t *testing.T) {
	const n, classes = 5, 7
	r := newRand(26)
	logits := uniform32(r, n*classes, -3, 3)
	labels := []int32{2, -1, 6, 0, -1}
	for _, be := range testBackends() {
		probs, dl := make([]float32, n*classes), uniform32(r, n*classes, -1, 1)
		loss := be.SoftmaxCrossEntropyForward(probs, logits, labels, n, classes)
		be.SoftmaxCrossEntropyBackward(dl, probs, labels, n, classes, 0.5)
		var want float64
		for i, l := range labels {
			row := logits[i*classes : (i+1)*classes]
			var s float64
			for _, v := range row {
				s += math.Exp(float64(v))
			}
			for j, v := range row {
				p := math.Exp(float64(v)) / s
				if math.Abs(float64(probs[i*classes+j])-p) > 1e-7 {
					t.Errorf("%s: probs[%d][%d] = %v, want %v", be.Kernel(), i, j, probs[i*classes+j], p)
				}
				g := 0.5 * p
				if int32(j) == l {
					g -= 0.5
				}
				if l < 0 {
					g = 0
				}
				if math.Abs(float64(dl[i*classes+j])-g) > 1e-7 {
					t.Errorf("%s: dlogits[%d][%d] = %v, want %v", be.Kernel(), i, j, dl[i*classes+j], g)
				}
			}
			if l >= 0 {
				want += math.Log(s) - float64(row[l])
			}
		}
		if math.Abs(loss-want) > 1e-6*want {
			t.Errorf("%s: loss %v, want %v (ignoring rows labelled -1)", be.Kernel(), loss, want)
		}
		wantMatches := 0
		for i, l := range labels {
			if l >= 0 && argmax(logits[i*classes:(i+1)*classes]) == int(l) {
				wantMatches++
			}
		}
		if got := be.ArgmaxMatches(logits, labels, n, classes); got != wantMatches {
			t.Errorf("%s: %d matches, want %d", be.Kernel(), got, wantMatches)
		}
	}
	mustPanic(t, "label -2", func() { NewCPU(1).ArgmaxMatches(logits, []int32{0, -2, 0, 0, 0}, n, classes) })
}

// TestNNKernelsDeterministic runs every language-model kernel with one and
// with three workers on inputs large enough to be split, and requires the
// same bits.
func TestNNKernelsDeterministic(t *testing.T) {
	r := newRand(27)
	const n, T, c, heads, vocab = 4, 33, 64, 4, 50
	rows := n * T
	tokens := make([]int32, rows)
	for i := range tokens {
		tokens[i] = int32(r.IntN(vocab))
	}
	x := uniform32(r, rows*c, -2, 2)
	w, b := uniform32(r, c, 0.5, 1.5), uniform32(r, c, -1, 1)
	qkv := uniform32(r, rows*3*c, -1, 1)
	dout := uniform32(r, rows*c, -1, 1)
	wte, wpe := uniform32(r, vocab*c, -1, 1), uniform32(r, T*c, -1, 1)
	gates := uniform32(r, rows*4*c, -2, 2)
	cPrev := uniform32(r, rows*c, -1, 1)
	run := func(be Backend) [][]float32 {
		ln, mean, rstd := make([]float32, rows*c), make([]float32, rows), make([]float32, rows)
		be.LayerNormForward(ln, mean, rstd, x, w, b, rows, c)
		dx, dw, db := make([]float32, rows*c), make([]float32, c), make([]float32, c)
		be.LayerNormBackward(dx, dw, db, dout, x, w, mean, rstd, rows, c)
		out, att, dqkv := make([]float32, rows*c), make([]float32, n*heads*T*T), make([]float32, rows*3*c)
		be.AttentionForward(out, att, qkv, n, T, c, heads)
		be.AttentionBackward(dqkv, dout, qkv, att, n, T, c, heads)
		emb, dwte, dwpe := make([]float32, rows*c), make([]float32, vocab*c), make([]float32, T*c)
		be.EmbeddingForward(emb, tokens, wte, wpe, n, T, c)
		be.EmbeddingBackward(dwte, dwpe, dout, tokens, n, T, c)
		g, h, cc, tc := clone32(gates), make([]float32, rows*c), make([]float32, rows*c), make([]float32, rows*c)
		be.LSTMCellForward(h, cc, tc, g, cPrev, rows, c)
		dg, dcp := make([]float32, rows*4*c), make([]float32, rows*c)
		be.LSTMCellBackward(dg, dcp, dout, dout, g, cPrev, tc, rows, c)
		gl, dgl := make([]float32, rows*c), make([]float32, rows*c)
		be.GELUForward(gl, x)
		be.GELUBackward(dgl, dout, x)
		ss := []float32{float32(be.SumSquares(x))}
		return [][]float32{ln, mean, rstd, dx, dw, db, out, att, dqkv, emb, dwte, dwpe, g, h, cc, dg, dcp, gl, dgl, ss}
	}
	for _, pure := range []bool{false, true} {
		newBe := NewCPU
		if pure {
			newBe = NewCPUPureGo
		}
		want := run(newBe(1))
		got := run(newBe(3))
		for i := range want {
			equalBits(t, fmt.Sprintf("pure=%v output %d with 3 workers vs 1", pure, i), got[i], want[i])
		}
	}
}

func clone32(x []float32) []float32 { return append([]float32(nil), x...) }

// diff32 returns a − b: what a kernel added to a buffer that held b.
func diff32(a, b []float32) []float32 {
	d := make([]float32, len(a))
	for i := range a {
		d[i] = a[i] - b[i]
	}
	return d
}

// TestExpSub checks the softmax's exponentials, vector and scalar, for every
// length around the vector width (the AVX-512 kernel masks its tail).
func TestExpSub(t *testing.T) {
	r := newRand(28)
	kernels := map[string]*vecKernels{"go": {}}
	if v := bestVec(); v.expSub != nil {
		kernels["vector"] = &v
	}
	for name, vec := range kernels {
		for n := 0; n <= 50; n++ {
			src := uniform32(r, n, -30, 0)
			if n > 2 {
				src[1] = -100 // below the clamp: ~0
			}
			dst := make([]float32, n+1)
			dst[n] = 42 // past the end: must not be touched
			sum := expSub(vec, dst[:n], src, -1)
			var want float64
			for i, v := range src {
				e := math.Exp(float64(v) + 1)
				want += e
				if d := math.Abs(float64(dst[i]) - e); d > 3e-7*e+1e-37 {
					t.Fatalf("%s n=%d: exp(%g + 1) = %.9g, want %.9g", name, n, v, dst[i], e)
				}
			}
			if math.Abs(float64(sum)-want) > 1e-6*want || dst[n] != 42 {
				t.Fatalf("%s n=%d: sum %.9g, want %.9g; dst[n] = %v", name, n, sum, want, dst[n])
			}
		}
	}
}
