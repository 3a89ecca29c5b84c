// Package allreduce implements ring collectives over a pluggable transport.
//
// A Comm is one rank's view of one ring generation: it knows its rank, the
// world size and a Transport that sends to the right-hand neighbour and
// receives from the left-hand one. AllReduce runs the classic bandwidth-
// optimal ring: a reduce-scatter of world-1 steps, after which each rank owns
// the full sum of one chunk, then an all-gather of world-1 steps that
// circulates the finished chunks. Each rank sends and receives 2(n-1)/n of
// the buffer, independent of n.
//
// Sums are formed in a fixed order (the order the chunk travels around the
// ring), so results are bit-for-bit reproducible for a given world size, and
// every rank ends with bit-identical values because the all-gather copies
// rather than recomputes.
//
// Failure model: every collective runs under a deadline (Config.Timeout) and
// the caller's context. Any error (a peer gone, a stale generation, a
// mismatch, a timeout) breaks the Comm for good: the stream state between
// ranks is unknown, so the caller rebuilds the ring under a new generation.
// Errors name the rank and address that did not answer.
//
// Two transports exist: the gRPC one (Hub, Dial), and an in-memory one
// (NewInmemRing) for unit tests.
package allreduce
