package allreduce

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// producerRanges cuts [0, n) into tensors the way a model's flat gradient
// buffer is laid out, and returns them in the order backward finishes
// them (last layer first), sometimes shuffled, sometimes leaving gaps
// (tensors that never get a gradient).
func producerRanges(rng *rand.Rand, n int, order string) [][2]int {
	var r [][2]int
	for lo := 0; lo < n; {
		hi := min(n, lo+1+rng.IntN(max(n/5, 1)))
		r = append(r, [2]int{lo, hi})
		lo = hi
	}
	switch order {
	case "backward":
		for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
			r[i], r[j] = r[j], r[i]
		}
	case "shuffled":
		rng.Shuffle(len(r), func(i, j int) { r[i], r[j] = r[j], r[i] })
	case "gaps":
		var kept [][2]int
		for i, x := range r {
			if i%3 != 1 {
				kept = append(kept, x)
			}
		}
		r = kept
	}
	return r
}

// TestBucketerEqualsWholeBufferAllReduce: whatever the bucket size and the
// order of ready ranges, the bucketed result is bit-identical on every rank
// and to one all-reduce of the whole buffer.
//
// Every world tries every pair of (order, bucket size), and every length
// meets every order and every bucket size, but not every triple: for the
// i-th length the bucket size is rotated by i against the order (a Latin
// square), which is a quarter of the full product. A length that breaks
// only with one (order, bucket) pair is still found, with another length.
func TestBucketerEqualsWholeBufferAllReduce(t *testing.T) {
	t.Parallel()
	orders := []string{"forward", "backward", "shuffled", "gaps"}
	buckets := []int{4, 4096, 100 << 10, 1 << 30}
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 11))
			for _, world := range []int{1, 2, 3, 4, 7} {
				r := newRing(t, kind, world, Config{SliceBytes: 32 << 10})
				for i, n := range []int{0, 1, 5000, 3*BlockElems*world + 123, 200000} {
					for k, order := range orders {
						{
							bucketBytes := buckets[(k+i)%len(buckets)]
							in := randBufs(rng, world, n)
							op := []Op{Sum, Avg}[rng.IntN(2)]
							want := refAllReduce(in, op)
							bufs := clone(in)
							ranges := producerRanges(rng, n, order)
							what := fmt.Sprintf("world %d n %d %s bucket %d %s", world, n, order, bucketBytes, op)
							checkAll(t, runAll(r.comms, func(c *Comm) error {
								ctx := context.Background()
								b := c.NewBucketer(ctx, bufs[c.Rank()], op, bucketBytes)
								for _, x := range ranges {
									if err := b.Ready(ctx, x[0], x[1]); err != nil {
										return err
									}
								}
								return b.Wait(ctx)
							}))
							for q := range bufs {
								sameBits(t, fmt.Sprintf("%s rank %d", what, q), bufs[q], want)
							}
						}
					}
				}
				r.close()
			}
		})
	}
}

// TestBucketerOverlapsCommunication: buckets are reduced while the
// producer is still producing. The producer marks the first half ready,
// then waits until that half has been reduced on this rank before it
// marks the rest; with a bucketer that only worked in Wait it would time out.
func TestBucketerOverlapsCommunication(t *testing.T) {
	const world, n = 3, 1 << 16
	r := newRing(t, "grpc", world, Config{})
	in := randBufs(rand.New(rand.NewPCG(1, 1)), world, n)
	bufs := clone(in)
	want := refAllReduce(in, Sum)
	checkAll(t, runAll(r.comms, func(c *Comm) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b := c.NewBucketer(ctx, bufs[c.Rank()], Sum, 4*n/2)
		if err := b.Ready(ctx, n/2, n); err != nil {
			return err
		}
		for b.Reduced() < n/2 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("rank %d: the first bucket was not reduced before Wait", c.Rank())
			case <-time.After(time.Millisecond):
			}
		}
		if err := b.Ready(ctx, 0, n/2); err != nil {
			return err
		}
		return b.Wait(ctx)
	}))
	for q := range bufs {
		sameBits(t, fmt.Sprintf("rank %d", q), bufs[q], want)
	}
}

// TestBucketerMismatchNamesBothRanks: ranks that bucket differently get an
// error, not different results.
func TestBucketerMismatchNamesBothRanks(t *testing.T) {
	r := newRing(t, "inmem", 3, Config{Timeout: 2 * time.Second})
	const n = 10000
	errs := runAll(r.comms, func(c *Comm) error {
		ctx := context.Background()
		bucket := 4 * 1000
		if c.Rank() == 1 {
			bucket = 4 * 3000
		}
		b := c.NewBucketer(ctx, make([]float32, n), Sum, bucket)
		for lo := 0; lo < n; lo += 500 {
			if err := b.Ready(ctx, lo, lo+500); err != nil {
				return err
			}
		}
		return b.Wait(ctx)
	})
	for q, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "disagree") || !strings.Contains(err.Error(), "rank 1 (") {
			t.Errorf("rank %d: %v, want a disagreement naming rank 1", q, err)
		}
	}
}

func TestBucketerRejectsBadRanges(t *testing.T) {
	r := newRing(t, "inmem", 1, Config{})
	ctx := context.Background()
	b := r.comms[0].NewBucketer(ctx, make([]float32, 100), Sum, 0)
	if err := b.Ready(ctx, 10, 20); err != nil {
		t.Fatal(err)
	}
	for _, x := range [][2]int{{15, 25}, {5, 11}, {-1, 3}, {90, 101}, {30, 20}} {
		if err := b.Ready(ctx, x[0], x[1]); err == nil {
			t.Errorf("Ready(%d, %d) accepted", x[0], x[1])
		}
	}
	if err := b.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.comms[0].AllReduce(ctx, make([]float32, 3), Sum); err != nil {
		t.Fatalf("the comm is not free after Wait: %v", err)
	}
}
