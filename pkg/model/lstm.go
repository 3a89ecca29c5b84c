package model

import (
	"fmt"
	"math"
)

// LSTM is a language model: a token embedding, Layers LSTM layers and a
// linear head, trained with softmax cross-entropy on the next token. It
// matches this PyTorch module (state_dict names and shapes included):
//
//	class LSTMLM(nn.Module):
//	    def __init__(s, vocab, dim, hidden, layers):
//	        super().__init__()
//	        s.embedding = nn.Embedding(vocab, dim)
//	        s.lstm = nn.LSTM(dim, hidden, layers, batch_first=True)
//	        s.head = nn.Linear(hidden, vocab)
//	    def forward(s, idx):                 # idx [N, T]
//	        return s.head(s.lstm(s.embedding(idx))[0])
//
// Every sequence starts from a zero state. With BPTT < Ctx the state runs on
// through the whole sequence but gradients are truncated every BPTT steps
// (truncated backpropagation through time: PyTorch's equivalent runs the
// sequence in windows of BPTT steps, detaching h and c between them).
//
// Internally every activation is time-major ([t][n][...]), so that one step
// of the recurrence reads and writes contiguous rows; the input projection
// of all steps is one GEMM before the recurrence, and the weight gradients
// of all steps one GEMM after it.
type LSTM struct {
	flatModel
	cfg Config

	maxRows int // largest n·t the buffers hold
	tok     []int32
	tgt     []int32
	emb     []float32   // [t][n][dim]
	layers  []lstmLayer // per layer
	logits  []float32   // [t][n][vocab]
	probs   []float32
	dlogits []float32
	dh      [2][]float32 // [t][n][hidden]: gradient w.r.t. a layer's output, alternating between layers
	demb    []float32    // [t][n][dim]
}

// lstmLayer holds one layer's tensors and activations, time-major.
type lstmLayer struct {
	wih, whh, bih, bhh     []float32 // parameters
	dwih, dwhh, dbih, dbhh []float32 // their gradients
	offset                 int       // of weight_ih, the layer's first tensor

	gates []float32 // [t][n][4h]: pre-activations, then activations (i, f, g, o)
	h, c  []float32 // [t][n][h]
	tanhC []float32 // [t][n][h]
	dg    []float32 // [t][n][4h]
	dc    [2][]float32
}

// newLSTM builds the LSTM with PyTorch's default initialisation: the
// embedding ~ N(0, 1); every LSTM weight and bias ~ U(−1/√hidden, 1/√hidden);
// the head's weight and bias ~ U(−1/√hidden, 1/√hidden). Values are drawn
// from initSource tensor by tensor in Tensors order, row-major within each.
func newLSTM(cfg Config, be Backend, seed uint64) *LSTM {
	V, C, H := cfg.Vocab, cfg.Dim, cfg.Hidden
	specs := []tensorSpec{{"embedding.weight", []int{V, C}}}
	for l := 0; l < cfg.Layers; l++ {
		in := C
		if l > 0 {
			in = H
		}
		specs = append(specs,
			tensorSpec{fmt.Sprintf("lstm.weight_ih_l%d", l), []int{4 * H, in}},
			tensorSpec{fmt.Sprintf("lstm.weight_hh_l%d", l), []int{4 * H, H}},
			tensorSpec{fmt.Sprintf("lstm.bias_ih_l%d", l), []int{4 * H}},
			tensorSpec{fmt.Sprintf("lstm.bias_hh_l%d", l), []int{4 * H}})
	}
	specs = append(specs, tensorSpec{"head.weight", []int{V, H}}, tensorSpec{"head.bias", []int{V}})
	m := &LSTM{flatModel: newFlatModel(be, specs...), cfg: cfg, layers: make([]lstmLayer, cfg.Layers)}
	for l := range m.layers {
		ly := &m.layers[l]
		name := func(what string) string { return fmt.Sprintf("lstm.%s_l%d", what, l) }
		ly.wih, ly.dwih = m.p(name("weight_ih")), m.g(name("weight_ih"))
		ly.whh, ly.dwhh = m.p(name("weight_hh")), m.g(name("weight_hh"))
		ly.bih, ly.dbih = m.p(name("bias_ih")), m.g(name("bias_ih"))
		ly.bhh, ly.dbhh = m.p(name("bias_hh")), m.g(name("bias_hh"))
		ly.offset = m.tensor(name("weight_ih")).Offset
	}

	src := newInitSource(seed)
	bound := 1 / math.Sqrt(float64(H))
	for _, t := range m.tensors {
		if t.Name == "embedding.weight" {
			src.fillNormal(t.Slice(m.params), 1)
			continue
		}
		src.fillUniform(t.Slice(m.params), bound)
	}
	return m
}

var _ Model = (*LSTM)(nil)

// Name returns "lstm".
func (m *LSTM) Name() string { return "lstm" }

// Config implements Model.
func (m *LSTM) Config() Config { return m.cfg }

// ensure sizes the buffers for rows = n·t positions.
func (m *LSTM) ensure(rows int) {
	if rows <= m.maxRows {
		return
	}
	m.maxRows = rows
	V, C, H := m.cfg.Vocab, m.cfg.Dim, m.cfg.Hidden
	m.tok = m.growInt32(m.tok, rows)
	m.tgt = m.growInt32(m.tgt, rows)
	m.emb = m.grow(m.emb, rows*C)
	for l := range m.layers {
		ly := &m.layers[l]
		ly.gates = m.grow(ly.gates, rows*4*H)
		ly.h = m.grow(ly.h, rows*H)
		ly.c = m.grow(ly.c, rows*H)
		ly.tanhC = m.grow(ly.tanhC, rows*H)
		ly.dg = m.grow(ly.dg, rows*4*H)
	}
	m.logits = m.grow(m.logits, rows*V)
	m.probs = m.grow(m.probs, rows*V)
	m.dlogits = m.grow(m.dlogits, rows*V)
	m.dh[0] = m.grow(m.dh[0], rows*H)
	m.dh[1] = m.grow(m.dh[1], rows*H)
	m.demb = m.grow(m.demb, rows*C)
}

// ForwardBackward implements Model.
func (m *LSTM) ForwardBackward(b Batch, scale float32) (Stats, error) {
	t, err := checkLMBatch("lstm", m.cfg, b)
	if err != nil {
		return Stats{}, err
	}
	m.ready.start(len(m.grads))
	defer m.ready.finish()
	if b.N == 0 {
		return Stats{}, nil
	}
	st := m.forward(b, t)
	m.backward(b.N, t, scale)
	return st, nil
}

// Evaluate implements Model: the loss over the target tokens and how many
// of them are the model's top prediction.
func (m *LSTM) Evaluate(b Batch) (Stats, error) {
	t, err := checkLMBatch("lstm", m.cfg, b)
	if err != nil || b.N == 0 {
		return Stats{}, err
	}
	return m.forward(b, t), nil
}

// forward runs the batch up to the loss, keeping what backward needs.
func (m *LSTM) forward(b Batch, t int) Stats {
	n := b.N
	rows := n * t
	m.ensure(rows)
	V, C, H := m.cfg.Vocab, m.cfg.Dim, m.cfg.Hidden
	be := m.be
	// Time-major copies of the tokens and targets.
	tok, tgt := m.tok[:rows], m.tgt[:rows]
	for s := 0; s < n; s++ {
		for p := 0; p < t; p++ {
			tok[p*n+s] = b.Tokens[s*t+p]
			tgt[p*n+s] = b.Targets[s*t+p]
		}
	}
	emb := m.emb[:rows*C]
	be.EmbeddingForward(emb, tok, m.p("embedding.weight"), nil, rows, 1, C)

	in, inW := emb, C
	for l := range m.layers {
		ly := &m.layers[l]
		gates, h, c, tc := ly.gates[:rows*4*H], ly.h[:rows*H], ly.c[:rows*H], ly.tanhC[:rows*H]
		// Input projections of every step at once, then both biases.
		be.Gemm(false, true, rows, 4*H, inW, 1, in, inW, ly.wih, inW, 0, gates, 4*H)
		be.BiasForward(gates, ly.bih, rows, 1)
		be.BiasForward(gates, ly.bhh, rows, 1)
		whh := ly.whh
		for p := 0; p < t; p++ {
			g := gates[p*n*4*H : (p+1)*n*4*H]
			var cPrev []float32
			if p > 0 {
				be.Gemm(false, true, n, 4*H, H, 1, h[(p-1)*n*H:p*n*H], H, whh, H, 1, g, 4*H)
				cPrev = c[(p-1)*n*H : p*n*H]
			}
			be.LSTMCellForward(h[p*n*H:(p+1)*n*H], c[p*n*H:(p+1)*n*H], tc[p*n*H:(p+1)*n*H], g, cPrev, n, H)
		}
		in, inW = h, H
	}
	logits, probs := m.logits[:rows*V], m.probs[:rows*V]
	be.Gemm(false, true, rows, V, H, 1, in, H, m.p("head.weight"), H, 0, logits, V)
	be.BiasForward(logits, m.p("head.bias"), rows, 1)
	st := Stats{Terms: Batch{Targets: tgt}.Terms()}
	st.Loss = be.SoftmaxCrossEntropyForward(probs, logits, tgt, rows, V)
	st.Correct = be.ArgmaxMatches(logits, tgt, rows, V)
	return st
}

// backward runs the last forward in reverse, adding scale·∂(loss sum) into
// the gradients and reporting each layer's gradients as final.
func (m *LSTM) backward(n, t int, scale float32) {
	rows := n * t
	V, C, H := m.cfg.Vocab, m.cfg.Dim, m.cfg.Hidden
	be := m.be
	dlogits := m.dlogits[:rows*V]
	be.SoftmaxCrossEntropyBackward(dlogits, m.probs[:rows*V], m.tgt[:rows], rows, V, scale)
	top := m.layers[len(m.layers)-1].h[:rows*H]
	be.Gemm(true, false, V, H, rows, 1, dlogits, V, top, H, 1, m.g("head.weight"), H)
	be.BiasBackward(m.g("head.bias"), dlogits, rows, 1)
	dh := m.dh[0][:rows*H]
	be.Gemm(false, false, rows, H, V, 1, dlogits, V, m.p("head.weight"), H, 0, dh, H)
	m.ready.final(m.tensor("head.weight").Offset)

	for l := len(m.layers) - 1; l >= 0; l-- {
		ly := &m.layers[l]
		gates, h, c, tc, dg := ly.gates[:rows*4*H], ly.h[:rows*H], ly.c[:rows*H], ly.tanhC[:rows*H], ly.dg[:rows*4*H]
		whh := ly.whh
		ly.dc[0] = m.grow(ly.dc[0], n*H)
		ly.dc[1] = m.grow(ly.dc[1], n*H)
		var dcNext []float32 // gradient reaching c_p from step p+1; nil: none
		for p := t - 1; p >= 0; p-- {
			// Gradients flow into step p−1 unless p starts a BPTT window.
			into := p > 0 && p%m.cfg.BPTT != 0
			var cPrev, dcPrev []float32
			if p > 0 {
				cPrev = c[(p-1)*n*H : p*n*H]
			}
			if into {
				dcPrev = ly.dc[p%2]
			}
			g := dg[p*n*4*H : (p+1)*n*4*H]
			be.LSTMCellBackward(g, dcPrev, dh[p*n*H:(p+1)*n*H], dcNext, gates[p*n*4*H:(p+1)*n*4*H], cPrev, tc[p*n*H:(p+1)*n*H], n, H)
			if into {
				be.Gemm(false, false, n, H, 4*H, 1, g, 4*H, whh, H, 1, dh[(p-1)*n*H:p*n*H], H)
			}
			dcNext = dcPrev
		}
		// Weight gradients over all steps: W_hh sees h_{p−1} at steps p ≥ 1
		// (also across a truncation, where h_{p−1} is a constant input).
		if t > 1 {
			be.Gemm(true, false, 4*H, H, (t-1)*n, 1, dg[n*4*H:], 4*H, h[:(t-1)*n*H], H, 1, ly.dwhh, H)
		}
		be.BiasBackward(ly.dbih, dg, rows, 1)
		be.BiasBackward(ly.dbhh, dg, rows, 1)
		var in []float32
		inW := H
		if l > 0 {
			in = m.layers[l-1].h[:rows*H]
		} else {
			in, inW = m.emb[:rows*C], C
		}
		be.Gemm(true, false, 4*H, inW, rows, 1, dg, 4*H, in, inW, 1, ly.dwih, inW)
		m.ready.final(ly.offset)
		wih := ly.wih
		if l > 0 {
			next := m.dh[(len(m.layers)-l)%2][:rows*H]
			be.Gemm(false, false, rows, H, 4*H, 1, dg, 4*H, wih, H, 0, next, H)
			dh = next
			continue
		}
		demb := m.demb[:rows*C]
		be.Gemm(false, false, rows, C, 4*H, 1, dg, 4*H, wih, C, 0, demb, C)
		be.EmbeddingBackward(m.g("embedding.weight"), nil, demb, m.tok[:rows], rows, 1, C)
	}
}

// checkLMBatch validates a language model's batch and returns its sequence
// length.
func checkLMBatch(name string, cfg Config, b Batch) (int, error) {
	if b.N < 0 {
		return 0, errorf(name, "negative sample count %d", b.N)
	}
	t := b.T
	if t == 0 {
		t = cfg.Ctx
	}
	if t < 1 || t > cfg.Ctx {
		return 0, errorf(name, "sequence length %d outside [1, ctx=%d]", t, cfg.Ctx)
	}
	if len(b.X) != 0 {
		return 0, errorf(name, "the batch has %d image values; language models read tokens", len(b.X))
	}
	if len(b.Tokens) != b.N*t {
		return 0, errorf(name, "%d tokens for %d sequences of %d", len(b.Tokens), b.N, t)
	}
	if len(b.Targets) != b.N*t {
		return 0, errorf(name, "%d targets for %d sequences of %d", len(b.Targets), b.N, t)
	}
	for i, tok := range b.Tokens {
		if tok < 0 || int(tok) >= cfg.Vocab {
			return 0, errorf(name, "token %d at %d is outside [0,%d)", tok, i, cfg.Vocab)
		}
	}
	for i, y := range b.Targets {
		if y < -1 || int(y) >= cfg.Vocab {
			return 0, errorf(name, "target %d at %d is outside [0,%d) and not -1", y, i, cfg.Vocab)
		}
	}
	return t, nil
}
