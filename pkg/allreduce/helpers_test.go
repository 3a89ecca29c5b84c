package allreduce

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

func TestMain(m *testing.M) {
	if maybeRunProcRank() {
		return
	}
	goleak.VerifyTestMain(m)
}

// ring is one ring generation of communicators under test.
type ring struct {
	comms []*Comm
	net   *InmemNetwork // inmem only
	nodes []*grpcNode   // grpc only
}

func (r *ring) close() {
	for _, c := range r.comms {
		if c != nil {
			c.Close()
		}
	}
}

// grpcNode is one worker's ring endpoint on loopback.
type grpcNode struct {
	hub  *Hub
	srv  *grpc.Server
	addr string
	lis  net.Listener
}

func startNode(t testing.TB) *grpcNode {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hub := NewHub(zap.NewNop(), nil)
	srv := grpc.NewServer(ServerOptions(nil)...)
	hub.Register(srv)
	go srv.Serve(lis)
	return &grpcNode{hub: hub, srv: srv, addr: lis.Addr().String(), lis: lis}
}

func startNodes(t testing.TB, n int) []*grpcNode {
	nodes := make([]*grpcNode, n)
	for i := range nodes {
		nodes[i] = startNode(t)
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			nd.srv.Stop()
		}
	})
	return nodes
}

func addrsOf(nodes []*grpcNode) []string {
	a := make([]string, len(nodes))
	for i, n := range nodes {
		a[i] = n.addr
	}
	return a
}

// dialRing sets up generation gen on nodes with cfg (Rank, World and
// Generation are filled in).
func dialRing(t testing.TB, nodes []*grpcNode, job string, gen uint64, cfg Config) *ring {
	world := len(nodes)
	comms := make([]*Comm, world)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			tr, err := nodes[r].hub.Dial(ctx, Peering{Job: job, Generation: gen, Rank: r, World: world, Addrs: addrsOf(nodes)})
			if err != nil {
				errs[r] = err
				return
			}
			c := cfg
			c.Rank, c.World, c.Generation = r, world, gen
			comms[r], errs[r] = New(c, tr)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return &ring{comms: comms, nodes: nodes}
}

func inmemRing(t testing.TB, world int, cfg Config) *ring {
	n := NewInmemNetwork(world)
	comms := make([]*Comm, world)
	for r := range comms {
		c := cfg
		c.Rank, c.World = r, world
		var err error
		comms[r], err = New(c, n.Transport(r))
		if err != nil {
			t.Fatal(err)
		}
	}
	return &ring{comms: comms, net: n}
}

// newRing builds a ring on the named transport; it is closed at cleanup.
func newRing(t testing.TB, kind string, world int, cfg Config) *ring {
	var r *ring
	if kind == "inmem" {
		r = inmemRing(t, world, cfg)
	} else {
		r = dialRing(t, startNodes(t, world), "job", 1, cfg)
	}
	t.Cleanup(r.close)
	return r
}

var kinds = []string{"inmem", "grpc"}

// runAll runs fn on every rank concurrently and returns each rank's error.
func runAll(comms []*Comm, fn func(c *Comm) error) []error {
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for i, c := range comms {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = fn(c) }()
	}
	wg.Wait()
	return errs
}
