package allreduce

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrClosed is returned by a transport that has been closed.
var ErrClosed = errors.New("allreduce: transport closed")

// InmemRing connects world in-memory transports in a ring, for tests. It can
// cut a rank off to simulate a dead peer.
type InmemRing struct {
	links []chan Frame // links[i] carries frames from rank i-1 to rank i
	done  []chan struct{}
	once  []sync.Once
}

// NewInmemRing returns a ring of world in-memory transports.
func NewInmemRing(world int) *InmemRing {
	r := &InmemRing{links: make([]chan Frame, world), done: make([]chan struct{}, world), once: make([]sync.Once, world)}
	for i := range r.links {
		r.links[i] = make(chan Frame, 1)
		r.done[i] = make(chan struct{})
	}
	return r
}

// Transport returns rank's transport.
func (r *InmemRing) Transport(rank int) Transport {
	return &inmemTransport{ring: r, rank: rank}
}

// Kill makes rank's transport fail as if its process died: its sends and
// receives stop, and so do its neighbours' exchanges with it.
func (r *InmemRing) Kill(rank int) { r.once[rank].Do(func() { close(r.done[rank]) }) }

type inmemTransport struct {
	ring *InmemRing
	rank int
}

func (t *inmemTransport) world() int { return len(t.ring.links) }

func (t *inmemTransport) Send(ctx context.Context, f Frame) error {
	right := (t.rank + 1) % t.world()
	// Copy: the sender may reuse its buffer once Send returns.
	f.Data = append([]float32(nil), f.Data...)
	select {
	case t.ring.links[right] <- f:
		return nil
	case <-t.ring.done[t.rank]:
		return ErrClosed
	case <-t.ring.done[right]:
		return fmt.Errorf("rank %d is gone: %w", right, ErrClosed)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *inmemTransport) Recv(ctx context.Context, dst []float32) (Frame, error) {
	left := (t.rank - 1 + t.world()) % t.world()
	select {
	case f := <-t.ring.links[t.rank]:
		if len(f.Data) > len(dst) {
			return Frame{}, &FrameTooLargeError{Got: len(f.Data), Room: len(dst)}
		}
		n := copy(dst, f.Data)
		f.Data = dst[:n]
		return f, nil
	case <-t.ring.done[t.rank]:
		return Frame{}, ErrClosed
	case <-t.ring.done[left]:
		return Frame{}, fmt.Errorf("rank %d is gone: %w", left, ErrClosed)
	case <-ctx.Done():
		return Frame{}, ctx.Err()
	}
}

func (t *inmemTransport) Peers() (string, string) {
	w := t.world()
	return fmt.Sprintf("inmem:%d", (t.rank-1+w)%w), fmt.Sprintf("inmem:%d", (t.rank+1)%w)
}

func (t *inmemTransport) Close() error { t.ring.Kill(t.rank); return nil }
