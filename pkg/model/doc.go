// Package model holds the networks ringmaster trains, the compute backend
// they run on, and the optimizer. It does no I/O and keeps no global state:
// a model is built from a Backend and a seed, and everything else arrives
// through arguments.
//
// # Flat buffers
//
// A Model keeps all its parameters in one []float32 and all its gradients in
// another of the same length and layout, as llm.c does. One all-reduce covers
// the whole gradient, one write the whole checkpoint, and the optimizer
// (SGD) works on the flat slices without knowing the architecture. Tensors
// names each tensor in PyTorch's state_dict terms, with PyTorch's shape and
// layout (nn.Linear weights are [out, in], convolution weights [OC, C, KH,
// KW]) and its offset; TensorInfo.Slice cuts one out, and View wraps it as a
// gorgonia.org/tensor Dense sharing the memory.
//
// # Backends
//
// Models are written against Backend, a set of kernels at the granularity of
// llm.c's (GEMM, im2col, pooling, activations, softmax cross-entropy), each
// reading and writing caller-owned buffers. The model owns every buffer and
// sizes its activations for the largest batch it has seen, so a training step
// at a batch size seen before allocates nothing. CPU is the pure-Go backend:
// its GEMM is gorgonia.org/tensor's BLAS (gonum's native Sgemm), cut into
// tiles it runs on its own goroutines; the other kernels are loops. An
// assembly GEMM or a CUDA backend is another implementation of Backend; new
// layers (an LSTM, a GPT) add kernels named in the same XxxForward /
// XxxBackward pattern.
//
// # The scale convention
//
// ForwardBackward returns the SUM of the per-sample losses (float64) and ADDS
// scale·∂(that sum)/∂params to Grads. A data-parallel trainer zeroes the
// gradients, has each rank call ForwardBackward on its share of the global
// batch with scale = 1/globalBatch, and all-reduces with SUM: the result is
// the mean gradient over the global batch whatever the split, including
// unequal shares and ranks with none (n = 0). Summing the returned losses and
// dividing by globalBatch gives the mean loss. Gradient accumulation over
// micro-batches is the same thing done on one rank.
//
// # Determinism
//
// Resuming from a checkpoint is tested by comparing losses bit for bit, so
// the same parameters and inputs give the same bits every time, for any
// GOMAXPROCS and any number of CPU workers:
//
//   - parameters come from a PCG stream seeded by the seed and drawn in a
//     documented order (NewCNN);
//   - kernels parallelise only over disjoint outputs (tiles of a matrix,
//     images, planes, channels), so each output element is computed by one
//     goroutine with fixed arithmetic;
//   - every reduction (a bias gradient, a weight gradient summed over the
//     images of a batch, the loss sum) runs in a fixed order;
//   - the optimizer rounds every product to float32 before adding, so no
//     compiler may fuse it into a multiply-add.
//
// Bits are guaranteed on one platform. gonum's SIMD kernels differ between
// architectures (amd64 assembly, arm64, pure Go), so replicas that must stay
// identical should run on one architecture.
//
// Models are not safe for concurrent use; a CPU backend is, but serialises its
// calls, so concurrently training models should each have their own.
package model
