package allreduce

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// InmemNetwork connects the transports of one ring in memory, for tests.
// Frames are handed over without copying (the receiver reads the sender's
// buffer until it releases the frame), so a rank that touches a buffer too
// early shows up under the race detector. Kill, Close and Partition
// simulate a dead process, a clean exit and a network partition.
type InmemNetwork struct {
	world   int
	links   [][]*inmemLink // links[from][to]
	notices []chan Notice
	mu      sync.Mutex
	gone    []chan struct{} // closed when the rank's side ends
	once    []sync.Once
	cut     []bool // partitioned: everything to and from it is dropped
}

type inmemLink struct {
	q chan Frame
}

// NewInmemNetwork returns a network of world ranks.
func NewInmemNetwork(world int) *InmemNetwork {
	n := &InmemNetwork{world: world, links: make([][]*inmemLink, world), notices: make([]chan Notice, world),
		gone: make([]chan struct{}, world), once: make([]sync.Once, world), cut: make([]bool, world)}
	for i := range world {
		n.links[i] = make([]*inmemLink, world)
		for j := range world {
			n.links[i][j] = &inmemLink{q: make(chan Frame, 64)}
		}
		n.notices[i] = make(chan Notice, 4*world)
		n.gone[i] = make(chan struct{})
	}
	return n
}

// Transport returns rank's transport.
func (n *InmemNetwork) Transport(rank int) Transport {
	return &inmemTransport{net: n, rank: rank}
}

// Kill ends rank's side at once, as if its process died: frames it sent
// that were not yet received are lost.
func (n *InmemNetwork) Kill(rank int) {
	n.once[rank].Do(func() { close(n.gone[rank]) })
	for to := range n.world {
		drain(n.links[rank][to].q)
	}
	for from := range n.world {
		drain(n.links[from][rank].q)
	}
}

// Partition drops everything rank sends or is sent from now on, notices
// included, without telling anyone: like a network partition that TCP has
// not noticed.
func (n *InmemNetwork) Partition(rank int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut[rank] = true
}

func (n *InmemNetwork) isCut(a, b int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cut[a] || n.cut[b]
}

func drain(q chan Frame) {
	for {
		select {
		case f := <-q:
			if f.Release != nil {
				f.Release()
			}
		default:
			return
		}
	}
}

type inmemTransport struct {
	net  *InmemNetwork
	rank int
}

func (t *inmemTransport) Send(ctx context.Context, to int, f Frame) error {
	n := t.net
	if n.isCut(t.rank, to) {
		if f.Release != nil {
			f.Release()
		}
		return nil
	}
	select {
	case <-n.gone[t.rank]:
		return ErrClosed
	default:
	}
	select {
	case n.links[t.rank][to].q <- f:
		// The receiver may have gone meanwhile; its queue is then drained
		// by whoever ends it, or here.
		select {
		case <-n.gone[to]:
			drain(n.links[t.rank][to].q)
		default:
		}
		return nil
	case <-n.gone[t.rank]:
		return ErrClosed
	case <-n.gone[to]:
		return &PeerGoneError{Rank: to, Addr: t.Addr(to), Err: errors.New("its side of the ring ended")}
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *inmemTransport) Recv(ctx context.Context, from int) (Frame, error) {
	n := t.net
	q := n.links[from][t.rank].q
	select {
	case f := <-q:
		return f, nil
	case <-n.gone[from]:
		select {
		case f := <-q:
			return f, nil
		default:
		}
		return Frame{}, &PeerGoneError{Rank: from, Addr: t.Addr(from), Err: errors.New("its side of the ring ended")}
	case <-n.gone[t.rank]:
		return Frame{}, ErrClosed
	case <-ctx.Done():
		return Frame{}, ctx.Err()
	}
}

func (t *inmemTransport) Notify(ctx context.Context, nt Notice) {
	n := t.net
	for p := range n.world {
		if p == t.rank || n.isCut(t.rank, p) {
			continue
		}
		select {
		case n.notices[p] <- nt:
		default:
		}
	}
}

func (t *inmemTransport) Notices() <-chan Notice { return t.net.notices[t.rank] }

func (t *inmemTransport) Addr(rank int) string { return fmt.Sprintf("inmem:%d", rank) }

// Close waits (within ctx) until the peers have taken what this rank sent,
// then ends its side.
func (t *inmemTransport) Close(ctx context.Context) error {
	n := t.net
	for to := range n.world {
		for len(n.links[t.rank][to].q) > 0 && ctx.Err() == nil {
			select {
			case <-n.gone[to]:
				drain(n.links[t.rank][to].q)
			case <-ctx.Done():
			default:
				waitABit(ctx)
			}
		}
	}
	n.Kill(t.rank)
	return nil
}

func waitABit(ctx context.Context) {
	t := time.NewTimer(time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
