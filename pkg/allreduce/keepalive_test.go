package allreduce

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// freezer silences a node's connections the way a host that vanishes
// without a TCP reset does (power loss, a cut cable): from the moment it
// freezes, nothing more is read or written on them, and nothing is closed.
type freezer struct {
	once, ended sync.Once
	frozen      chan struct{}
	gone        chan struct{} // closed when the test is over: silenced calls fail
}

func newFreezer() *freezer { return &freezer{frozen: make(chan struct{}), gone: make(chan struct{})} }

func (f *freezer) freeze() { f.once.Do(func() { close(f.frozen) }) }

// end makes every silenced call fail, so that the node can shut down.
func (f *freezer) end() { f.ended.Do(func() { close(f.gone) }) }

func (f *freezer) wrap(c net.Conn) net.Conn {
	return &frozenConn{Conn: c, f: f, closed: make(chan struct{})}
}

type frozenConn struct {
	net.Conn
	f      *freezer
	once   sync.Once
	closed chan struct{}
}

func (c *frozenConn) isFrozen() bool {
	select {
	case <-c.f.frozen:
		return true
	default:
		return false
	}
}

// hang blocks until the connection is closed on this side or the test
// ends the freeze.
func (c *frozenConn) hang() (int, error) {
	select {
	case <-c.closed:
	case <-c.f.gone:
	}
	return 0, net.ErrClosed
}

func (c *frozenConn) Read(b []byte) (int, error) {
	if c.isFrozen() {
		return c.hang()
	}
	n, err := c.Conn.Read(b)
	if c.isFrozen() {
		return c.hang() // what arrived after the freeze is lost
	}
	return n, err
}

func (c *frozenConn) Write(b []byte) (int, error) {
	if c.isFrozen() {
		return c.hang()
	}
	return c.Conn.Write(b)
}

func (c *frozenConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

type freezingListener struct {
	net.Listener
	f *freezer
}

func (l freezingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.f.wrap(c), nil
}

// startFreezableNode starts a ring endpoint whose every connection,
// accepted or dialled, goes silent when f freezes.
func startFreezableNode(t *testing.T, f *freezer) *grpcNode {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hub := NewHub(zap.NewNop(), nil)
	hub.dial = func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return f.wrap(c), nil
	}
	srv := grpc.NewServer(ServerOptions(nil)...)
	hub.Register(srv)
	go srv.Serve(freezingListener{Listener: lis, f: f})
	return &grpcNode{hub: hub, srv: srv, addr: lis.Addr().String(), lis: lis}
}

// A peer that goes silent mid-collective (no reset, no close) is noticed
// by the ring's keepalives, long before the collective's deadline, and
// every survivor's error names it.
func TestKeepaliveNoticesASilentPeer(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const world, silent = 4, 2
	freezers := make([]*freezer, world)
	nodes := make([]*grpcNode, world)
	for i := range nodes {
		freezers[i] = newFreezer()
		nodes[i] = startFreezableNode(t, freezers[i])
	}
	// Only the keepalives can end the collective within the test's wait.
	r := dialRing(t, nodes, "job", 1, Config{Timeout: 10 * time.Minute})
	warmUp(t, r)
	freezers[silent].freeze()
	survivors := make([]*Comm, world)
	for _, s := range others(world, silent) {
		survivors[s] = r.comms[s]
	}
	done := make(chan []error, 1)
	go func() {
		done <- runAll(survivors, func(c *Comm) error {
			return c.AllReduce(context.Background(), make([]float32, 1<<18), Sum)
		})
	}()
	wait := 10 * (KeepaliveTime + KeepaliveTimeout)
	select {
	case errs := <-done:
		for _, s := range others(world, silent) {
			switch err := errs[s]; {
			case err == nil:
				t.Errorf("survivor rank %d: no error", s)
			case !strings.Contains(err.Error(), "rank 2"):
				t.Errorf("survivor rank %d: the error does not blame rank 2: %v", s, err)
			default:
				t.Logf("rank %d: %v", s, err)
			}
		}
	case <-time.After(wait):
		t.Errorf("the survivors did not notice the silent peer within %v (keepalive %v + %v)", wait, KeepaliveTime, KeepaliveTimeout)
		freezers[silent].end()
		for _, c := range r.comms {
			c.Close()
		}
		<-done
	}
	freezers[silent].end()
	r.close()
	stopNodes(r)
}
