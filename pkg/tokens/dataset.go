package tokens

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"sync/atomic"
)

// Dataset cuts each shard into samples of T+1 tokens starting every T
// tokens. Samples do not cross shards, so that each shard is a block of
// samples that can be read (or fetched) on its own; at most T tokens per
// shard go unused.
type Dataset struct {
	T      int
	shards []*Shard
	// starts[i] is the index of shard i's first sample; starts[len] = Len.
	starts  []int
	batches atomic.Int64
}

var _ Source = (*Dataset)(nil)

// Open maps the shards matching pattern (a glob), in name order.
func Open(pattern string, t int) (*Dataset, error) {
	paths, err := filepath.Glob(pattern)
	if err != nil {
		return nil, fmt.Errorf("tokens: pattern %q: %w", pattern, err)
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("tokens: no shard files match %q; create them with `coordinator prepare`", pattern)
	}
	sort.Strings(paths)
	var shards []*Shard
	for _, p := range paths {
		s, err := OpenShard(p)
		if err != nil {
			for _, o := range shards {
				o.Close()
			}
			return nil, err
		}
		shards = append(shards, s)
	}
	d, err := New(shards, t)
	if err != nil {
		for _, o := range shards {
			o.Close()
		}
	}
	return d, err
}

// SamplesIn is the number of samples of length t+1 a shard of n tokens
// holds.
func SamplesIn(n, t int) int {
	if n < t+1 {
		return 0
	}
	return (n - 1) / t
}

// New builds a dataset over open shards; it takes ownership of them.
func New(shards []*Shard, t int) (*Dataset, error) {
	if len(shards) == 0 {
		return nil, errNoShards
	}
	if t < 1 {
		return nil, fmt.Errorf("tokens: sequence length %d must be at least 1", t)
	}
	d := &Dataset{T: t, shards: shards, starts: make([]int, len(shards)+1)}
	for i, s := range shards {
		d.starts[i+1] = d.starts[i] + SamplesIn(s.Len(), t)
	}
	if d.Len() == 0 {
		return nil, fmt.Errorf("tokens: no shard holds a whole sample of %d tokens", t+1)
	}
	return d, nil
}

// Len is the number of samples.
func (d *Dataset) Len() int { return d.starts[len(d.shards)] }

// BlockSizes is the number of samples in each shard, for shard.NewBlockSampler.
func (d *Dataset) BlockSizes() []int {
	out := make([]int, len(d.shards))
	for i := range out {
		out[i] = d.starts[i+1] - d.starts[i]
	}
	return out
}

// Tokens is the number of tokens in all shards.
func (d *Dataset) Tokens() int {
	n := 0
	for _, s := range d.shards {
		n += s.Len()
	}
	return n
}

// Sample copies sample i (T+1 tokens) into dst.
func (d *Dataset) Sample(i int, dst []int32) {
	if i < 0 || i >= d.Len() {
		panic(fmt.Sprintf("tokens: sample %d of %d", i, d.Len()))
	}
	s := sort.SearchInts(d.starts, i+1) - 1
	off := (i - d.starts[s]) * d.T
	for k, t := range d.shards[s].Tokens()[off : off+d.T+1] {
		dst[k] = int32(t)
	}
}

// Prefetch implements Source. Local shards are mapped already; the page
// cache reads them ahead.
func (d *Dataset) Prefetch([]int32) {}

// Batch implements Source: it gathers samples idx into x (inputs,
// len(idx)*T) and y (targets, the inputs shifted by one). It never waits.
func (d *Dataset) Batch(_ context.Context, idx []int32, x, y []int32) error {
	if err := checkBatch(idx, x, y, d.T, d.Len()); err != nil {
		return err
	}
	d.batches.Add(1)
	for j, i := range idx {
		s := sort.SearchInts(d.starts, int(i)+1) - 1
		gather(d.shards[s].Tokens(), (int(i)-d.starts[s])*d.T, d.T, x[j*d.T:], y[j*d.T:])
	}
	return nil
}

// Stats implements StatsSource; a local dataset never waits.
func (d *Dataset) Stats() Stats { return Stats{Batches: d.batches.Load()} }

// checkBatch checks Batch's arguments.
func checkBatch(idx, x, y []int32, t, n int) error {
	if len(x) < len(idx)*t || len(y) < len(idx)*t {
		return fmt.Errorf("tokens: batch of %d samples of %d tokens needs x and y of %d, got %d and %d", len(idx), t, len(idx)*t, len(x), len(y))
	}
	for _, i := range idx {
		if i < 0 || int(i) >= n {
			return fmt.Errorf("tokens: sample %d of a dataset of %d", i, n)
		}
	}
	return nil
}

// gather writes the sample of T+1 tokens at toks[off:] as T inputs into x
// and T targets into y.
func gather(toks []uint16, off, t int, x, y []int32) {
	src := toks[off : off+t+1]
	x, y = x[:t], y[:t]
	for k := range t {
		x[k] = int32(src[k])
		y[k] = int32(src[k+1])
	}
}

// Close unmaps every shard.
func (d *Dataset) Close() error {
	var first error
	for _, s := range d.shards {
		if err := s.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
