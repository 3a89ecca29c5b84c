package allreduce

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
)

// ringSetup builds world communicators over one kind of transport.
type ringSetup func(t *testing.T, world int, timeout time.Duration) []*Comm

func inmemSetup(t *testing.T, world int, timeout time.Duration) []*Comm {
	ring := NewInmemRing(world)
	comms := make([]*Comm, world)
	for r := range comms {
		c, err := New(Config{Rank: r, World: world, Timeout: timeout}, ring.Transport(r))
		if err != nil {
			t.Fatal(err)
		}
		comms[r] = c
	}
	return comms
}

// grpcNode is one worker's ring endpoint on loopback.
type grpcNode struct {
	hub  *Hub
	srv  *grpc.Server
	addr string
}

func startNodes(t *testing.T, n int) []*grpcNode {
	nodes := make([]*grpcNode, n)
	for i := range nodes {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hub := NewHub(zaptest.NewLogger(t))
		srv := grpc.NewServer(ServerOptions()...)
		hub.Register(srv)
		go srv.Serve(lis)
		nodes[i] = &grpcNode{hub: hub, srv: srv, addr: lis.Addr().String()}
		t.Cleanup(srv.Stop)
	}
	return nodes
}

func dialRing(t *testing.T, nodes []*grpcNode, job string, gen uint64, timeout time.Duration) []*Comm {
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
			tr, err := nodes[r].hub.Dial(ctx, Peering{Job: job, Generation: gen, Rank: r, World: world,
				Left: nodes[mod(r-1, world)].addr, Right: nodes[(r+1)%world].addr})
			if err != nil {
				errs[r] = err
				return
			}
			comms[r], errs[r] = New(Config{Rank: r, World: world, Generation: gen, Timeout: timeout}, tr)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, c := range comms {
			c.Close()
		}
	})
	return comms
}

func grpcSetup(t *testing.T, world int, timeout time.Duration) []*Comm {
	return dialRing(t, startNodes(t, world), "job", 1, timeout)
}

var setups = map[string]ringSetup{"inmem": inmemSetup, "grpc": grpcSetup}

// runAll runs fn on every rank concurrently and returns each rank's error.
func runAll(comms []*Comm, fn func(c *Comm) error) []error {
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for i, c := range comms {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = fn(c) }()
	}
	wg.Wait()
	return errs
}

func TestAllReduceMatchesSerialSum(t *testing.T) {
	for name, setup := range setups {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			for world := 1; world <= 6; world++ {
				comms := setup(t, world, 10*time.Second)
				for _, n := range []int{0, 1, world - 1, world + 1, 1000, 1 << 16, 1<<16 + 3} {
					for _, op := range []Op{Sum, Avg} {
						bufs := make([][]float32, world)
						want := make([]float64, n)
						for r := range bufs {
							bufs[r] = make([]float32, n)
							for i := range bufs[r] {
								bufs[r][i] = rng.Float32()*2 - 1
								want[i] += float64(bufs[r][i])
							}
						}
						errs := runAll(comms, func(c *Comm) error { return c.AllReduce(context.Background(), bufs[c.Rank()], op) })
						for r, err := range errs {
							if err != nil {
								t.Fatalf("world %d n %d rank %d: %v", world, n, r, err)
							}
						}
						for i := range want {
							w := want[i]
							if op == Avg {
								w /= float64(world)
							}
							if math.Abs(float64(bufs[0][i])-w) > 1e-5*float64(world) {
								t.Fatalf("world %d n %d %v: element %d = %v, want %v", world, n, op, i, bufs[0][i], w)
							}
							for r := 1; r < world; r++ {
								if bufs[r][i] != bufs[0][i] {
									t.Fatalf("world %d n %d: rank %d element %d = %v, rank 0 has %v; replicas must be bit-identical", world, n, r, i, bufs[r][i], bufs[0][i])
								}
							}
						}
					}
				}
			}
		})
	}
}

func TestDeadPeerFailsEverySurvivorWithinDeadline(t *testing.T) {
	const world, timeout = 4, 2 * time.Second
	for name, setup := range setups {
		t.Run(name, func(t *testing.T) {
			comms := setup(t, world, timeout)
			// One good round first, so the streams are established.
			bufs := make([][]float32, world)
			for r := range bufs {
				bufs[r] = make([]float32, 4096)
			}
			if errs := runAll(comms, func(c *Comm) error { return c.AllReduce(context.Background(), bufs[c.Rank()], Sum) }); errors.Join(errs...) != nil {
				t.Fatal(errors.Join(errs...))
			}
			// Rank 2 dies: it never enters the next collective.
			comms[2].Close()
			start := time.Now()
			survivors := []*Comm{comms[0], comms[1], comms[3]}
			errs := runAll(survivors, func(c *Comm) error { return c.AllReduce(context.Background(), bufs[c.Rank()], Sum) })
			elapsed := time.Since(start)
			for i, err := range errs {
				if err == nil {
					t.Errorf("survivor rank %d: no error with rank 2 dead", survivors[i].Rank())
					continue
				}
				if !strings.Contains(err.Error(), "rank ") {
					t.Errorf("survivor rank %d: error does not name a rank: %v", survivors[i].Rank(), err)
				}
			}
			if elapsed > timeout+2*time.Second {
				t.Errorf("survivors took %v to fail, deadline is %v", elapsed, timeout)
			}
			// A broken communicator stays broken.
			if err := comms[0].AllReduce(context.Background(), bufs[0], Sum); !errors.Is(err, ErrBroken) {
				t.Errorf("second call on a broken comm: %v, want ErrBroken", err)
			}
		})
	}
}

func TestLengthMismatchIsAnError(t *testing.T) {
	for name, setup := range setups {
		t.Run(name, func(t *testing.T) {
			comms := setup(t, 2, 2*time.Second)
			errs := runAll(comms, func(c *Comm) error {
				return c.AllReduce(context.Background(), make([]float32, 100+50*c.Rank()), Sum)
			})
			// Every rank fails; the rank that sees the mismatch first says so
			// (its neighbour may only see it stop).
			named := false
			for r, err := range errs {
				if err == nil {
					t.Errorf("rank %d: no error for mismatched lengths", r)
				} else if strings.Contains(err.Error(), "different lengths") {
					named = true
				}
			}
			if !named {
				t.Errorf("no rank named the length mismatch: %v", errs)
			}
		})
	}
}

func TestStaleGenerationIsRefused(t *testing.T) {
	nodes := startNodes(t, 2)
	// Both ranks move to generation 2.
	comms := dialRing(t, nodes, "job", 2, 5*time.Second)
	if errs := runAll(comms, func(c *Comm) error { return c.Barrier(context.Background()) }); errors.Join(errs...) != nil {
		t.Fatal(errors.Join(errs...))
	}
	// A straggler of generation 1 tries to join: node 0 opens a stream to
	// node 1 as rank 0 of generation 1. Node 1 must refuse it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := nodes[0].hub.Dial(ctx, Peering{Job: "job", Generation: 1, Rank: 0, World: 2, Left: nodes[1].addr, Right: nodes[1].addr})
	if err == nil || !strings.Contains(err.Error(), "older than generation 2") {
		t.Fatalf("dialing a stale generation locally: %v", err)
	}
	// From a fresh hub that has not seen generation 2, the remote refuses.
	other := startNodes(t, 1)[0]
	tr, err := other.hub.Dial(ctx, Peering{Job: "job", Generation: 1, Rank: 0, World: 2, Left: nodes[1].addr, Right: nodes[1].addr})
	if err == nil {
		c, _ := New(Config{Rank: 0, World: 2, Generation: 1, Timeout: 2 * time.Second}, tr)
		err = c.AllReduce(ctx, make([]float32, 8), Sum)
		c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "stale ring generation 1") {
		t.Fatalf("stale stream: %v, want a stale generation error", err)
	}
}

func TestContextCancelStopsCollective(t *testing.T) {
	comms := grpcSetup(t, 2, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	// Only rank 0 enters: it must return when ctx is cancelled.
	err := comms[0].AllReduce(ctx, make([]float32, 10), Sum)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("got %v after %v", err, time.Since(start))
	}
}

func BenchmarkAllReduceGRPC(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 18, 1 << 22} {
		b.Run(fmt.Sprintf("world4/%dB", n*4), func(b *testing.B) {
			t := &testing.T{}
			comms := grpcSetup(t, 4, time.Minute)
			bufs := make([][]float32, 4)
			for r := range bufs {
				bufs[r] = make([]float32, n)
			}
			b.SetBytes(int64(n * 4))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				runAll(comms, func(c *Comm) error { return c.AllReduce(context.Background(), bufs[c.Rank()], Sum) })
			}
		})
	}
}
