package allreduce

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Fault tests: each returns the right error on every survivor within the
// deadline, naming the rank (and address) at fault, and leaks nothing.

const faultTimeout = 2 * time.Second

// survivorsFail runs one all-reduce on the given ranks and checks that each
// fails within the deadline (plus scheduling slack) with an error that
// contains every string in want.
func survivorsFail(t *testing.T, r *ring, survivors []int, n int, want ...string) []error {
	t.Helper()
	comms := make([]*Comm, len(r.comms))
	for _, s := range survivors {
		comms[s] = r.comms[s]
	}
	start := time.Now()
	errs := runAll(comms, func(c *Comm) error {
		return c.AllReduce(context.Background(), make([]float32, n), Sum)
	})
	elapsed := time.Since(start)
	if elapsed > faultTimeout+time.Second {
		t.Errorf("survivors took %v to fail; the deadline is %v", elapsed, faultTimeout)
	}
	for _, s := range survivors {
		err := errs[s]
		if err == nil {
			t.Errorf("survivor rank %d: no error", s)
			continue
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("survivor rank %d: error does not say %q: %v", s, w, err)
			}
		}
	}
	return errs
}

func warmUp(t *testing.T, r *ring) {
	t.Helper()
	checkAll(t, runAll(r.comms, func(c *Comm) error { return c.AllReduce(context.Background(), make([]float32, 1<<16), Sum) }))
}

func others(world, except int) []int {
	var s []int
	for i := range world {
		if i != except {
			s = append(s, i)
		}
	}
	return s
}

func TestFaultPeerKilled(t *testing.T) {
	for _, kind := range kinds {
		for _, n := range []int{100, 1 << 18} { // direct and ring
			t.Run(kind, func(t *testing.T) {
				defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
				const world, dead = 4, 2
				var r *ring
				if kind == "inmem" {
					r = inmemRing(t, world, Config{Timeout: faultTimeout})
				} else {
					r = dialRing(t, startNodesNoCleanup(t, world), "job", 1, Config{Timeout: faultTimeout})
				}
				warmUp(t, r)
				// The process of rank 2 dies: its connections drop.
				if kind == "inmem" {
					r.net.Kill(dead)
				} else {
					r.nodes[dead].srv.Stop()
					r.comms[dead].t.Close(doneCtx())
				}
				addr := r.comms[0].t.Addr(dead)
				survivorsFail(t, r, others(world, dead), n, "rank 2", addr)
				r.close()
				stopNodes(r)
			})
		}
	}
}

func TestFaultPeerStopped(t *testing.T) {
	for _, kind := range kinds {
		for _, n := range []int{100, 1 << 18} {
			t.Run(kind, func(t *testing.T) {
				defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
				const world, stopped = 4, 1
				var r *ring
				if kind == "inmem" {
					r = inmemRing(t, world, Config{Timeout: faultTimeout})
				} else {
					r = dialRing(t, startNodesNoCleanup(t, world), "job", 1, Config{Timeout: faultTimeout})
				}
				warmUp(t, r)
				// Rank 1 hangs (a blocked handler, or SIGSTOP): its
				// connections stay up but it never takes part.
				addr := r.comms[0].t.Addr(stopped)
				survivorsFail(t, r, others(world, stopped), n, "rank 1 ("+addr+") did not answer", "timed out")
				r.close()
				stopNodes(r)
			})
		}
	}
}

func TestFaultPartition(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const world, cut = 5, 3
	r := inmemRing(t, world, Config{Timeout: faultTimeout})
	warmUp(t, r)
	r.net.Partition(cut)
	errs := survivorsFail(t, r, others(world, cut), 1<<18, "rank 3 (inmem:3) did not answer")
	_ = errs
	r.close()
}

func TestFaultLengthMismatch(t *testing.T) {
	for _, kind := range kinds {
		for _, n := range []int{100, 1 << 18} {
			t.Run(kind, func(t *testing.T) {
				defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
				const world = 4
				var r *ring
				if kind == "inmem" {
					r = inmemRing(t, world, Config{Timeout: faultTimeout})
				} else {
					r = dialRing(t, startNodesNoCleanup(t, world), "job", 1, Config{Timeout: faultTimeout})
				}
				start := time.Now()
				errs := runAll(r.comms, func(c *Comm) error {
					m := n
					if c.Rank() == 2 {
						m = n + 1
					}
					return c.AllReduce(context.Background(), make([]float32, m), Sum)
				})
				if d := time.Since(start); d > faultTimeout {
					t.Errorf("a mismatch took %v to report; it should not wait for the deadline (%v)", d, faultTimeout)
				}
				for rank, err := range errs {
					if err == nil {
						t.Errorf("rank %d: no error for mismatched lengths", rank)
						continue
					}
					// Every rank names rank 2 with its length and a
					// neighbour with the other length.
					for _, w := range []string{"rank 2 (", "disagree", itoa(n+1) + " float32", itoa(n) + " float32"} {
						if !strings.Contains(err.Error(), w) {
							t.Errorf("rank %d: error does not say %q: %v", rank, w, err)
						}
					}
				}
				r.close()
				stopNodes(r)
			})
		}
	}
}

func TestFaultStaleGeneration(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	nodes := startNodesNoCleanup(t, 3)
	defer stopNodes(&ring{nodes: nodes})
	// Generation 2 runs on all three nodes.
	r := dialRing(t, nodes, "job", 2, Config{Timeout: faultTimeout})
	defer r.close()
	warmUp(t, r)
	// A straggler of generation 1 (from a fresh process that missed the
	// resize) tries to join as rank 0: every current node refuses it.
	straggler := startNode(t)
	defer straggler.srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := straggler.hub.Dial(ctx, Peering{Job: "job", Generation: 1, Rank: 0, World: 3,
		Addrs: []string{straggler.addr, nodes[1].addr, nodes[2].addr}})
	if err == nil || !strings.Contains(err.Error(), "stale ring generation 1") || !strings.Contains(err.Error(), "generation 2") {
		t.Fatalf("stale dial: %v, want a refusal naming generations 1 and 2", err)
	}
	// On a node that has seen generation 2, dialing generation 1 fails locally.
	_, err = nodes[0].hub.Dial(ctx, Peering{Job: "job", Generation: 1, Rank: 0, World: 3, Addrs: addrsOf(nodes)})
	if err == nil || !strings.Contains(err.Error(), "older than generation 2") {
		t.Fatalf("dialing a stale generation locally: %v", err)
	}
	// The current ring is unaffected.
	warmUp(t, r)
}

func TestCallerCancelStopsEveryRank(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	nodes := startNodesNoCleanup(t, 3)
	defer stopNodes(&ring{nodes: nodes})
	r := dialRing(t, nodes, "job", 1, Config{Timeout: time.Minute})
	defer r.close()
	warmUp(t, r)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	// Rank 1 never enters; rank 0's caller gives up; rank 2 must stop
	// too, told by rank 0, well before its own one-minute deadline.
	var wg sync.WaitGroup
	var err0, err2 error
	wg.Add(2)
	go func() { defer wg.Done(); err0 = r.comms[0].AllReduce(ctx, make([]float32, 10), Sum) }()
	go func() { defer wg.Done(); err2 = r.comms[2].AllReduce(context.Background(), make([]float32, 10), Sum) }()
	wg.Wait()
	if !errors.Is(err0, context.Canceled) {
		t.Errorf("rank 0: %v, want context.Canceled", err0)
	}
	if err2 == nil || !strings.Contains(err2.Error(), "rank 0's caller ended") {
		t.Errorf("rank 2: %v, want rank 0's cancellation", err2)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestBrokenCommStaysBroken(t *testing.T) {
	r := newRing(t, "inmem", 2, Config{Timeout: 200 * time.Millisecond})
	if err := r.comms[0].AllReduce(context.Background(), make([]float32, 4), Sum); err == nil {
		t.Fatal("no error with rank 1 absent")
	}
	if err := r.comms[0].AllReduce(context.Background(), make([]float32, 4), Sum); !errors.Is(err, ErrBroken) {
		t.Fatalf("second call on a broken comm: %v, want ErrBroken", err)
	}
}

func doneCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func startNodesNoCleanup(t testing.TB, n int) []*grpcNode {
	nodes := make([]*grpcNode, n)
	for i := range nodes {
		nodes[i] = startNode(t)
	}
	return nodes
}

func stopNodes(r *ring) {
	for _, nd := range r.nodes {
		nd.srv.Stop()
	}
}
