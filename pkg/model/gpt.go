package model

import (
	"fmt"
	"math"
)

// GPT is a decoder-only transformer language model in the shape of nanoGPT's
// (bias=True, dropout 0): token and position embeddings, Layers pre-norm
// blocks of causal multi-head self-attention and a GELU MLP, a final layer
// norm and a linear head without bias. Tensor names and shapes are nanoGPT's
// state_dict (nn.Linear weights [out, in]), so that an export loads into
// nanoGPT's GPT class:
//
//	transformer.wte.weight            [vocab, dim]
//	transformer.wpe.weight            [ctx, dim]
//	transformer.h.{i}.ln_1.weight     [dim]        (and .bias)
//	transformer.h.{i}.attn.c_attn.weight [3·dim, dim] (and .bias [3·dim])
//	transformer.h.{i}.attn.c_proj.weight [dim, dim]   (and .bias)
//	transformer.h.{i}.ln_2.weight     [dim]        (and .bias)
//	transformer.h.{i}.mlp.c_fc.weight [hidden, dim]   (and .bias)
//	transformer.h.{i}.mlp.c_proj.weight [dim, hidden] (and .bias)
//	transformer.ln_f.weight           [dim]        (and .bias)
//	lm_head.weight                    [vocab, dim] (absent when tied)
//
// GELU is the exact (erf) one, nn.GELU()'s default, as in nanoGPT. With
// TieEmbeddings the head is transformer.wte.weight itself (nanoGPT's
// default); an export then writes it under both names.
type GPT struct {
	flatModel
	cfg Config

	blocks []gptBlock // per block: views of its tensors

	maxRows int
	acts    []gptLayerActs
	// Buffers shared by the layers.
	emb     []float32 // [rows][c]: the residual stream entering block 0
	proj    []float32 // [rows][c]: a branch's output before the residual add
	lnf     []float32
	lnfMean []float32
	lnfRstd []float32
	logits  []float32 // [rows][vocab]
	probs   []float32
	dlogits []float32
	dres    []float32 // [rows][c]: gradient of the residual stream
	dln     []float32 // [rows][c]
	dbig    []float32 // [rows][hidden]
	dqkv    []float32 // [rows][3c]
	datty   []float32 // [rows][c]
}

// gptBlock views one block's tensors in Params (p), Grads (g), with the
// offsets the gradient-ready hook reports.
type gptBlock struct {
	p, g gptBlockTensors
	off  struct{ ln1, attn, proj, ln2, fc, fcProj int }
}

type gptBlockTensors struct {
	ln1W, ln1B, attnW, attnB, projW, projB, ln2W, ln2B, fcW, fcB, fcProjW, fcProjB []float32
}

// gptLayerActs is what one block keeps for the backward pass.
type gptLayerActs struct {
	ln1, ln1Mean, ln1Rstd []float32
	qkv                   []float32 // [rows][3c]
	atty                  []float32 // [rows][c]: attention output before c_proj
	att                   []float32 // [n][heads][t][t]
	res2                  []float32 // [rows][c]: stream after the attention branch
	ln2, ln2Mean, ln2Rstd []float32
	fch                   []float32 // [rows][hidden]: c_fc output before GELU
	fcg                   []float32 // [rows][hidden]: after GELU
	res3                  []float32 // [rows][c]: the block's output
}

// newGPT builds the GPT with nanoGPT's initialisation: every linear weight
// and both embeddings ~ N(0, 0.02²), the residual projections
// (attn.c_proj.weight, mlp.c_proj.weight) ~ N(0, (0.02/√(2·layers))²), biases
// 0, layer-norm weights 1 and biases 0. Normal values are drawn from
// initSource tensor by tensor in Tensors order, row-major within each.
func newGPT(cfg Config, be Backend, seed uint64) *GPT {
	V, T, C, Hd := cfg.Vocab, cfg.Ctx, cfg.Dim, cfg.Hidden
	specs := []tensorSpec{{"transformer.wte.weight", []int{V, C}}, {"transformer.wpe.weight", []int{T, C}}}
	for l := 0; l < cfg.Layers; l++ {
		p := fmt.Sprintf("transformer.h.%d.", l)
		specs = append(specs,
			tensorSpec{p + "ln_1.weight", []int{C}}, tensorSpec{p + "ln_1.bias", []int{C}},
			tensorSpec{p + "attn.c_attn.weight", []int{3 * C, C}}, tensorSpec{p + "attn.c_attn.bias", []int{3 * C}},
			tensorSpec{p + "attn.c_proj.weight", []int{C, C}}, tensorSpec{p + "attn.c_proj.bias", []int{C}},
			tensorSpec{p + "ln_2.weight", []int{C}}, tensorSpec{p + "ln_2.bias", []int{C}},
			tensorSpec{p + "mlp.c_fc.weight", []int{Hd, C}}, tensorSpec{p + "mlp.c_fc.bias", []int{Hd}},
			tensorSpec{p + "mlp.c_proj.weight", []int{C, Hd}}, tensorSpec{p + "mlp.c_proj.bias", []int{C}})
	}
	specs = append(specs, tensorSpec{"transformer.ln_f.weight", []int{C}}, tensorSpec{"transformer.ln_f.bias", []int{C}})
	if !cfg.TieEmbeddings {
		specs = append(specs, tensorSpec{"lm_head.weight", []int{V, C}})
	}
	m := &GPT{flatModel: newFlatModel(be, specs...), cfg: cfg, acts: make([]gptLayerActs, cfg.Layers)}
	for l := 0; l < cfg.Layers; l++ {
		t := func(what string) TensorInfo { return m.tensor(fmt.Sprintf("transformer.h.%d.%s", l, what)) }
		views := func(buf []float32) gptBlockTensors {
			v := func(what string) []float32 { return t(what).Slice(buf) }
			return gptBlockTensors{v("ln_1.weight"), v("ln_1.bias"), v("attn.c_attn.weight"), v("attn.c_attn.bias"),
				v("attn.c_proj.weight"), v("attn.c_proj.bias"), v("ln_2.weight"), v("ln_2.bias"),
				v("mlp.c_fc.weight"), v("mlp.c_fc.bias"), v("mlp.c_proj.weight"), v("mlp.c_proj.bias")}
		}
		blk := gptBlock{p: views(m.params), g: views(m.grads)}
		blk.off.ln1, blk.off.attn, blk.off.proj = t("ln_1.weight").Offset, t("attn.c_attn.weight").Offset, t("attn.c_proj.weight").Offset
		blk.off.ln2, blk.off.fc, blk.off.fcProj = t("ln_2.weight").Offset, t("mlp.c_fc.weight").Offset, t("mlp.c_proj.weight").Offset
		m.blocks = append(m.blocks, blk)
	}

	src := newInitSource(seed)
	projStd := 0.02 / math.Sqrt(2*float64(cfg.Layers))
	for _, t := range m.tensors {
		v := t.Slice(m.params)
		switch {
		case hasSuffix(t.Name, "c_proj.weight"):
			src.fillNormal(v, projStd)
		case hasSuffix(t.Name, "ln_1.weight"), hasSuffix(t.Name, "ln_2.weight"), hasSuffix(t.Name, "ln_f.weight"):
			fill(v, 1)
		case hasSuffix(t.Name, ".bias"):
			// zero
		default:
			src.fillNormal(v, 0.02)
		}
	}
	return m
}

func hasSuffix(s, suffix string) bool {
	return len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix
}

var _ Model = (*GPT)(nil)

// Name returns "gpt".
func (m *GPT) Name() string { return "gpt" }

// Config implements Model.
func (m *GPT) Config() Config { return m.cfg }

// head returns the output layer's weight: lm_head.weight, or the token
// embedding when tied.
func (m *GPT) head(buf []float32) []float32 {
	if m.cfg.TieEmbeddings {
		return m.tensor("transformer.wte.weight").Slice(buf)
	}
	return m.tensor("lm_head.weight").Slice(buf)
}

// ensure sizes the buffers for n sequences of t positions.
func (m *GPT) ensure(n, t int) {
	rows := n * t
	if rows <= m.maxRows && len(m.acts[0].att) >= n*m.cfg.Heads*t*t {
		return
	}
	rows = max(rows, m.maxRows)
	m.maxRows = rows
	V, C, Hd := m.cfg.Vocab, m.cfg.Dim, m.cfg.Hidden
	att := max(n*m.cfg.Heads*t*t, len(m.acts[0].att))
	for l := range m.acts {
		a := &m.acts[l]
		a.ln1, a.ln1Mean, a.ln1Rstd = m.grow(a.ln1, rows*C), m.grow(a.ln1Mean, rows), m.grow(a.ln1Rstd, rows)
		a.qkv = m.grow(a.qkv, rows*3*C)
		a.atty = m.grow(a.atty, rows*C)
		a.att = m.grow(a.att, att)
		a.res2 = m.grow(a.res2, rows*C)
		a.ln2, a.ln2Mean, a.ln2Rstd = m.grow(a.ln2, rows*C), m.grow(a.ln2Mean, rows), m.grow(a.ln2Rstd, rows)
		a.fch = m.grow(a.fch, rows*Hd)
		a.fcg = m.grow(a.fcg, rows*Hd)
		a.res3 = m.grow(a.res3, rows*C)
	}
	m.emb = m.grow(m.emb, rows*C)
	m.proj = m.grow(m.proj, rows*C)
	m.lnf, m.lnfMean, m.lnfRstd = m.grow(m.lnf, rows*C), m.grow(m.lnfMean, rows), m.grow(m.lnfRstd, rows)
	m.logits = m.grow(m.logits, rows*V)
	m.probs = m.grow(m.probs, rows*V)
	m.dlogits = m.grow(m.dlogits, rows*V)
	m.dres = m.grow(m.dres, rows*C)
	m.dln = m.grow(m.dln, rows*C)
	m.dbig = m.grow(m.dbig, rows*Hd)
	m.dqkv = m.grow(m.dqkv, rows*3*C)
	m.datty = m.grow(m.datty, rows*C)
}

// ForwardBackward implements Model.
func (m *GPT) ForwardBackward(b Batch, scale float32) (Stats, error) {
	t, err := checkLMBatch("gpt", m.cfg, b)
	if err != nil {
		return Stats{}, err
	}
	m.ready.start(len(m.grads))
	defer m.ready.finish()
	if b.N == 0 {
		return Stats{}, nil
	}
	st := m.forward(b, t)
	m.backward(b, t, scale)
	return st, nil
}

// Evaluate implements Model: the loss over the target tokens and how many
// of them are the model's top prediction.
func (m *GPT) Evaluate(b Batch) (Stats, error) {
	t, err := checkLMBatch("gpt", m.cfg, b)
	if err != nil || b.N == 0 {
		return Stats{}, err
	}
	return m.forward(b, t), nil
}

// linearForward sets y = x·wᵀ (+ b unless nil) for x [rows][in], w [out][in].
func (f *flatModel) linearForward(y, x, w, b []float32, rows, in, out int) {
	f.be.Gemm(false, true, rows, out, in, 1, x, in, w, in, 0, y, out)
	if b != nil {
		f.be.BiasForward(y, b, rows, 1)
	}
}

// linearBackward adds dyᵀ·x to dw and, unless db is nil, dy's column sums to
// db; unless dx is nil it sets dx = dy·w.
func (f *flatModel) linearBackward(dx, dw, db, dy, x, w []float32, rows, in, out int) {
	f.be.Gemm(true, false, out, in, rows, 1, dy, out, x, in, 1, dw, in)
	if db != nil {
		f.be.BiasBackward(db, dy, rows, 1)
	}
	if dx != nil {
		f.be.Gemm(false, false, rows, in, out, 1, dy, out, w, in, 0, dx, in)
	}
}

func (m *GPT) forward(b Batch, t int) Stats {
	n := b.N
	rows := n * t
	m.ensure(n, t)
	V, C, Hd, NH := m.cfg.Vocab, m.cfg.Dim, m.cfg.Hidden, m.cfg.Heads
	be := m.be
	x := m.emb[:rows*C]
	be.EmbeddingForward(x, b.Tokens, m.p("transformer.wte.weight"), m.p("transformer.wpe.weight"), n, t, C)
	proj := m.proj[:rows*C]
	for l := range m.acts {
		a, p := &m.acts[l], &m.blocks[l].p
		ln1, qkv, atty, res2 := a.ln1[:rows*C], a.qkv[:rows*3*C], a.atty[:rows*C], a.res2[:rows*C]
		be.LayerNormForward(ln1, a.ln1Mean[:rows], a.ln1Rstd[:rows], x, p.ln1W, p.ln1B, rows, C)
		m.linearForward(qkv, ln1, p.attnW, p.attnB, rows, C, 3*C)
		be.AttentionForward(atty, a.att[:n*NH*t*t], qkv, n, t, C, NH)
		m.linearForward(proj, atty, p.projW, p.projB, rows, C, C)
		be.Add(res2, x, proj)

		ln2, fch, fcg, res3 := a.ln2[:rows*C], a.fch[:rows*Hd], a.fcg[:rows*Hd], a.res3[:rows*C]
		be.LayerNormForward(ln2, a.ln2Mean[:rows], a.ln2Rstd[:rows], res2, p.ln2W, p.ln2B, rows, C)
		m.linearForward(fch, ln2, p.fcW, p.fcB, rows, C, Hd)
		be.GELUForward(fcg, fch)
		m.linearForward(proj, fcg, p.fcProjW, p.fcProjB, rows, Hd, C)
		be.Add(res3, res2, proj)
		x = res3
	}
	lnf := m.lnf[:rows*C]
	be.LayerNormForward(lnf, m.lnfMean[:rows], m.lnfRstd[:rows], x, m.p("transformer.ln_f.weight"), m.p("transformer.ln_f.bias"), rows, C)
	logits, probs := m.logits[:rows*V], m.probs[:rows*V]
	m.linearForward(logits, lnf, m.head(m.params), nil, rows, C, V)
	st := Stats{Terms: b.Terms()}
	st.Loss = be.SoftmaxCrossEntropyForward(probs, logits, b.Targets, rows, V)
	st.Correct = be.ArgmaxMatches(logits, b.Targets, rows, V)
	return st
}

func (m *GPT) backward(b Batch, t int, scale float32) {
	n := b.N
	rows := n * t
	V, C, Hd, NH := m.cfg.Vocab, m.cfg.Dim, m.cfg.Hidden, m.cfg.Heads
	be := m.be
	dlogits, dres, dln := m.dlogits[:rows*V], m.dres[:rows*C], m.dln[:rows*C]
	be.SoftmaxCrossEntropyBackward(dlogits, m.probs[:rows*V], b.Targets, rows, V, scale)
	m.linearBackward(dln, m.head(m.grads), nil, dlogits, m.lnf[:rows*C], m.head(m.params), rows, C, V)
	if !m.cfg.TieEmbeddings {
		m.ready.final(m.tensor("lm_head.weight").Offset)
	}
	// The stream's gradient starts at the final layer norm's input.
	be.Scale(dres, 0)
	top := m.emb[:rows*C]
	if len(m.acts) > 0 {
		top = m.acts[len(m.acts)-1].res3[:rows*C]
	}
	be.LayerNormBackward(dres, m.g("transformer.ln_f.weight"), m.g("transformer.ln_f.bias"), dln, top,
		m.p("transformer.ln_f.weight"), m.lnfMean[:rows], m.lnfRstd[:rows], rows, C)
	m.ready.final(m.tensor("transformer.ln_f.weight").Offset)

	dbig, dqkv, datty := m.dbig[:rows*Hd], m.dqkv[:rows*3*C], m.datty[:rows*C]
	for l := len(m.acts) - 1; l >= 0; l-- {
		a, blk := &m.acts[l], &m.blocks[l]
		p, g := &blk.p, &blk.g
		x := m.emb[:rows*C]
		if l > 0 {
			x = m.acts[l-1].res3[:rows*C]
		}
		// MLP branch: res3 = res2 + c_proj(gelu(c_fc(ln_2(res2)))).
		m.linearBackward(dbig, g.fcProjW, g.fcProjB, dres, a.fcg[:rows*Hd], p.fcProjW, rows, Hd, C)
		m.ready.final(blk.off.fcProj)
		be.GELUBackward(dbig, dbig, a.fch[:rows*Hd])
		m.linearBackward(dln, g.fcW, g.fcB, dbig, a.ln2[:rows*C], p.fcW, rows, C, Hd)
		m.ready.final(blk.off.fc)
		be.LayerNormBackward(dres, g.ln2W, g.ln2B, dln, a.res2[:rows*C], p.ln2W, a.ln2Mean[:rows], a.ln2Rstd[:rows], rows, C)
		m.ready.final(blk.off.ln2)
		// Attention branch: res2 = x + c_proj(attn(c_attn(ln_1(x)))).
		m.linearBackward(datty, g.projW, g.projB, dres, a.atty[:rows*C], p.projW, rows, C, C)
		m.ready.final(blk.off.proj)
		be.AttentionBackward(dqkv, datty, a.qkv[:rows*3*C], a.att[:n*NH*t*t], n, t, C, NH)
		m.linearBackward(dln, g.attnW, g.attnB, dqkv, a.ln1[:rows*C], p.attnW, rows, C, 3*C)
		m.ready.final(blk.off.attn)
		be.LayerNormBackward(dres, g.ln1W, g.ln1B, dln, x, p.ln1W, a.ln1Mean[:rows], a.ln1Rstd[:rows], rows, C)
		m.ready.final(blk.off.ln1)
	}
	be.EmbeddingBackward(m.g("transformer.wte.weight"), m.g("transformer.wpe.weight"), dres, b.Tokens, n, t, C)
}
