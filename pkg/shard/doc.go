// Package shard decides which samples each rank trains on.
//
// The data order of an epoch is a pure function of (seed, epoch): Order
// returns a permutation of the dataset computed with a generator that this
// package pins (SplitMix64 and Lemire's bounded draw), so the order never
// changes with the Go version or the platform.
//
// A training position is the number of samples of the current epoch that
// committed steps have consumed. A step consumes the next global batch,
// world*batch samples of the order (fewer at the end of an epoch), and rank r
// takes a contiguous, disjoint part of it (Split). Because the position
// counts samples rather than steps, a ring of any size can continue an epoch
// from any position without skipping or repeating a sample, and a job with
// W workers of batch B visits exactly the same samples, step by step, as one
// worker with batch W*B: the basis of data-parallel equivalence.
package shard
