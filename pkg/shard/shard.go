package shard

import "fmt"

// Order returns the order in which an epoch visits the samples 0..n-1.
func Order(seed uint64, epoch, n int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(i)
	}
	// Fisher-Yates, driven by a stream that depends only on (seed, epoch).
	g := splitmix{state: seed ^ (uint64(epoch)+1)*0x9e3779b97f4a7c15}
	g.next() // decorrelate nearby seeds
	for i := n - 1; i > 0; i-- {
		j := g.bounded(uint64(i + 1))
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// BlockOrder returns an epoch's order over samples grouped in blocks (for
// example the shards of a token dataset, block b holding the sizes[b]
// samples that follow those of blocks 0..b-1): the blocks in a permuted
// order, and within each block its samples permuted. It is a permutation of
// all samples and a pure function of (seed, epoch, sizes), like Order, but a
// reader walking it touches one block at a time, so blocks can be streamed
// from object storage with read-ahead.
func BlockOrder(seed uint64, epoch int, sizes []int) []int32 {
	starts := make([]int, len(sizes)+1)
	for b, n := range sizes {
		starts[b+1] = starts[b] + n
	}
	out := make([]int32, 0, starts[len(sizes)])
	for _, b := range Order(seed, epoch, len(sizes)) {
		// Each block's inner order has its own stream: derived from the
		// seed and the block so that it does not depend on block order.
		inner := Order(seed^(uint64(b)+1)*0xd1b54a32d192ed03, epoch, sizes[b])
		for _, i := range inner {
			out = append(out, int32(starts[b])+i)
		}
	}
	return out
}

// splitmix is SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fixed
// here so the data order is reproducible forever.
type splitmix struct{ state uint64 }

func (g *splitmix) next() uint64 {
	g.state += 0x9e3779b97f4a7c15
	z := g.state
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// bounded returns a uniform value in [0, n) by Lemire's multiply-shift
// method with rejection, so there is no modulo bias.
func (g *splitmix) bounded(n uint64) uint64 {
	for {
		hi, lo := mul64(g.next(), n)
		if lo >= n || lo >= (-n)%n {
			return hi
		}
	}
}

func mul64(a, b uint64) (hi, lo uint64) {
	const mask32 = 1<<32 - 1
	a0, a1 := a&mask32, a>>32
	b0, b1 := b&mask32, b>>32
	w0 := a0 * b0
	t := a1*b0 + w0>>32
	w1 := t&mask32 + a0*b1
	hi = a1*b1 + t>>32 + w1>>32
	lo = a * b
	return
}

// GlobalBatch is the number of samples the step at position pos consumes:
// world*batch, or what is left of the epoch.
func GlobalBatch(n, pos, world, batch int) int {
	g := world * batch
	if left := n - pos; left < g {
		return max(left, 0)
	}
	return g
}

// Split returns rank's part [start, end) of the global batch of size g that
// begins at position pos. A full batch gives every rank exactly batch
// samples; a short final batch is spread as evenly as possible (ranks may get
// none).
func Split(pos, g, world, rank int) (start, end int) {
	return pos + rank*g/world, pos + (rank+1)*g/world
}

// Range splits n items evenly over world ranks and returns rank's part. It
// is used for work that is not ordered by epoch, such as evaluation.
func Range(n, world, rank int) (start, end int) {
	return rank * n / world, (rank + 1) * n / world
}

// Position is where training stands: the epoch, and the samples of it that
// committed steps have consumed.
type Position struct {
	Epoch int
	Pos   int
}

// StepsLeftInEpoch is how many steps a ring of the given size needs to finish
// the epoch from p.
func StepsLeftInEpoch(n int, p Position, world, batch int) int {
	g := world * batch
	return (n - p.Pos + g - 1) / g
}

// Advance moves the position past one global batch of size g, rolling over
// to the next epoch when the epoch is used up.
func (p Position) Advance(n, g int) Position {
	p.Pos += g
	if p.Pos >= n {
		p.Epoch++
		p.Pos = 0
	}
	return p
}

// Sampler hands out the sample indices of each step for one rank. It caches
// the current epoch's order.
type Sampler struct {
	n          int
	seed       uint64
	blocks     []int
	orderEpoch int
	order      []int32
}

// NewSampler returns a sampler over a dataset of n samples in Order.
func NewSampler(n int, seed uint64) *Sampler {
	return &Sampler{n: n, seed: seed, orderEpoch: -1}
}

// NewBlockSampler returns a sampler over samples grouped in blocks, in
// BlockOrder.
func NewBlockSampler(sizes []int, seed uint64) *Sampler {
	n := 0
	for _, s := range sizes {
		n += s
	}
	return &Sampler{n: n, seed: seed, blocks: append([]int(nil), sizes...), orderEpoch: -1}
}

// Len is the number of samples in an epoch.
func (s *Sampler) Len() int { return s.n }

// Step returns the indices that rank trains on in the step at p, the global
// batch size of that step, and the position after it. The returned slice
// aliases the sampler's cached order; do not modify it.
func (s *Sampler) Step(p Position, world, rank, batch int) (idx []int32, global int, next Position, err error) {
	if world < 1 || rank < 0 || rank >= world || batch < 1 {
		return nil, 0, p, fmt.Errorf("shard: invalid world=%d rank=%d batch=%d", world, rank, batch)
	}
	if p.Pos < 0 || p.Pos >= s.n {
		return nil, 0, p, fmt.Errorf("shard: position %d is outside the epoch of %d samples", p.Pos, s.n)
	}
	if s.orderEpoch != p.Epoch {
		if s.blocks != nil {
			s.order = BlockOrder(s.seed, p.Epoch, s.blocks)
		} else {
			s.order = Order(s.seed, p.Epoch, s.n)
		}
		s.orderEpoch = p.Epoch
	}
	g := GlobalBatch(s.n, p.Pos, world, batch)
	start, end := Split(p.Pos, g, world, rank)
	return s.order[start:end], g, p.Advance(s.n, g), nil
}

// Upcoming returns the samples of the epoch at p from position p.Pos on,
// for read-ahead; the slice aliases the cached order.
func (s *Sampler) Upcoming(p Position) []int32 {
	if s.orderEpoch != p.Epoch {
		s.Step(p, 1, 0, 1) //nolint:errcheck // only fills the cache
	}
	if p.Pos >= len(s.order) {
		return nil
	}
	return s.order[p.Pos:]
}
