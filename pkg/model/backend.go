package model

import "fmt"

// Backend is the set of compute kernels the models are written against, at the
// granularity of llm.c's kernels: each call is one whole-batch operation that
// reads and writes caller-provided buffers and allocates nothing. Models own
// every buffer; a backend owns only its threads (CPU) or, later, its streams
// (CUDA).
//
// Naming: a layer's pair of kernels is XxxForward / XxxBackward. Backward
// kernels that produce a parameter gradient ADD into it (gradients accumulate
// across calls, see Model.ForwardBackward); those that produce an activation
// gradient overwrite it. Gemm follows BLAS: beta=0 overwrites, beta=1
// accumulates.
//
// Buffers of the wrong length are programming errors: kernels panic with a
// message naming the buffer rather than return an error.
//
// Every kernel must be deterministic: the same inputs give bit-identical
// outputs on every call, whatever the number of threads.
type Backend interface {
	// Name identifies the backend in logs, e.g. "cpu".
	Name() string

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
	// ([n][classes]) and returns Σᵢ −log probs[i][labels[i]], computed in
	// float64 from the float32 logits.
	SoftmaxCrossEntropyForward(probs, logits []float32, labels []int32, n, classes int) float64
	// SoftmaxCrossEntropyBackward overwrites dlogits with the gradient of
	// scale·(the loss sum) with respect to the logits: scale·(probs − onehot).
	SoftmaxCrossEntropyBackward(dlogits, probs []float32, labels []int32, n, classes int, scale float32)
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
