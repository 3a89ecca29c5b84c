package model

import (
	"fmt"
	"math"
)

// The kernels of the language models: embeddings, layer norm, GELU, residual
// adds, attention, the LSTM cell, and the optimizer's and clipping's
// elementwise work.

// ---- embeddings ----

type embFwdTask struct {
	out, wte, wpe []float32
	tokens        []int32
	t, c          int
}

func (t *embFwdTask) do(item, _ int) {
	rows := len(t.tokens)
	for r := item * rowsPerItem; r < min((item+1)*rowsPerItem, rows); r++ {
		out := t.out[r*t.c : (r+1)*t.c]
		tok := t.wte[int(t.tokens[r])*t.c:][:t.c]
		if t.wpe == nil {
			copy(out, tok)
			continue
		}
		pos := t.wpe[(r%t.t)*t.c:][:t.c]
		for i := range out {
			out[i] = tok[i] + pos[i]
		}
	}
}

// EmbeddingForward implements Backend. Items are blocks of rows.
func (c *CPU) EmbeddingForward(out []float32, tokens []int32, wte, wpe []float32, n, t, ch int) {
	rows := n * t
	checkLen("EmbeddingForward", "out", out, rows*ch)
	checkTokens("EmbeddingForward", tokens, rows, len(wte)/ch)
	if wpe != nil && len(wpe) < t*ch {
		panic(fmt.Sprintf("model: EmbeddingForward: wpe has %d elements, want at least %d", len(wpe), t*ch))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.embFwd = embFwdTask{out: out, wte: wte, wpe: wpe, tokens: tokens, t: t, c: ch}
	c.run(&c.embFwd, ceilDiv(rows, rowsPerItem), rows*ch)
	c.embFwd = embFwdTask{}
}

// embBwdTask: items [0, vocabItems) each own a range of token ids and scan
// all rows in order, adding those with a token in range; the items after
// them each own a range of positions of dwpe and sum over the sequences in
// order. Every gradient element is so summed in one fixed order.
type embBwdTask struct {
	dwte, dwpe, dout []float32
	tokens           []int32
	n, t, c          int
	vocab, perItem   int
	vocabItems       int
	posPerItem       int
}

func (t *embBwdTask) do(item, _ int) {
	if item < t.vocabItems {
		lo, hi := int32(item*t.perItem), int32(min((item+1)*t.perItem, t.vocab))
		for r, tok := range t.tokens {
			if tok < lo || tok >= hi {
				continue
			}
			d := t.dwte[int(tok)*t.c:][:t.c]
			for i, v := range t.dout[r*t.c : (r+1)*t.c] {
				d[i] += v
			}
		}
		return
	}
	p0 := (item - t.vocabItems) * t.posPerItem
	for p := p0; p < min(p0+t.posPerItem, t.t); p++ {
		d := t.dwpe[p*t.c : (p+1)*t.c]
		for s := 0; s < t.n; s++ {
			for i, v := range t.dout[(s*t.t+p)*t.c:][:t.c] {
				d[i] += v
			}
		}
	}
}

// EmbeddingBackward implements Backend.
func (c *CPU) EmbeddingBackward(dwte, dwpe, dout []float32, tokens []int32, n, t, ch int) {
	rows := n * t
	checkLen("EmbeddingBackward", "dout", dout, rows*ch)
	vocab := len(dwte) / ch
	checkTokens("EmbeddingBackward", tokens, rows, vocab)
	if dwpe != nil && len(dwpe) < t*ch {
		panic(fmt.Sprintf("model: EmbeddingBackward: dwpe has %d elements, want at least %d", len(dwpe), t*ch))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	tk := &c.embBwd
	*tk = embBwdTask{dwte: dwte, dwpe: dwpe, dout: dout, tokens: tokens, n: n, t: t, c: ch, vocab: vocab}
	// A fixed number of vocabulary ranges: items scan all tokens, so more
	// than a few per worker waste time.
	tk.vocabItems = min(vocab, 2*c.workers)
	tk.perItem = ceilDiv(vocab, tk.vocabItems)
	tk.vocabItems = ceilDiv(vocab, tk.perItem)
	items := tk.vocabItems
	if dwpe != nil {
		tk.posPerItem = max(1, ceilDiv(t, 4*c.workers))
		items += ceilDiv(t, tk.posPerItem)
	}
	c.run(tk, items, 2*rows*ch)
	*tk = embBwdTask{}
}

func checkTokens(op string, tokens []int32, n, vocab int) {
	if len(tokens) != n {
		panic(fmt.Sprintf("model: %s: %d tokens, want %d", op, len(tokens), n))
	}
	for i, tok := range tokens {
		if tok < 0 || int(tok) >= vocab {
			panic(fmt.Sprintf("model: %s: token %d at %d outside [0,%d)", op, tok, i, vocab))
		}
	}
}

// ---- layer norm ----

const lnEps = 1e-5

type lnFwdTask struct {
	out, mean, rstd, inp, weight, bias []float32
	c                                  int
}

// do normalises a block of rows. Mean and variance are accumulated in
// float64 (two passes, so no cancellation).
func (t *lnFwdTask) do(item, _ int) {
	rows := len(t.mean)
	for r := item * rowsPerItem; r < min((item+1)*rowsPerItem, rows); r++ {
		x := t.inp[r*t.c : (r+1)*t.c]
		var s float64
		for _, v := range x {
			s += float64(v)
		}
		m := s / float64(t.c)
		var ss float64
		for _, v := range x {
			d := float64(v) - m
			ss += d * d
		}
		rs := 1 / math.Sqrt(ss/float64(t.c)+lnEps)
		mf, rsf := float32(m), float32(rs)
		out := t.out[r*t.c : (r+1)*t.c]
		for i, v := range x {
			out[i] = (v-mf)*rsf*t.weight[i] + t.bias[i]
		}
		t.mean[r], t.rstd[r] = mf, rsf
	}
}

// LayerNormForward implements Backend. Items are blocks of rows.
func (c *CPU) LayerNormForward(out, mean, rstd, inp, weight, bias []float32, n, ch int) {
	checkLen("LayerNormForward", "inp", inp, n*ch)
	checkLen("LayerNormForward", "out", out, n*ch)
	checkLen("LayerNormForward", "mean", mean, n)
	checkLen("LayerNormForward", "rstd", rstd, n)
	checkLen("LayerNormForward", "weight", weight, ch)
	checkLen("LayerNormForward", "bias", bias, ch)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lnFwd = lnFwdTask{out: out, mean: mean, rstd: rstd, inp: inp, weight: weight, bias: bias, c: ch}
	c.run(&c.lnFwd, ceilDiv(n, rowsPerItem), 4*n*ch)
	c.lnFwd = lnFwdTask{}
}

// lnBwdTask: each item is a block of lnBlock rows (a constant, so the
// partition does not depend on the workers); it adds its rows' input
// gradients into dinp and writes its partial sums of dweight and dbias to
// its slot of parts, which are then added to the gradients in block order.
type lnBwdTask struct {
	dinp, dout, inp, weight, mean, rstd []float32
	parts                               []float32 // [blocks][2][c]
	c                                   int
}

const lnBlock = 32

func (t *lnBwdTask) do(item, _ int) {
	c := t.c
	rows := len(t.mean)
	dw := t.parts[item*2*c : item*2*c+c]
	db := t.parts[item*2*c+c : (item+1)*2*c]
	clear(dw)
	clear(db)
	for r := item * lnBlock; r < min((item+1)*lnBlock, rows); r++ {
		x := t.inp[r*c : (r+1)*c]
		dy := t.dout[r*c : (r+1)*c]
		dx := t.dinp[r*c : (r+1)*c]
		m, rs := t.mean[r], t.rstd[r]
		// dnorm = weight·dy; dx = rstd·(dnorm − mean(dnorm) − norm·mean(dnorm·norm))
		var sumD, sumDN float32
		for i, v := range dy {
			norm := (x[i] - m) * rs
			dn := t.weight[i] * v
			sumD += dn
			sumDN += dn * norm
			db[i] += v
			dw[i] += norm * v
		}
		meanD, meanDN := sumD/float32(c), sumDN/float32(c)
		for i, v := range dy {
			norm := (x[i] - m) * rs
			dn := t.weight[i] * v
			dx[i] += (dn - meanD - norm*meanDN) * rs
		}
	}
}

// LayerNormBackward implements Backend.
func (c *CPU) LayerNormBackward(dinp, dweight, dbias, dout, inp, weight, mean, rstd []float32, n, ch int) {
	checkLen("LayerNormBackward", "inp", inp, n*ch)
	checkLen("LayerNormBackward", "dout", dout, n*ch)
	checkLen("LayerNormBackward", "dinp", dinp, n*ch)
	checkLen("LayerNormBackward", "mean", mean, n)
	checkLen("LayerNormBackward", "rstd", rstd, n)
	checkLen("LayerNormBackward", "weight", weight, ch)
	checkLen("LayerNormBackward", "dweight", dweight, ch)
	checkLen("LayerNormBackward", "dbias", dbias, ch)
	c.mu.Lock()
	defer c.mu.Unlock()
	blocks := ceilDiv(n, lnBlock)
	if cap(c.lnParts) < blocks*2*ch {
		c.lnParts = make([]float32, blocks*2*ch)
	}
	parts := c.lnParts[:blocks*2*ch]
	c.lnBwd = lnBwdTask{dinp: dinp, dout: dout, inp: inp, weight: weight, mean: mean, rstd: rstd, parts: parts, c: ch}
	c.run(&c.lnBwd, blocks, 8*n*ch)
	c.lnBwd = lnBwdTask{}
	for b := 0; b < blocks; b++ {
		p := parts[b*2*ch : (b+1)*2*ch]
		for i := range dweight {
			dweight[i] += p[i]
			dbias[i] += p[ch+i]
		}
	}
}

// ---- elementwise: GELU, Add, Scale, SumSquares ----

type eltOp int

const (
	eltGELUFwd eltOp = iota
	eltGELUBwd
	eltAdd
	eltScale
	eltSumSq
)

// eltTask runs an elementwise kernel over fixed chunks of eltChunk elements.
type eltTask struct {
	vec      *vecKernels
	op       eltOp
	x, y, z  []float32
	s        float32
	partials []float64
}

func (t *eltTask) do(item, _ int) {
	lo := item * eltChunk
	hi := min(lo+eltChunk, len(t.x))
	switch t.op {
	case eltGELUFwd: // y = gelu(x)
		y := t.y[lo:hi]
		if f := t.vec.geluFwd; f != nil {
			f(y, t.x[lo:hi])
			break
		}
		for i, v := range t.x[lo:hi] {
			cdf, _ := geluCDF(v)
			y[i] = v * cdf
		}
	case eltGELUBwd: // y = z·gelu'(x), z = dout
		y, z := t.y[lo:hi], t.z[lo:hi]
		if f := t.vec.geluBwd; f != nil {
			f(y, z, t.x[lo:hi])
			break
		}
		for i, v := range t.x[lo:hi] {
			cdf, pdf := geluCDF(v)
			y[i] = z[i] * (cdf + v*pdf)
		}
	case eltAdd: // z = x + y
		y, z := t.y[lo:hi], t.z[lo:hi]
		for i, v := range t.x[lo:hi] {
			z[i] = v + y[i]
		}
	case eltScale:
		x := t.x[lo:hi]
		if t.s == 0 {
			clear(x) // as BLAS's beta = 0: a NaN or Inf does not survive
			break
		}
		for i := range x {
			x[i] *= t.s
		}
	case eltSumSq:
		var s float64
		for _, v := range t.x[lo:hi] {
			s += float64(v) * float64(v)
		}
		t.partials[item] = s
	}
}

func (c *CPU) elementwise(op eltOp, x, y, z []float32, s float32, cost int) {
	c.elt = eltTask{vec: &c.vec, op: op, x: x, y: y, z: z, s: s, partials: c.partials}
	c.run(&c.elt, ceilDiv(len(x), eltChunk), cost*len(x))
	c.elt = eltTask{}
}

// GELUForward implements Backend.
func (c *CPU) GELUForward(out, x []float32) {
	checkLen("GELUForward", "out", out, len(x))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.elementwise(eltGELUFwd, x, out, nil, 0, 20)
}

// GELUBackward implements Backend.
func (c *CPU) GELUBackward(dx, dout, x []float32) {
	checkLen("GELUBackward", "dx", dx, len(x))
	checkLen("GELUBackward", "dout", dout, len(x))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.elementwise(eltGELUBwd, x, dx, dout, 0, 24)
}

// Add implements Backend.
func (c *CPU) Add(out, a, b []float32) {
	checkLen("Add", "b", b, len(a))
	checkLen("Add", "out", out, len(a))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.elementwise(eltAdd, a, b, out, 0, 1)
}

// Scale implements Backend.
func (c *CPU) Scale(x []float32, s float32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.elementwise(eltScale, x, nil, nil, s, 1)
}

// SumSquares implements Backend: fixed chunks of eltChunk elements, each
// summed in float64 in order, then the chunks' sums in chunk order.
func (c *CPU) SumSquares(x []float32) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	chunks := ceilDiv(len(x), eltChunk)
	c.growPartials(chunks)
	c.elementwise(eltSumSq, x, nil, nil, 0, 2)
	return c.sumPartials(chunks)
}

// ---- attention: items are (sequence, head) pairs ----

// attnTask computes one head of one sequence per item with the serial GEMM
// and the worker's scratch, straight from and into the [n][t][3c] and
// [n][t][c] layouts (the GEMMs' leading dimensions do the head slicing, so
// nothing is permuted).
type attnTask struct {
	cpu           *CPU
	out, att, qkv []float32 // forward: out = attention(qkv); backward: out is dout
	dqkv          []float32 // backward only
	t, c, heads   int
	scale         float32
}

func (t *attnTask) slices(item int) (q, k, v, att []float32, seq, h, hs, ld int) {
	T, C := t.t, t.c
	seq, h = item/t.heads, item%t.heads
	hs, ld = C/t.heads, 3*C
	base := seq*T*3*C + h*hs
	span := (T-1)*ld + hs
	q = t.qkv[base:][:span]
	k = t.qkv[base+C:][:span]
	v = t.qkv[base+2*C:][:span]
	att = t.att[item*T*T:][:T*T]
	return
}

func (t *attnTask) forward(item, worker int) {
	q, k, v, att, seq, h, hs, ld := t.slices(item)
	T, C, cpu := t.t, t.c, t.cpu
	var op gemmOp
	// att = q·kᵀ/√hs over all (i, j); the future is masked below.
	op.set(cpu.kern, false, true, T, T, hs, t.scale, q, ld, k, ld, 0, att, T)
	cpu.gemmSerial(&op, worker, nil, nil)
	for i := 0; i < T; i++ {
		row := att[i*T : (i+1)*T]
		mx := row[0]
		for _, x := range row[1 : i+1] {
			mx = max(mx, x)
		}
		sum := expSub(&cpu.vec, row[:i+1], row[:i+1], mx)
		inv := 1 / sum
		for j := 0; j <= i; j++ {
			row[j] *= inv
		}
		clear(row[i+1:])
	}
	// y = att·v, written into the head's columns of out.
	out := t.out[seq*T*C+h*hs:][:(T-1)*C+hs]
	op.set(cpu.kern, false, false, T, hs, T, 1, att, T, v, ld, 0, out, C)
	cpu.gemmSerial(&op, worker, nil, nil)
}

func (t *attnTask) backward(item, worker int) {
	q, k, v, att, seq, h, hs, ld := t.slices(item)
	T, C, cpu := t.t, t.c, t.cpu
	base := seq*T*3*C + h*hs
	span := (T-1)*ld + hs
	dq, dk, dv := t.dqkv[base:][:span], t.dqkv[base+C:][:span], t.dqkv[base+2*C:][:span]
	dy := t.out[seq*T*C+h*hs:][:(T-1)*C+hs]
	datt := cpu.scratch[worker].attn.get(T * T)
	var op gemmOp
	// datt = dy·vᵀ; dv = attᵀ·dy
	op.set(cpu.kern, false, true, T, T, hs, 1, dy, C, v, ld, 0, datt, T)
	cpu.gemmSerial(&op, worker, nil, nil)
	op.set(cpu.kern, true, false, T, hs, T, 1, att, T, dy, C, 0, dv, ld)
	cpu.gemmSerial(&op, worker, nil, nil)
	// Softmax backward, row by row: dpre = att·(datt − Σ att·datt).
	for i := 0; i < T; i++ {
		a, d := att[i*T:(i+1)*T], datt[i*T:(i+1)*T]
		var dot float32
		for j := 0; j <= i; j++ {
			dot += a[j] * d[j]
		}
		for j := 0; j <= i; j++ {
			d[j] = a[j] * (d[j] - dot)
		}
		clear(d[i+1:])
	}
	// dq = dpre·k/√hs; dk = dpreᵀ·q/√hs
	op.set(cpu.kern, false, false, T, hs, T, t.scale, datt, T, k, ld, 0, dq, ld)
	cpu.gemmSerial(&op, worker, nil, nil)
	op.set(cpu.kern, true, false, T, hs, T, t.scale, datt, T, q, ld, 0, dk, ld)
	cpu.gemmSerial(&op, worker, nil, nil)
}

func (t *attnTask) do(item, worker int) {
	if t.dqkv == nil {
		t.forward(item, worker)
	} else {
		t.backward(item, worker)
	}
}

func checkAttention(op string, t, ch, heads int) {
	if heads <= 0 || ch%heads != 0 || t <= 0 {
		panic(fmt.Sprintf("model: %s: %d heads do not divide width %d (t=%d)", op, heads, ch, t))
	}
}

// reserveAttention grows every worker's scratch for the products of one head
// (t×t×hs, t×hs×t and their transposes) and the t×t attention gradient.
func (c *CPU) reserveAttention(t, hs int) {
	mr, nr := c.kern.mr, c.kern.nr
	d := max(t, hs)
	c.reserve(ceilDiv(t, mr)*mr*d, ceilDiv(d, nr)*nr*d, t*t)
}

// AttentionForward implements Backend.
func (c *CPU) AttentionForward(out, att, qkv []float32, n, t, ch, heads int) {
	checkAttention("AttentionForward", t, ch, heads)
	checkLen("AttentionForward", "qkv", qkv, n*t*3*ch)
	checkLen("AttentionForward", "out", out, n*t*ch)
	checkLen("AttentionForward", "att", att, n*heads*t*t)
	if n == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	hs := ch / heads
	c.reserveAttention(t, hs)
	c.attnFwd = attnTask{cpu: c, out: out, att: att, qkv: qkv, t: t, c: ch, heads: heads, scale: float32(1 / math.Sqrt(float64(hs)))}
	c.run(&c.attnFwd, n*heads, 2*n*t*t*ch)
	c.attnFwd = attnTask{}
}

// AttentionBackward implements Backend.
func (c *CPU) AttentionBackward(dqkv, dout, qkv, att []float32, n, t, ch, heads int) {
	checkAttention("AttentionBackward", t, ch, heads)
	checkLen("AttentionBackward", "qkv", qkv, n*t*3*ch)
	checkLen("AttentionBackward", "dqkv", dqkv, n*t*3*ch)
	checkLen("AttentionBackward", "dout", dout, n*t*ch)
	checkLen("AttentionBackward", "att", att, n*heads*t*t)
	if n == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	hs := ch / heads
	c.reserveAttention(t, hs)
	c.attnBwd = attnTask{cpu: c, out: dout, att: att, qkv: qkv, dqkv: dqkv, t: t, c: ch, heads: heads, scale: float32(1 / math.Sqrt(float64(hs)))}
	c.run(&c.attnBwd, n*heads, 4*n*t*t*ch)
	c.attnBwd = attnTask{}
}

// ---- LSTM cell: items are blocks of rows (sequences) ----

type lstmTask struct {
	backward                  bool
	h, c, tanhC, gates, cPrev []float32
	dgates, dcPrev, dh, dc    []float32
	n, hidden                 int
}

func (t *lstmTask) do(item, _ int) {
	H := t.hidden
	for r := item * rowsPerItem; r < min((item+1)*rowsPerItem, t.n); r++ {
		g := t.gates[r*4*H : (r+1)*4*H]
		gi, gf, gg, gO := g[:H], g[H:2*H], g[2*H:3*H], g[3*H:]
		tc := t.tanhC[r*H : (r+1)*H]
		var cp []float32
		if t.cPrev != nil {
			cp = t.cPrev[r*H : (r+1)*H]
		}
		if !t.backward {
			h, c := t.h[r*H:(r+1)*H], t.c[r*H:(r+1)*H]
			for j := 0; j < H; j++ {
				i, f, gv, o := sigmoid64(gi[j]), sigmoid64(gf[j]), tanh64(gg[j]), sigmoid64(gO[j])
				gi[j], gf[j], gg[j], gO[j] = i, f, gv, o
				cv := i * gv
				if cp != nil {
					cv += f * cp[j]
				}
				c[j] = cv
				tc[j] = tanh64(cv)
				h[j] = o * tc[j]
			}
			continue
		}
		d := t.dgates[r*4*H : (r+1)*4*H]
		di, df, dg, dO := d[:H], d[H:2*H], d[2*H:3*H], d[3*H:]
		dh := t.dh[r*H : (r+1)*H]
		var dc, dcp []float32
		if t.dc != nil {
			dc = t.dc[r*H : (r+1)*H]
		}
		if t.dcPrev != nil {
			dcp = t.dcPrev[r*H : (r+1)*H]
		}
		for j := 0; j < H; j++ {
			i, f, gv, o, tcj := gi[j], gf[j], gg[j], gO[j], tc[j]
			// The gradient reaching c: through h = o·tanh(c), and from
			// the next step.
			dct := dh[j] * o * (1 - tcj*tcj)
			if dc != nil {
				dct += dc[j]
			}
			var cpj float32
			if cp != nil {
				cpj = cp[j]
			}
			di[j] = dct * gv * i * (1 - i)
			df[j] = dct * cpj * f * (1 - f)
			dg[j] = dct * i * (1 - gv*gv)
			dO[j] = dh[j] * tcj * o * (1 - o)
			if dcp != nil {
				dcp[j] = dct * f
			}
		}
	}
}

// LSTMCellForward implements Backend.
func (c *CPU) LSTMCellForward(h, cell, tanhC, gates, cPrev []float32, n, hidden int) {
	checkLen("LSTMCellForward", "gates", gates, n*4*hidden)
	checkLen("LSTMCellForward", "h", h, n*hidden)
	checkLen("LSTMCellForward", "c", cell, n*hidden)
	checkLen("LSTMCellForward", "tanhC", tanhC, n*hidden)
	if cPrev != nil {
		checkLen("LSTMCellForward", "cPrev", cPrev, n*hidden)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lstmFwd = lstmTask{h: h, c: cell, tanhC: tanhC, gates: gates, cPrev: cPrev, n: n, hidden: hidden}
	c.run(&c.lstmFwd, ceilDiv(n, rowsPerItem), 40*n*hidden)
	c.lstmFwd = lstmTask{}
}

// LSTMCellBackward implements Backend.
func (c *CPU) LSTMCellBackward(dgates, dcPrev, dh, dc, gates, cPrev, tanhC []float32, n, hidden int) {
	checkLen("LSTMCellBackward", "gates", gates, n*4*hidden)
	checkLen("LSTMCellBackward", "dgates", dgates, n*4*hidden)
	checkLen("LSTMCellBackward", "dh", dh, n*hidden)
	checkLen("LSTMCellBackward", "tanhC", tanhC, n*hidden)
	for _, b := range []struct {
		name string
		x    []float32
	}{{"dc", dc}, {"cPrev", cPrev}, {"dcPrev", dcPrev}} {
		if b.x != nil {
			checkLen("LSTMCellBackward", b.name, b.x, n*hidden)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lstmBwd = lstmTask{backward: true, dgates: dgates, dcPrev: dcPrev, dh: dh, dc: dc, gates: gates, cPrev: cPrev, tanhC: tanhC, n: n, hidden: hidden}
	c.run(&c.lstmBwd, ceilDiv(n, rowsPerItem), 16*n*hidden)
	c.lstmBwd = lstmTask{}
}

// ---- AdamW: items are chunks ----

type adamwTask struct {
	p, g, m, v []float32
	h          AdamWStep
}

// do updates one chunk exactly as torch.optim.AdamW (foreach=False) does, in
// float32 with the scalars rounded once:
//
//	p = p·(1 − lr·λ)
//	m = β₁·m + (1 − β₁)·g
//	v = β₂·v + (1 − β₂)·g²
//	p = p − stepSize·m / (√v / √(1 − β₂ᵗ) + ε)
//
// Each product is rounded before it is added (explicit conversions), so no
// compiler may fuse it into a multiply-add.
func (t *adamwTask) do(item, _ int) {
	lo := item * eltChunk
	hi := min(lo+eltChunk, len(t.p))
	h := t.h
	p, g, m, v := t.p[lo:hi], t.g[lo:hi], t.m[lo:hi], t.v[lo:hi]
	for i := range p {
		gi := g[i]
		pi := float32(p[i] * h.DecayFactor)
		mi := float32(h.Beta1*m[i]) + float32(h.OneMinusBeta1*gi)
		vi := float32(h.Beta2*v[i]) + float32(float32(h.OneMinusBeta2*gi)*gi)
		denom := float32(math.Sqrt(float64(vi)))/h.BiasCorrection2Sqrt + h.Eps
		m[i], v[i] = mi, vi
		p[i] = pi - float32(h.StepSize*float32(mi/denom))
	}
}

// AdamW implements Backend.
func (c *CPU) AdamW(params, grads, m, v []float32, h AdamWStep) {
	checkLen("AdamW", "grads", grads, len(params))
	checkLen("AdamW", "m", m, len(params))
	checkLen("AdamW", "v", v, len(params))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.adamw = adamwTask{p: params, g: grads, m: m, v: v, h: h}
	c.run(&c.adamw, ceilDiv(len(params), eltChunk), 10*len(params))
	c.adamw = adamwTask{}
}
