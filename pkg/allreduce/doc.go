// Package allreduce implements the collectives of data-parallel training
// over a pluggable transport: AllReduce (sum, average), ReduceScatter,
// AllGather, Broadcast and Barrier on float32 buffers, plus a Bucketer
// that reduces a gradient buffer in buckets while backward still runs.
//
// # Communicator
//
// A Comm is one rank's view of one ring generation: its rank, the world
// size and a Transport to every peer. Large collectives run the classic
// bandwidth-optimal ring, a reduce-scatter of n-1 steps then an all-gather
// of n-1 steps (each rank sends and receives 2(n-1)/n of the buffer).
// Every hop is pipelined: a chunk travels as frames of Config.SliceBytes,
// and a rank forwards a frame as soon as it has added it, from a sender
// goroutine, so the receiving side never blocks on flow control and the
// ring cannot deadlock. Collectives of at most Config.DirectMaxBytes
// exchange with every peer in one round (n-1 frames out, n-1 in) instead:
// one network latency rather than 2(n-1).
//
// # Determinism
//
// The one thing to know: the bits of a reduced element depend only on the
// world size, the element's index in the buffer and the inputs. Elements
// are grouped in blocks of BlockElems; block k belongs to class k mod n,
// and its sum is formed starting at rank c = k mod n and going around the
// ring (c, c+1, ..., c-1). In the ring, blocks of class c are exactly the
// ones whose reduce-scatter starts at rank c; the direct path adds in the
// same order. So the ring, the direct path, any frame size, and any way of
// cutting the buffer into buckets give bit-identical results, on every
// rank (the all-gather copies, it does not recompute). The trainer relies
// on this for its replica checksums and for exact resume. ReduceScatter
// sums shard r in the order r+1, ..., r. The vector kernels (AVX-512,
// AVX2, pure Go) do the same IEEE operations, so machines may mix.
//
// # Agreement and failures
//
// Every frame carries the collective's sequence number and a Desc (which
// collective, op, type, length, root, bucket shape); a receiver checks it
// before it touches the data, so ranks that disagree get an error naming
// both ranks and both values, never a wrong sum. Streams start with a
// hello carrying the job and generation; a hub refuses generations older
// than the newest it has set up, so a resized ring never mixes with a
// stale one.
//
// Every collective runs under the caller's context and Config.Timeout.
// A rank that gives up tells every peer why (Transport.Notify) before it
// tears its streams down, so every survivor reports the same cause: a
// mismatch, a peer whose connection broke (named with its address), or a
// cancellation. When ranks reach their deadline, each tells the others
// which peer it is waiting on and follows the chain of waits to the rank
// that did not report: the one that is stopped, hung or partitioned
// ("rank 2 (10.0.0.3:7071) did not answer (waits: 0 -> 3 -> 2)"). Any
// error breaks the Comm for good (ErrBroken): the caller rebuilds the
// ring under a new generation.
//
// # Transports
//
// Hub and Dial are the gRPC transport: one bidirectional stream per
// ordered pair of ranks, a raw codec (codec.go) that hands gRPC the
// caller's float32 memory without copying and lets the ring add straight
// out of gRPC's receive buffers, static flow-control windows larger than a
// chunk, 64 KiB shared read and write buffers, a receive buffer pool that
// does not zero what gRPC overwrites anyway (pool.go), and an Abort method
// for notices. NewInmemNetwork is the in-memory twin for tests, with Kill
// and Partition.
//
// What the gRPC transport costs: grpc-go copies every byte once more on
// each side than a raw socket does (into its write buffer, and out of its
// read buffer into a 16 KiB frame buffer), in 16 KiB HTTP/2 frames, with a
// goroutine hand-off per message on each side (BenchmarkHopGRPC against
// BenchmarkHopRawTCP: a hop takes about 1.7x the CPU time of a raw
// socket). On a machine where the ranks share few cores that CPU time is
// the ring's speed; docs/benchmarks.md has the measurements. A data plane
// on raw TCP behind the same Transport interface (gRPC kept for setup,
// generations and aborts) is the way to close that gap.
//
// # Compression
//
// Config.Wire = WireBF16 sends bfloat16 (the top 16 bits of each float32,
// rounded to nearest even): half the bytes. Each reduce-scatter hop and
// the final all-gather round once (relative error at most 2^-8 each), so
// |result - exact| <= n * 2^-8 * sum_r |x_r|; ranks still end bit-
// identical (the owner of a chunk rounds its own copy too). Off by
// default; the bucketed result then equals the whole-buffer one only up to
// that error.
package allreduce
