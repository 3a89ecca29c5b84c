package allreduce

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
)

// DefaultBucketBytes is the bucket size when NewBucketer is given zero.
const DefaultBucketBytes = 1 << 20

// Bucketer reduces one buffer in buckets, in the background, as the caller
// marks parts of it final: the communication of finished buckets overlaps
// the computation of the rest (DDP's gradient buckets, Horovod's tensor
// fusion).
//
// Ready(lo, hi) marks buf[lo:hi] final. Ready ranges are collected in
// arrival order; once they add up to at least the bucket size they form a
// bucket, which is all-reduced (one collective over possibly several
// ranges) after the buckets before it. Wait marks whatever was not marked
// (in ascending order), reduces the last bucket and waits for all.
//
// The guarantee: every element of buf ends bit-identical on every rank,
// and equal to what Comm.AllReduce of the whole buffer gives (with the
// float32 wire; with bf16 rounding happens per bucket). This holds for any
// bucket size and any order of Ready ranges, because the order of every
// sum depends only on the element's index in buf and the world size (see
// BlockElems). Ranks must make the same Ready calls in the same order with
// the same bucket size; if they do not, the buckets differ and the
// collective fails with an error naming both ranks.
//
// While a Bucketer runs (until Wait returns) it owns the Comm: other calls
// on the Comm return ErrBusy.
type Bucketer struct {
	c           *Comm
	buf         []float32
	op          Op
	bucketElems int

	mu      sync.Mutex
	marked  []span // every range marked so far, sorted
	pending []span // ranges of the bucket being collected
	pendLen int
	waited  bool

	queue  chan []span
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set by the reducer before done closes

	reduced atomic.Int64 // elements reduced so far
}

// Reduced returns how many elements have been reduced so far on this rank.
func (b *Bucketer) Reduced() int { return int(b.reduced.Load()) }

// NewBucketer starts a Bucketer over buf; ctx bounds its background work.
// bucketBytes <= 0 means DefaultBucketBytes.
func (c *Comm) NewBucketer(ctx context.Context, buf []float32, op Op, bucketBytes int) *Bucketer {
	if bucketBytes <= 0 {
		bucketBytes = DefaultBucketBytes
	}
	ctx, cancel := context.WithCancel(ctx)
	b := &Bucketer{c: c, buf: buf, op: op, bucketElems: max(bucketBytes/4, 1),
		queue: make(chan []span, 64), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go b.reduce()
	return b
}

func (b *Bucketer) reduce() {
	defer close(b.done)
	for spans := range b.queue {
		if b.err != nil {
			continue // drain; the first error stands
		}
		if err := b.c.allReduceSpans(b.ctx, b.buf, spans, b.op); err != nil {
			b.err = err
			continue
		}
		b.reduced.Add(int64(spansLen(spans)))
	}
}

// Ready marks buf[lo:hi] final. It does not wait for communication,
// unless many buckets are queued.
func (b *Bucketer) Ready(ctx context.Context, lo, hi int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.waited {
		return fmt.Errorf("allreduce: Ready(%d, %d) after Wait", lo, hi)
	}
	if lo < 0 || hi > len(b.buf) || lo > hi {
		return fmt.Errorf("allreduce: Ready(%d, %d) is outside a buffer of %d", lo, hi, len(b.buf))
	}
	if lo == hi {
		return nil
	}
	i := sort.Search(len(b.marked), func(i int) bool { return b.marked[i].hi > lo })
	if i < len(b.marked) && b.marked[i].lo < hi {
		return fmt.Errorf("allreduce: Ready(%d, %d) overlaps [%d, %d) marked before", lo, hi, b.marked[i].lo, b.marked[i].hi)
	}
	b.marked = append(b.marked, span{})
	copy(b.marked[i+1:], b.marked[i:])
	b.marked[i] = span{lo, hi}
	return b.add(ctx, span{lo, hi})
}

// add appends s to the pending bucket and sends the bucket when full.
// Called with b.mu held.
func (b *Bucketer) add(ctx context.Context, s span) error {
	if n := len(b.pending); n > 0 && b.pending[n-1].hi == s.lo {
		b.pending[n-1].hi = s.hi
	} else {
		b.pending = append(b.pending, s)
	}
	b.pendLen += s.len()
	if b.pendLen >= b.bucketElems {
		return b.flush(ctx)
	}
	return nil
}

func (b *Bucketer) flush(ctx context.Context) error {
	if len(b.pending) == 0 {
		return nil
	}
	bucket := b.pending
	b.pending, b.pendLen = nil, 0
	select {
	case b.queue <- bucket:
		return nil
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Wait reduces what is left and returns when the whole buffer is reduced
// on this rank, or with the first error. If ctx ends first, the background
// work is cancelled (breaking the Comm) and Wait returns after it stopped.
func (b *Bucketer) Wait(ctx context.Context) error {
	b.mu.Lock()
	var err error
	if !b.waited {
		b.waited = true
		prev := 0
		for _, m := range append(b.marked, span{len(b.buf), len(b.buf)}) {
			if m.lo > prev && err == nil {
				err = b.add(ctx, span{prev, m.lo})
			}
			prev = m.hi
		}
		if err == nil {
			err = b.flush(ctx)
		}
		close(b.queue)
	}
	b.mu.Unlock()
	finished := true
	select {
	case <-b.done:
	case <-ctx.Done():
		finished = false
		b.cancel()
		<-b.done
	}
	b.cancel()
	switch {
	case b.err != nil:
		return b.err
	case err != nil:
		return err
	case !finished:
		return ctx.Err()
	}
	return nil
}
