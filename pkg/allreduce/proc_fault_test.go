//go:build unix

package allreduce

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Fault tests with a real process: the victim rank is this test binary
// re-executed as a child (procRankEnv), so SIGKILL closes its sockets the
// way the kernel does for a crashed worker, and SIGSTOP freezes it with
// its connections still open. The survivors run in the test process.

const procRankEnv = "RINGMASTER_ALLREDUCE_TEST_RANK"

// maybeRunProcRank runs the child side when the test binary was started
// as a rank process; it reports whether it did.
func maybeRunProcRank() bool {
	spec := os.Getenv(procRankEnv)
	if spec == "" {
		return false
	}
	if err := runProcRank(spec, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "rank process:", err)
		os.Exit(1)
	}
	return true
}

// runProcRank is the child: "rank/world" in spec. It prints its address,
// reads the address list, dials the ring, then runs one all-reduce of n
// ones for every "reduce n" line and answers "ok" or "err ...".
func runProcRank(spec string, stdin io.Reader, stdout io.Writer) error {
	var rank, world int
	if _, err := fmt.Sscanf(spec, "%d/%d", &rank, &world); err != nil {
		return fmt.Errorf("bad %s %q", procRankEnv, spec)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hub := NewHub(zap.NewNop(), nil)
	srv := grpc.NewServer(ServerOptions(nil)...)
	hub.Register(srv)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	fmt.Fprintf(stdout, "addr %s\n", lis.Addr())
	sc := bufio.NewScanner(stdin)
	if !sc.Scan() {
		return fmt.Errorf("no address list")
	}
	addrs := strings.Split(strings.TrimPrefix(sc.Text(), "addrs "), ",")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	tr, err := hub.Dial(ctx, Peering{Job: "job", Generation: 1, Rank: rank, World: world, Addrs: addrs})
	cancel()
	if err != nil {
		return err
	}
	c, err := New(Config{Rank: rank, World: world, Generation: 1, Timeout: faultTimeout}, tr)
	if err != nil {
		return err
	}
	defer c.Close()
	for sc.Scan() {
		n, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "reduce "))
		if err != nil {
			return fmt.Errorf("bad command %q", sc.Text())
		}
		buf := make([]float32, n)
		for i := range buf {
			buf[i] = 1
		}
		if err := c.AllReduce(context.Background(), buf, Sum); err != nil {
			fmt.Fprintf(stdout, "err %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		if n > 0 && buf[n-1] != float32(world) {
			fmt.Fprintf(stdout, "err element %d is %v, want %d\n", n-1, buf[n-1], world)
			continue
		}
		fmt.Fprintln(stdout, "ok")
	}
	return nil
}

// procRing is a ring whose last rank is a child process.
type procRing struct {
	ring
	child *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	addr  string // the child's ring address
}

func startProcRing(t *testing.T, world int) *procRing {
	t.Helper()
	victim := world - 1
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d/%d", procRankEnv, victim, world))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &procRing{child: cmd, in: in, out: bufio.NewScanner(outPipe)}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line := p.line(t)
	if !strings.HasPrefix(line, "addr ") {
		t.Fatalf("child said %q, want its address", line)
	}
	p.addr = strings.TrimPrefix(line, "addr ")
	nodes := startNodesNoCleanup(t, victim)
	addrs := append(addrsOf(nodes), p.addr)
	if _, err := fmt.Fprintf(in, "addrs %s\n", strings.Join(addrs, ",")); err != nil {
		t.Fatal(err)
	}
	// The survivors dial while the child dials them.
	comms := make([]*Comm, world)
	errs := make([]error, world)
	type res struct {
		r   int
		c   *Comm
		err error
	}
	ch := make(chan res, victim)
	for r := range victim {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			tr, err := nodes[r].hub.Dial(ctx, Peering{Job: "job", Generation: 1, Rank: r, World: world, Addrs: addrs})
			if err != nil {
				ch <- res{r, nil, err}
				return
			}
			c, err := New(Config{Rank: r, World: world, Generation: 1, Timeout: faultTimeout}, tr)
			ch <- res{r, c, err}
		}()
	}
	for range victim {
		x := <-ch
		comms[x.r], errs[x.r] = x.c, x.err
	}
	p.comms, p.nodes = comms, nodes
	for _, err := range errs {
		if err != nil {
			p.close()
			stopNodes(&p.ring)
			t.Fatal(err)
		}
	}
	return p
}

func (p *procRing) line(t *testing.T) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		if p.out.Scan() {
			got <- p.out.Text()
		} else {
			got <- "(child's output ended)"
		}
	}()
	select {
	case l := <-got:
		return l
	case <-time.After(30 * time.Second):
		t.Fatal("the child said nothing for 30s")
		return ""
	}
}

// reduceAll runs one all-reduce of n on every rank, the child included.
func (p *procRing) reduceAll(t *testing.T, n int) {
	t.Helper()
	if _, err := fmt.Fprintf(p.in, "reduce %d\n", n); err != nil {
		t.Fatal(err)
	}
	errs := runAll(p.comms, func(c *Comm) error {
		buf := make([]float32, n)
		for i := range buf {
			buf[i] = 1
		}
		return c.AllReduce(context.Background(), buf, Sum)
	})
	checkAll(t, errs)
	if l := p.line(t); l != "ok" {
		t.Fatalf("child: %s", l)
	}
}

func TestFaultProcessKilledOrStopped(t *testing.T) {
	signals := map[string]syscall.Signal{"SIGKILL": syscall.SIGKILL, "SIGSTOP": syscall.SIGSTOP}
	for _, name := range []string{"SIGKILL", "SIGSTOP"} {
		sig := signals[name]
		for _, n := range []int{100, 1 << 18} { // direct and ring
			t.Run(fmt.Sprintf("%s/n=%d", name, n), func(t *testing.T) {
				defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
				const world = 4
				p := startProcRing(t, world)
				defer func() {
					p.close()
					stopNodes(&p.ring)
					_ = p.child.Process.Kill()
					_ = p.child.Wait()
				}()
				p.reduceAll(t, n)
				// The survivors enter the next collective; the child
				// does not, and is signalled while they wait for it.
				time.AfterFunc(100*time.Millisecond, func() { _ = p.child.Process.Signal(sig) })
				name := fmt.Sprintf("rank %d (%s)", world-1, p.addr)
				want := []string{name + " is gone"}
				if sig == syscall.SIGSTOP {
					want = []string{name + " did not answer", "timed out"}
				}
				errs := survivorsFail(t, &p.ring, others(world, world-1), n, want...)
				t.Logf("rank 0: %v", errs[0])
			})
		}
	}
}
