package allreduce

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Op is the reduction applied by AllReduce.
type Op int

const (
	// Sum adds the buffers of all ranks.
	Sum Op = iota
	// Avg adds the buffers and divides by the world size.
	Avg
)

func (o Op) String() string {
	switch o {
	case Sum:
		return "sum"
	case Avg:
		return "avg"
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// Frame is one message between ring neighbours.
type Frame struct {
	Seq  uint64    // collective sequence number on the communicator
	Part uint32    // index of the frame within the collective
	Data []float32 // payload
}

// Transport moves frames around the ring for one generation.
type Transport interface {
	// Send delivers f to the right-hand neighbour. It may return before the
	// neighbour has read it; f.Data must not be modified until Send returns.
	Send(ctx context.Context, f Frame) error
	// Recv returns the next frame from the left-hand neighbour, its payload
	// copied into dst (which must be large enough); the returned Frame's
	// Data is dst[:n].
	Recv(ctx context.Context, dst []float32) (Frame, error)
	// Peers names the left and right neighbours for error messages.
	Peers() (left, right string)
	Close() error
}

// Config describes one rank of one ring generation.
type Config struct {
	Rank, World int
	Generation  uint64
	// Timeout bounds each collective; zero means DefaultTimeout.
	Timeout time.Duration
}

// DefaultTimeout bounds a collective when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// ErrBroken is wrapped by every error from a Comm that an earlier error has
// broken.
var ErrBroken = errors.New("allreduce: communicator is broken by an earlier error; rebuild the ring")

// Comm runs collectives for one rank. Its methods must not be called
// concurrently.
type Comm struct {
	cfg     Config
	t       Transport
	seq     uint64
	scratch []float32
	mu      sync.Mutex
	broken  error
}

// New returns a communicator over t.
func New(cfg Config, t Transport) (*Comm, error) {
	if cfg.World < 1 || cfg.Rank < 0 || cfg.Rank >= cfg.World {
		return nil, fmt.Errorf("allreduce: rank %d is outside a world of %d", cfg.Rank, cfg.World)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	return &Comm{cfg: cfg, t: t}, nil
}

// Rank returns this communicator's rank.
func (c *Comm) Rank() int { return c.cfg.Rank }

// World returns the ring size.
func (c *Comm) World() int { return c.cfg.World }

// Generation returns the ring generation.
func (c *Comm) Generation() uint64 { return c.cfg.Generation }

// Close releases the transport.
func (c *Comm) Close() error {
	if c.t == nil {
		return nil
	}
	return c.t.Close()
}

// chunk returns the bounds of chunk i of n elements split into w parts.
func chunk(n, w, i int) (int, int) {
	return i * n / w, (i + 1) * n / w
}

func mod(a, w int) int { return ((a % w) + w) % w }

// AllReduce replaces buf on every rank with the reduction over all ranks.
// Every rank must call it with a buffer of the same length.
func (c *Comm) AllReduce(ctx context.Context, buf []float32, op Op) error {
	if err := c.begin(); err != nil {
		return err
	}
	c.seq++
	w := c.cfg.World
	if w > 1 {
		ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
		if err := c.ring(ctx, buf); err != nil {
			return c.fail(err)
		}
	}
	if op == Avg && w > 1 {
		inv := 1 / float32(w)
		for i := range buf {
			buf[i] *= inv
		}
	}
	return nil
}

// ring runs reduce-scatter then all-gather.
func (c *Comm) ring(ctx context.Context, buf []float32) error {
	w, r, n := c.cfg.World, c.cfg.Rank, len(buf)
	maxChunk := (n + w - 1) / w
	if cap(c.scratch) < maxChunk {
		c.scratch = make([]float32, maxChunk)
	}
	scratch := c.scratch[:maxChunk]
	part := uint32(0)
	// Each step sends one chunk right while receiving one from the left.
	step := func(sendIdx, recvIdx int, reduce bool) error {
		ss, se := chunk(n, w, sendIdx)
		rs, re := chunk(n, w, recvIdx)
		// A failed send cancels the receive, so a peer that refuses our
		// stream (or is gone) is reported at once, not at the deadline.
		sctx, scancel := context.WithCancel(ctx)
		defer scancel()
		sendErr := make(chan error, 1)
		go func(p uint32) {
			err := c.t.Send(sctx, Frame{Seq: c.seq, Part: p, Data: buf[ss:se]})
			if err != nil {
				scancel()
			}
			sendErr <- err
		}(part)
		f, err := c.t.Recv(sctx, scratch)
		if err != nil {
			scancel()
			if serr := <-sendErr; serr != nil && ctx.Err() == nil && !errors.Is(serr, context.Canceled) {
				return c.peerError("sending to", mod(r+1, w), serr)
			}
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			var big *FrameTooLargeError
			if errors.As(err, &big) {
				return c.lengthMismatch(big.Got, re-rs)
			}
			return c.peerError("receiving from", mod(r-1, w), err)
		}
		if err := c.check(f, part, re-rs); err != nil {
			scancel()
			<-sendErr
			return err
		}
		if err := <-sendErr; err != nil {
			return c.peerError("sending to", mod(r+1, w), err)
		}
		dst := buf[rs:re]
		if reduce {
			addTo(dst, f.Data)
		} else {
			copy(dst, f.Data)
		}
		part++
		return nil
	}
	for s := 0; s < w-1; s++ {
		if err := step(mod(r-s, w), mod(r-s-1, w), true); err != nil {
			return err
		}
	}
	for s := 0; s < w-1; s++ {
		if err := step(mod(r-s+1, w), mod(r-s, w), false); err != nil {
			return err
		}
	}
	return nil
}

// peerError names the peer and the deadline in an error.
func (c *Comm) peerError(what string, peer int, err error) error {
	left, right := c.t.Peers()
	addr := left
	if peer == mod(c.cfg.Rank+1, c.cfg.World) && what == "sending to" {
		addr = right
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("allreduce: rank %d: %s rank %d (%s) timed out after %s in collective %d (generation %d): %w",
			c.cfg.Rank, what, peer, addr, c.cfg.Timeout, c.seq, c.cfg.Generation, err)
	}
	return fmt.Errorf("allreduce: rank %d: %s rank %d (%s) failed in collective %d (generation %d): %w",
		c.cfg.Rank, what, peer, addr, c.seq, c.cfg.Generation, err)
}

func (c *Comm) check(f Frame, part uint32, want int) error {
	left, _ := c.t.Peers()
	if f.Seq != c.seq || f.Part != part {
		return fmt.Errorf("allreduce: rank %d got collective %d part %d from rank %d (%s), expected collective %d part %d: the ranks are out of step",
			c.cfg.Rank, f.Seq, f.Part, mod(c.cfg.Rank-1, c.cfg.World), left, c.seq, part)
	}
	if len(f.Data) != want {
		return c.lengthMismatch(len(f.Data), want)
	}
	return nil
}

func (c *Comm) lengthMismatch(got, want int) error {
	left, _ := c.t.Peers()
	return fmt.Errorf("allreduce: rank %d got a chunk of %d elements from rank %d (%s) in collective %d, expected %d: the ranks passed buffers of different lengths",
		c.cfg.Rank, got, mod(c.cfg.Rank-1, c.cfg.World), left, c.seq, want)
}

// FrameTooLargeError is returned by a transport's Recv when a frame does not
// fit the buffer the caller expected to fill.
type FrameTooLargeError struct{ Got, Room int }

func (e *FrameTooLargeError) Error() string {
	return fmt.Sprintf("allreduce: frame of %d elements exceeds the %d expected", e.Got, e.Room)
}

func addTo(dst, src []float32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] += src[i]
	}
}

// Barrier returns once every rank has entered it.
func (c *Comm) Barrier(ctx context.Context) error {
	var one [1]float32
	return c.AllReduce(ctx, one[:], Sum)
}

func (c *Comm) begin() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return fmt.Errorf("%w (first error: %v)", ErrBroken, c.broken)
	}
	return nil
}

func (c *Comm) fail(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken == nil {
		c.broken = err
	}
	return err
}
