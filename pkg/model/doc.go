// Package model holds the networks ringmaster trains (a CNN for images, an
// LSTM and a GPT for language), the compute backend they run on, and the
// optimizers. It does no I/O and keeps no global state: a model is built from
// a Config, a Backend and a seed, and everything else arrives through
// arguments.
//
// # Models
//
// New(cfg, backend, seed) builds one of Names(): "cnn" (the reference CNN
// for 28×28 images), "lstm" (embedding, LSTM layers, linear head, truncated
// backpropagation through time) and "gpt" (nanoGPT's decoder: token and
// position embeddings, pre-norm blocks of causal multi-head attention and a
// GELU MLP, final layer norm, linear head, optionally tied to the token
// embedding). Config.Validate names the field that is wrong. Each model's
// doc comment gives the equivalent PyTorch module; tensor names, shapes and
// layouts are that module's state_dict, so an export loads into it.
//
// A Batch carries images (X) or token ids (Tokens) and Targets (a class per
// image; the next token per position, −1 for none). ForwardBackward returns
// Stats (loss sum, number of loss terms, correct predictions); Evaluate does
// the forward pass only (accuracy for the CNN, loss and perplexity for the
// language models).
//
// # Flat buffers and their layout
//
// A Model keeps all its parameters in one []float32 and all its gradients in
// another of the same length and layout, as llm.c does; the optimizers keep
// their state (SGD's momentum, AdamW's exp_avg and exp_avg_sq) in buffers of
// the same layout. One all-reduce covers the whole gradient, one write the
// whole checkpoint, and an optimizer works on the flat slices without knowing
// the architecture. Tensors names each tensor with its PyTorch shape and its
// offset; TensorInfo.Slice cuts one out, and View wraps it as a
// gorgonia.org/tensor Dense sharing the memory.
//
// Tensors are laid out in forward order, which is PyTorch's state_dict order
// (conv1 … fc2; embedding, lstm layers, head; wte, wpe, h.0 … h.N−1, ln_f,
// lm_head). The backward pass finishes gradients in the reverse order, so
// the finished part of the gradient buffer is always a suffix that grows
// towards offset 0. SetGradReadyHook reports it as it grows: ranges
// [lo, hi) on tensor boundaries, from the end of the buffer to its start,
// covering it exactly once per ForwardBackward (a layer's tensors at once; a
// tied embedding, which the head and the input both write, last). An
// overlapped all-reduce starts on a range as soon as it is reported;
// GradBuckets cuts the buffer into buckets for it, and a bucket is ready
// once a reported range starts at or below its Lo. The hook changes no
// result. With gradient accumulation, set it for the last micro-batch only.
//
// # The scale convention and gradient accumulation
//
// ForwardBackward returns the SUM of the per-term losses and ADDS
// scale·∂(that sum)/∂params to Grads. A data-parallel trainer zeroes the
// gradients, has each rank call ForwardBackward on its share of the global
// batch, once per micro-batch, with scale = 1/(loss terms of the whole step
// over all ranks and micro-batches: Batch.Terms summed), and all-reduces with
// SUM: the result is the mean gradient whatever the split, including unequal
// shares and ranks with none. Summing the returned Stats gives the step's
// loss. Then, on the all-reduced gradient (so every rank computes the same):
// ClipGradNorm, a Schedule's rate into Optimizer.SetLR, and Optimizer.Step.
//
// # Backends
//
// Models are written against Backend, a set of kernels at the granularity of
// llm.c's (GEMM with transposes and alpha/beta, im2col, pooling, layer norm,
// GELU, causal attention, LSTM cell, softmax cross-entropy, AdamW), each
// reading and writing caller-owned buffers allocated through the backend.
// The model owns every buffer and sizes its activations for the largest batch
// it has seen, so a training step at a batch size seen before allocates
// nothing. A CUDA backend implements the same interface (see Backend).
//
// CPU is the backend for the host. Its GEMM packs operands into panels and
// runs assembly micro-kernels (AVX-512 8×32 or AVX2+FMA 6×16, chosen with
// golang.org/x/sys/cpu), parallel over tiles of C; other CPUs, and builds
// with the noasm tag, use a pure-Go micro-kernel, which NewCPUPureGo selects
// anywhere. GELU and the softmax exponentials have AVX-512 versions; the
// other kernels are Go loops. See
// docs/benchmarks.md for speeds against the machine's peak and PyTorch.
//
// # Determinism
//
// Resuming from a checkpoint is tested by comparing losses bit for bit, and
// data-parallel replicas compare parameter checksums, so the same parameters
// and inputs give the same bits every time, for any GOMAXPROCS and any number
// of CPU workers:
//
//   - parameters come from a PCG stream seeded by the seed and drawn in a
//     documented order (NewCNN, newLSTM, newGPT);
//   - kernels parallelise only over disjoint outputs (tiles of a matrix,
//     images, rows, heads, ranges of a vocabulary), so each output element
//     is computed by one goroutine with fixed arithmetic;
//   - the GEMM cuts k into blocks that depend on k alone and sums each
//     element's block in k order in one register; whether a tile is computed
//     by one worker or another, alone or with a batch, changes nothing;
//   - every reduction (a bias gradient, a layer norm's weight gradient, an
//     embedding row, the loss, a sum of squares) runs in a fixed order or
//     over blocks of a constant size summed in block order;
//   - the optimizers round every product to float32 before adding, so no
//     compiler may fuse it into a multiply-add.
//
// Bits are guaranteed for one binary on one kind of CPU: the AVX-512, AVX2
// and Go micro-kernels round differently, so replicas that must stay
// identical should run on one CPU type.
//
// Models are not safe for concurrent use; a CPU backend is, but serialises its
// calls, so concurrently training models should each have their own.
package model
