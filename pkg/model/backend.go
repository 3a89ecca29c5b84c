package model

import "fmt"

// Backend is the set of compute kernels the models are written against, at the
// granularity of llm.c's kernels: each call is one whole-batch operation that
// reads and writes caller-provided buffers and allocates nothing once its
// scratch space has grown to the largest call seen. Models own every buffer
// (allocated through Alloc and AllocInt32); a backend owns only its threads
// and scratch (CPU) or, later, its streams (CUDA).
//
// Naming: a layer's pair of kernels is XxxForward / XxxBackward. Backward
// kernels that produce a parameter gradient ADD into it (gradients accumulate
// across calls, see Model.ForwardBackward). Activation gradients are
// overwritten, except where a kernel says it adds (LayerNormBackward adds
// into dinp, as llm.c's does, because a residual stream always sums its
// branches). Gemm follows BLAS: beta=0 overwrites, beta=1 accumulates.
//
// Buffers of the wrong length are programming errors: kernels panic with a
// message naming the buffer rather than return an error.
//
// Every kernel must be deterministic: the same inputs give bit-identical
// outputs on every call, whatever the number of threads.
//
// A device backend (CUDA) implements the same interface with buffers in
// memory both the host and the device can address (cudaMallocManaged), so
// that a []float32 from Alloc is a device pointer too; kernels that return a
// value to the host (the loss, a norm) synchronise.
type Backend interface {
	// Name identifies the backend in logs, e.g. "cpu".
	Name() string

	// Alloc returns a zeroed buffer of n float32s that the backend's kernels
	// can read and write. AllocInt32 does the same for int32s (token ids,
	// labels, argmax indices).
	Alloc(n int) []float32
	AllocInt32(n int) []int32

	// Gemm computes C = alpha*op(A)*op(B) + beta*C on row-major matrices,
	// where op(A) is m×k, op(B) is k×n and C is m×n; op(X) is X or Xᵀ as
	// transA/transB say. lda, ldb and ldc are the row strides of A, B and C as
	// stored. As in BLAS, when beta is 0 C is not read and when alpha is 0 A
	// and B are not read.
	Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)
	// GemmStridedBatched is batch independent Gemms (cuBLAS's
	// gemmStridedBatched): matrix i of A starts at a[i*strideA], and so on. A
	// stride of 0 uses one matrix for the whole batch; the C matrices must not
	// overlap.
	GemmStridedBatched(transA, transB bool, m, n, k int, alpha float32, a []float32, lda, strideA int, b []float32, ldb, strideB int, beta float32, c []float32, ldc, strideC int, batch int)

	// Im2Col unfolds n images x, [n][C][H][W], into col, [n][C·KH·KW][OH·OW],
	// so that a convolution becomes, per image, W[OC][C·KH·KW] × col. The row
	// order (c, kh, kw) is PyTorch's weight layout [OC][C][KH][KW] flattened.
	// Taps that fall in the padding are 0.
	Im2Col(col, x []float32, n int, g ConvGeom)
	// Col2Im is the adjoint of Im2Col: it overwrites dx, [n][C][H][W], with the
	// sum of every col entry onto the input pixel it was copied from.
	Col2Im(dx, col []float32, n int, g ConvGeom)

	// MaxPool2x2Forward pools planes of h×w (n·C planes for an NCHW batch)
	// with a 2×2 window and stride 2, dropping a trailing odd row or column
	// like PyTorch's floor mode. y is [planes][h/2][w/2]; argmax records, for
	// each output, the index within its input plane of the chosen element (the
	// first maximum in row-major order; NaN wins, as in PyTorch).
	MaxPool2x2Forward(y []float32, argmax []int32, x []float32, planes, h, w int)
	// MaxPool2x2Backward overwrites dx, [planes][h][w], routing each dy to the
	// input that argmax recorded and 0 elsewhere.
	MaxPool2x2Backward(dx, dy []float32, argmax []int32, planes, h, w int)

	// ReLUForward sets y = max(x, 0), keeping NaN (and mapping −0 to +0).
	// y and x may be the same slice.
	ReLUForward(y, x []float32)
	// ReLUBackward sets dx = dy where the forward output y > 0, else 0.
	// dx and dy may be the same slice.
	ReLUBackward(dx, dy, y []float32)

	// BiasForward adds bias[c] to x, [n][len(bias)][inner] (inner is 1 for a
	// linear layer and H·W for a convolution).
	BiasForward(x, bias []float32, n, inner int)
	// BiasBackward adds to dbias[c] the sum of dy, [n][len(dbias)][inner],
	// over n and inner.
	BiasBackward(dbias, dy []float32, n, inner int)

	// SoftmaxCrossEntropyForward writes probs = softmax(logits) row by row
	// ([n][classes]) and returns Σᵢ −log probs[i][labels[i]]: exponentials in
	// float32 (as PyTorch's), each row's log-sum-exp and the total in
	// float64. A label of −1 marks a row without a loss term (PyTorch's
	// ignore_index); its probs are still written.
	SoftmaxCrossEntropyForward(probs, logits []float32, labels []int32, n, classes int) float64
	// SoftmaxCrossEntropyBackward overwrites dlogits with the gradient of
	// scale·(the loss sum) with respect to the logits: scale·(probs − onehot),
	// and 0 on rows labelled −1.
	SoftmaxCrossEntropyBackward(dlogits, probs []float32, labels []int32, n, classes int, scale float32)
	// ArgmaxMatches returns how many of the n rows of x, [n][classes], have
	// their first maximum at labels[i] (rows labelled −1 never match).
	ArgmaxMatches(x []float32, labels []int32, n, classes int) int

	// EmbeddingForward sets out[i] = wte[tokens[i]] + wpe[i mod t] for the n·t
	// rows of width c (wpe nil: no position term). Tokens must lie in
	// [0, vocab), vocab = len(wte)/c.
	EmbeddingForward(out []float32, tokens []int32, wte, wpe []float32, n, t, c int)
	// EmbeddingBackward adds dout's rows into the rows of dwte the tokens
	// selected and, unless dwpe is nil, into dwpe by position. Each row of
	// dwte sums its contributions in token order.
	EmbeddingBackward(dwte, dwpe, dout []float32, tokens []int32, n, t, c int)

	// LayerNormForward normalises each of the n rows of inp, [n][c], to zero
	// mean and unit variance (biased, eps 1e-5, as nn.LayerNorm) and sets
	// out = norm·weight + bias, recording each row's mean and 1/std.
	LayerNormForward(out, mean, rstd, inp, weight, bias []float32, n, c int)
	// LayerNormBackward ADDS the input gradient into dinp and adds the
	// weight and bias gradients into dweight and dbias.
	LayerNormBackward(dinp, dweight, dbias, dout, inp, weight, mean, rstd []float32, n, c int)

	// GELUForward sets out = x·Φ(x), the exact GELU of nn.GELU() (Φ is the
	// standard normal CDF). out and x may be the same slice.
	GELUForward(out, x []float32)
	// GELUBackward sets dx = dout·(Φ(x) + x·φ(x)) for the forward input x. dx
	// and dout may be the same slice.
	GELUBackward(dx, dout, x []float32)

	// Add sets out = a + b elementwise (the residual connection); out may be
	// a or b.
	Add(out, a, b []float32)

	// AttentionForward is causal multi-head self-attention over n sequences
	// of t positions. qkv is [n][t][3c] (the queries, keys and values of all
	// heads side by side, as c_attn produces them); out, [n][t][c], gets each
	// head's output in its hs = c/heads columns. att, [n][heads][t][t],
	// records the attention weights (softmax of q·kᵀ/√hs with the future
	// masked) for the backward pass.
	AttentionForward(out, att, qkv []float32, n, t, c, heads int)
	// AttentionBackward overwrites dqkv, [n][t][3c], with the gradient with
	// respect to qkv, given dout and the forward's qkv and att.
	AttentionBackward(dqkv, dout, qkv, att []float32, n, t, c, heads int)

	// LSTMCellForward takes gates, [n][4h], holding the pre-activations of
	// the input, forget, cell and output gates (PyTorch's order i, f, g, o)
	// and replaces them by their activations (σ, σ, tanh, σ). With cPrev
	// [n][h] (nil: zero), it sets c = f·cPrev + i·g and h = o·tanh(c),
	// keeping tanh(c) in tanhC.
	LSTMCellForward(h, c, tanhC, gates, cPrev []float32, n, hidden int)
	// LSTMCellBackward is the cell's adjoint: from dh and dc (the gradient
	// reaching c from the next step, nil: zero) and the forward's gates,
	// cPrev and tanhC, it overwrites dgates with the gradient of the
	// pre-activations and, unless dcPrev is nil, dcPrev with that of cPrev.
	LSTMCellBackward(dgates, dcPrev, dh, dc, gates, cPrev, tanhC []float32, n, hidden int)

	// SumSquares returns Σ x², accumulated in float64 in a fixed order.
	SumSquares(x []float32) float64
	// Scale multiplies x by s; s = 0 writes zeros, so that a NaN or Inf
	// in x does not survive (as BLAS's beta = 0).
	Scale(x []float32, s float32)
	// AdamW applies one step of PyTorch's AdamW to params from grads, with
	// the moment buffers m and v (see AdamW for the arithmetic).
	AdamW(params, grads, m, v []float32, h AdamWStep)
}

// AdamWStep holds the scalars of one AdamW update, precomputed in float64 and
// rounded once: the moments' coefficients, the bias-corrected step size
// lr/(1 − β₁ᵗ), √(1 − β₂ᵗ), ε and the weight-decay factor 1 − lr·λ (1 where
// a parameter is not decayed).
type AdamWStep struct {
	Beta1, OneMinusBeta1 float32
	Beta2, OneMinusBeta2 float32
	StepSize             float32
	BiasCorrection2Sqrt  float32
	Eps                  float32
	DecayFactor          float32
}

// ConvGeom describes the window of a 2-D convolution over C×H×W images.
type ConvGeom struct {
	C, H, W     int // input channels, height, width
	KH, KW      int // kernel height and width
	Pad, Stride int // zero padding on every side, and stride, in both dimensions
}

// OutH is the output height, floor((H + 2·Pad − KH)/Stride) + 1.
func (g ConvGeom) OutH() int { return (g.H+2*g.Pad-g.KH)/g.Stride + 1 }

// OutW is the output width, floor((W + 2·Pad − KW)/Stride) + 1.
func (g ConvGeom) OutW() int { return (g.W+2*g.Pad-g.KW)/g.Stride + 1 }

// ColRows is the number of rows of one image's col matrix, C·KH·KW: the
// inner dimension of the convolution's GEMM.
func (g ConvGeom) ColRows() int { return g.C * g.KH * g.KW }

// ColCols is the number of columns of one image's col matrix, OutH·OutW.
func (g ConvGeom) ColCols() int { return g.OutH() * g.OutW() }

// check panics unless g describes a window that fits its (padded) input.
func (g ConvGeom) check() {
	if g.C <= 0 || g.H <= 0 || g.W <= 0 || g.KH <= 0 || g.KW <= 0 || g.Pad < 0 || g.Stride <= 0 ||
		g.H+2*g.Pad < g.KH || g.W+2*g.Pad < g.KW {
		panic(fmt.Sprintf("model: invalid convolution geometry %+v", g))
	}
}
