package model

import (
	"fmt"
	"math"
)

// The reference CNN, layer by layer, as in PyTorch:
//
//	conv1 = Conv2d(1, 32, 3, padding=1);  ReLU; MaxPool2d(2)   1×28×28 → 32×14×14
//	conv2 = Conv2d(32, 64, 3, padding=1); ReLU; MaxPool2d(2)  → 64×7×7
//	flatten (C, H, W order)                                   → 3136
//	fc1 = Linear(3136, 128); ReLU; fc2 = Linear(128, 10); cross-entropy
const (
	// CNNInputSize is the number of float32 values per sample: one 1×28×28
	// image, already normalised by the caller.
	CNNInputSize = 28 * 28
	// CNNClasses is the number of classes; labels are in [0, CNNClasses).
	CNNClasses = 10

	c1Out   = 32
	c2Out   = 64
	flatLen = c2Out * 7 * 7 // 3136, fc1's input
	hidden  = 128

	// cnnMaxChunk bounds the samples run through the layers at once: larger
	// calls are split, so that the activations stay under cnnMaxChunk·0.9 MB
	// however large an n the caller passes (an evaluation over a whole test
	// set, say).
	cnnMaxChunk = 128
)

// The two convolutions' windows.
func conv1Geom() ConvGeom { return ConvGeom{C: 1, H: 28, W: 28, KH: 3, KW: 3, Pad: 1, Stride: 1} }
func conv2Geom() ConvGeom { return ConvGeom{C: c1Out, H: 14, W: 14, KH: 3, KW: 3, Pad: 1, Stride: 1} }

// CNN is the reference convolutional network for 28×28 single-channel images.
// It implements Model.
type CNN struct {
	flatModel
	p, g cnnTensors // views into params and grads

	fwd cnnForwardActs
	bwd cnnBackwardActs
}

// cnnTensors views one flat buffer (parameters or gradients) as the CNN's
// tensors.
type cnnTensors struct {
	conv1W, conv1B, conv2W, conv2B, fc1W, fc1B, fc2W, fc2B []float32
}

// cnnForwardActs holds what the forward pass keeps for the backward pass,
// sized for n samples.
type cnnForwardActs struct {
	col1   []float32 // [n][9][784]   im2col of the input
	a1     []float32 // [n][32][28·28] conv1 after ReLU
	p1     []float32 // [n][32][14·14] after pooling
	arg1   []int32
	col2   []float32 // [n][288][196]
	a2     []float32 // [n][64][14·14] conv2 after ReLU
	p2     []float32 // [n][64][7·7]  = [n][3136], already in PyTorch's flatten order
	arg2   []int32
	h      []float32 // [n][128] fc1 after ReLU
	logits []float32 // [n][10]
	probs  []float32 // [n][10]
}

// cnnBackwardActs holds the activation gradients, sized for n samples.
type cnnBackwardActs struct {
	dlogits []float32
	dh      []float32
	dp2     []float32
	da2     []float32
	dcol2   []float32
	dp1     []float32
	da1     []float32
	dwPart  []float32 // [n][OC][C·KH·KW]: each image's share of a conv weight gradient
	ones    []float32 // [n] ones
}

// NewCNN returns the CNN with PyTorch's default initialisation for Conv2d and
// Linear: every weight and bias ~ U(−1/√fan_in, 1/√fan_in), fan_in being the
// inputs per output (C·KH·KW for a convolution). Values are drawn from the
// stream described at initSource, tensor by tensor in Tensors order and
// row-major within each, so a seed pins every parameter bit.
func NewCNN(be Backend, seed uint64) *CNN {
	// Each layer's weight is followed by its bias, as in PyTorch's state_dict.
	layers := []struct {
		name   string
		weight []int // [out, in...]
	}{
		{"conv1", []int{c1Out, 1, 3, 3}},
		{"conv2", []int{c2Out, c1Out, 3, 3}},
		{"fc1", []int{hidden, flatLen}},
		{"fc2", []int{CNNClasses, hidden}},
	}
	var specs []tensorSpec
	for _, l := range layers {
		specs = append(specs, tensorSpec{l.name + ".weight", l.weight}, tensorSpec{l.name + ".bias", l.weight[:1]})
	}
	m := &CNN{flatModel: newFlatModel(be, specs...)}
	m.p, m.g = m.views(m.params), m.views(m.grads)
	table := m.tensors

	src := newInitSource(seed)
	for i, l := range layers {
		fanIn := 1 // inputs per output: C·KH·KW, or in_features
		for _, d := range l.weight[1:] {
			fanIn *= d
		}
		bound := 1 / math.Sqrt(float64(fanIn))
		src.fillUniform(table[2*i].Slice(m.params), bound)
		src.fillUniform(table[2*i+1].Slice(m.params), bound)
	}
	return m
}

var _ Model = (*CNN)(nil)

func (m *CNN) views(buf []float32) cnnTensors {
	s := func(i int) []float32 { return m.tensors[i].Slice(buf) }
	return cnnTensors{s(0), s(1), s(2), s(3), s(4), s(5), s(6), s(7)}
}

// Name returns "cnn".
func (m *CNN) Name() string { return "cnn" }

// Config implements Model.
func (m *CNN) Config() Config { return Config{Name: "cnn"} }

// ForwardBackward implements Model. b.X is [N][1][28][28] and b.Targets holds
// N labels in [0, 10). Batches of more than 128 samples run in chunks of 128,
// in order, to bound memory; the gradient-ready hook fires during the last.
func (m *CNN) ForwardBackward(b Batch, scale float32) (Stats, error) {
	if err := m.checkBatch(b); err != nil {
		return Stats{}, err
	}
	n, x, y := b.N, b.X, b.Targets
	st := Stats{Terms: n}
	m.ready.start(len(m.grads))
	for lo := 0; lo < n; lo += cnnMaxChunk {
		k := min(cnnMaxChunk, n-lo)
		m.forward(x[lo*CNNInputSize:(lo+k)*CNNInputSize], k)
		logits, labels := m.fwd.logits[:k*CNNClasses], y[lo:lo+k]
		st.Loss += m.be.SoftmaxCrossEntropyForward(m.fwd.probs[:k*CNNClasses], logits, labels, k, CNNClasses)
		st.Correct += m.be.ArgmaxMatches(logits, labels, k, CNNClasses)
		m.backward(labels, k, scale, lo+k == n)
	}
	m.ready.finish()
	return st, nil
}

// Evaluate implements Model: the loss and the number of images classified
// correctly.
func (m *CNN) Evaluate(b Batch) (Stats, error) {
	if err := m.checkBatch(b); err != nil {
		return Stats{}, err
	}
	st := Stats{Terms: b.N}
	for lo := 0; lo < b.N; lo += cnnMaxChunk {
		k := min(cnnMaxChunk, b.N-lo)
		m.forward(b.X[lo*CNNInputSize:(lo+k)*CNNInputSize], k)
		logits, labels := m.fwd.logits[:k*CNNClasses], b.Targets[lo:lo+k]
		st.Loss += m.be.SoftmaxCrossEntropyForward(m.fwd.probs[:k*CNNClasses], logits, labels, k, CNNClasses)
		st.Correct += m.be.ArgmaxMatches(logits, labels, k, CNNClasses)
	}
	return st, nil
}

func (m *CNN) checkBatch(b Batch) error {
	if err := m.checkInput(b.X, b.N); err != nil {
		return err
	}
	if len(b.Targets) != b.N {
		return fmt.Errorf("model: cnn: %d labels for %d samples", len(b.Targets), b.N)
	}
	for i, l := range b.Targets {
		if l < 0 || l >= CNNClasses {
			return fmt.Errorf("model: cnn: label %d of sample %d is outside [0,%d)", l, i, CNNClasses)
		}
	}
	if len(b.Tokens) != 0 {
		return fmt.Errorf("model: cnn: the batch has %d tokens; the CNN reads images (X)", len(b.Tokens))
	}
	return nil
}

// Predict writes the argmax class of each of n images of x into out. Ties go
// to the lowest class.
func (m *CNN) Predict(x []float32, n int, out []int32) error {
	if err := m.checkInput(x, n); err != nil {
		return err
	}
	if len(out) != n {
		return fmt.Errorf("model: cnn: output has room for %d predictions, want %d", len(out), n)
	}
	for lo := 0; lo < n; lo += cnnMaxChunk {
		k := min(cnnMaxChunk, n-lo)
		m.forward(x[lo*CNNInputSize:(lo+k)*CNNInputSize], k)
		for i := 0; i < k; i++ {
			out[lo+i] = int32(argmax(m.fwd.logits[i*CNNClasses : (i+1)*CNNClasses]))
		}
	}
	return nil
}

func (m *CNN) checkInput(x []float32, n int) error {
	if n < 0 {
		return fmt.Errorf("model: cnn: negative sample count %d", n)
	}
	if len(x) != n*CNNInputSize {
		return fmt.Errorf("model: cnn: %d input values for %d samples, want %d (%d per 1×28×28 sample)", len(x), n, n*CNNInputSize, CNNInputSize)
	}
	return nil
}

// forward runs n ≤ cnnMaxChunk samples up to the logits, keeping what
// backward needs.
func (m *CNN) forward(x []float32, n int) {
	m.fwd.ensure(&m.flatModel, n)
	a, p, be := &m.fwd, &m.p, m.be

	m.convForward(conv1Geom(), c1Out, p.conv1W, p.conv1B, a.col1, x, a.a1, n)
	be.ReLUForward(a.a1, a.a1)
	be.MaxPool2x2Forward(a.p1, a.arg1, a.a1, n*c1Out, 28, 28)

	m.convForward(conv2Geom(), c2Out, p.conv2W, p.conv2B, a.col2, a.p1, a.a2, n)
	be.ReLUForward(a.a2, a.a2)
	be.MaxPool2x2Forward(a.p2, a.arg2, a.a2, n*c2Out, 14, 14)

	m.linearForward(a.h, a.p2, p.fc1W, p.fc1B, n, flatLen, hidden)
	be.ReLUForward(a.h, a.h)
	m.linearForward(a.logits, a.h, p.fc2W, p.fc2B, n, hidden, CNNClasses)
}

// backward runs the layers of the last forward in reverse, adding the
// parameter gradients of scale·(loss sum) into m.grads. The scale enters once,
// at the logits; everything after is linear in it. On the last chunk of a
// call it reports each layer's gradients as final once they are.
func (m *CNN) backward(y []int32, n int, scale float32, last bool) {
	m.bwd.ensure(&m.flatModel, n)
	a, d, p, g, be := &m.fwd, &m.bwd, &m.p, &m.g, m.be
	final := func(tensor int) {
		if last {
			m.ready.final(m.tensors[tensor].Offset)
		}
	}

	be.SoftmaxCrossEntropyBackward(d.dlogits, a.probs, y, n, CNNClasses, scale)
	m.linearBackward(d.dh, g.fc2W, g.fc2B, d.dlogits, a.h, p.fc2W, n, hidden, CNNClasses)
	final(6) // fc2
	be.ReLUBackward(d.dh, d.dh, a.h)
	m.linearBackward(d.dp2, g.fc1W, g.fc1B, d.dh, a.p2, p.fc1W, n, flatLen, hidden)
	final(4) // fc1

	be.MaxPool2x2Backward(d.da2, d.dp2, a.arg2, n*c2Out, 14, 14)
	be.ReLUBackward(d.da2, d.da2, a.a2)
	m.convBackward(conv2Geom(), c2Out, d.dp1, d.dcol2, g.conv2W, g.conv2B, d.da2, a.col2, p.conv2W, n)
	final(2) // conv2

	be.MaxPool2x2Backward(d.da1, d.dp1, a.arg1, n*c1Out, 28, 28)
	be.ReLUBackward(d.da1, d.da1, a.a1)
	// The input needs no gradient: skip conv1's dx (and its col buffer).
	m.convBackward(conv1Geom(), c1Out, nil, nil, g.conv1W, g.conv1B, d.da1, a.col1, p.conv1W, n)
	final(0) // conv1
}

// linearForward sets y = x·wᵀ + b for x [n][in] and w [out][in] (nn.Linear's
// layout).
func (m *CNN) linearForward(y, x, w, b []float32, n, in, out int) {
	m.be.Gemm(false, true, n, out, in, 1, x, in, w, in, 0, y, out)
	m.be.BiasForward(y, b, n, 1)
}

// linearBackward adds dyᵀ·x to dw and the column sums of dy to db, and, unless
// dx is nil, sets dx = dy·w.
func (m *CNN) linearBackward(dx, dw, db, dy, x, w []float32, n, in, out int) {
	m.be.Gemm(true, false, out, in, n, 1, dy, out, x, in, 1, dw, in)
	m.be.BiasBackward(db, dy, n, 1)
	if dx != nil {
		m.be.Gemm(false, false, n, in, out, 1, dy, out, w, in, 0, dx, in)
	}
}

// convForward sets y = conv(x, w) + b for n NCHW images via im2col: per image,
// y[OC][OH·OW] = w[OC][C·KH·KW] · col[C·KH·KW][OH·OW].
func (m *CNN) convForward(g ConvGeom, outC int, w, b, col, x, y []float32, n int) {
	rows, cols := g.ColRows(), g.ColCols()
	m.be.Im2Col(col, x, n, g)
	m.be.GemmStridedBatched(false, false, outC, cols, rows, 1, w, rows, 0, col, cols, rows*cols, 0, y, cols, outC*cols, n)
	m.be.BiasForward(y, b, n, cols)
}

// convBackward adds the gradients of w and b; unless dx is nil it also sets dx
// through dcol. The images' contributions to dw are added in image order.
func (m *CNN) convBackward(g ConvGeom, outC int, dx, dcol, dw, db, dy, col, w []float32, n int) {
	rows, cols := g.ColRows(), g.ColCols()
	// dw += Σᵢ dyᵢ·colᵢᵀ: each image's product in one batched GEMM (one
	// image per worker at a time), then their sum, in image order, as the
	// product of a row of ones with the stacked shares.
	d := &m.bwd
	d.dwPart = m.grow(d.dwPart, n*outC*rows)
	if len(d.ones) < n {
		d.ones = m.be.Alloc(n)
		fill(d.ones, 1)
	}
	part, ones := d.dwPart, d.ones[:n]
	m.be.GemmStridedBatched(false, true, outC, rows, cols, 1, dy, cols, outC*cols, col, cols, rows*cols, 0, part, rows, outC*rows, n)
	m.be.Gemm(false, false, 1, outC*rows, n, 1, ones, n, part, outC*rows, 1, dw, outC*rows)
	m.be.BiasBackward(db, dy, n, cols)
	if dx != nil {
		m.be.GemmStridedBatched(true, false, rows, cols, outC, 1, w, rows, 0, dy, cols, outC*cols, 0, dcol, cols, rows*cols, n)
		m.be.Col2Im(dx, dcol, n, g)
	}
}

// ensure sizes the buffers for n samples. They grow to the largest n seen and
// are resliced, never reallocated, for smaller ones.
func (a *cnnForwardActs) ensure(f *flatModel, n int) {
	g1, g2 := conv1Geom(), conv2Geom()
	a.col1 = f.grow(a.col1, n*g1.ColRows()*g1.ColCols())
	a.a1 = f.grow(a.a1, n*c1Out*28*28)
	a.p1 = f.grow(a.p1, n*c1Out*14*14)
	a.arg1 = f.growInt32(a.arg1, n*c1Out*14*14)
	a.col2 = f.grow(a.col2, n*g2.ColRows()*g2.ColCols())
	a.a2 = f.grow(a.a2, n*c2Out*14*14)
	a.p2 = f.grow(a.p2, n*flatLen)
	a.arg2 = f.growInt32(a.arg2, n*flatLen)
	a.h = f.grow(a.h, n*hidden)
	a.logits = f.grow(a.logits, n*CNNClasses)
	a.probs = f.grow(a.probs, n*CNNClasses)
}

func (d *cnnBackwardActs) ensure(f *flatModel, n int) {
	g2 := conv2Geom()
	d.dlogits = f.grow(d.dlogits, n*CNNClasses)
	d.dh = f.grow(d.dh, n*hidden)
	d.dp2 = f.grow(d.dp2, n*flatLen)
	d.da2 = f.grow(d.da2, n*c2Out*14*14)
	d.dcol2 = f.grow(d.dcol2, n*g2.ColRows()*g2.ColCols())
	d.dp1 = f.grow(d.dp1, n*c1Out*14*14)
	d.da1 = f.grow(d.da1, n*c1Out*28*28)
}
