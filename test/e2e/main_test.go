// Package e2e runs the whole system: an in-process coordinator with
// embedded etcd and NATS, and workers as real processes talking gRPC over
// loopback. The worker processes are this test binary re-executed with the
// "worker" command, so no separate build is needed.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/cli"
	"github.com/ringmaster/ringmaster/internal/coordinator"
	"github.com/ringmaster/ringmaster/internal/events"
	"github.com/ringmaster/ringmaster/internal/jobspec"
	"github.com/ringmaster/ringmaster/internal/pki"
	"github.com/ringmaster/ringmaster/internal/worker"
)

func TestMain(m *testing.M) {
	// Re-executed as a worker (by startWorker, or by `coordinator run`),
	// or as a coordinator in its own process (startCoordinatorProcess).
	if len(os.Args) > 1 && (os.Args[1] == "worker" || os.Args[1] == "serve") {
		cmd := cli.NewCoordinatorCommand()
		cmd.SetArgs(os.Args[1:])
		if err := cmd.Execute(); err != nil {
			fmt.Fprintln(os.Stderr, os.Args[1]+":", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// cluster is a coordinator and its worker processes.
type cluster struct {
	t       *testing.T
	coord   *coordinator.Coordinator // nil when the coordinator runs as a process
	addr    string                   // the coordinator's API address
	proc    *exec.Cmd                // the coordinator process, if any
	client  pb.CoordinatorClient
	dir     string
	mu      sync.Mutex
	workers map[string]*exec.Cmd
	// ca is the cluster's CA (the harness makes it; the coordinators
	// load it), credPath an admin credential of it, token a join token
	// the workers share (made at the first worker's start).
	ca       *pki.CA
	credPath string
	token    string
}

// newTestPKI makes the CA that a cluster's coordinators load from caDir
// and an admin credential of it in dir; it returns the CA, the
// credential's path and the dial option of an API client holding it.
func newTestPKI(t *testing.T, caDir, dir string) (*pki.CA, string, grpc.DialOption) {
	t.Helper()
	ca, _, err := pki.LoadOrCreateCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := ca.Issue(pki.Identity{Role: pki.RoleAdmin, Name: "e2e"}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "e2e-admin.credentials")
	if err := cred.Write(path); err != nil {
		t.Fatal(err)
	}
	cfg, err := cred.ClientTLS(pki.HasRole(pki.RoleCoordinator))
	if err != nil {
		t.Fatal(err)
	}
	return ca, path, grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}

// rootTLS is a client TLS configuration with the coordinators' identity
// (etcd's root user, every NATS permission), for tests that read etcd or
// NATS directly.
func (c *cluster) rootTLS() *tls.Config {
	c.t.Helper()
	cred, err := c.ca.Issue(coordinator.CoordinatorIdentity, nil, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	cfg, err := cred.ClientTLS(pki.HasRole(pki.RoleCoordinator))
	if err != nil {
		c.t.Fatal(err)
	}
	return cfg
}

// joinToken is the workers' join token, made at the first call.
func (c *cluster) joinToken() string {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		resp, err := c.client.CreateToken(ctx, &pb.CreateTokenRequest{Role: pki.RoleWorker}, grpc.WaitForReady(true))
		if err != nil {
			c.t.Fatal(err)
		}
		c.token = resp.Token
	}
	return c.token
}

func startCluster(t *testing.T, opts ...func(*coordinator.Config)) *cluster {
	t.Helper()
	return startClusterOn(t, "127.0.0.1", opts...)
}

// startClusterOn starts a cluster whose coordinator, etcd and NATS listen
// on host. Its submission policy allows stores and datasets in the
// cluster's directory; opts change its configuration further.
func startClusterOn(t *testing.T, host string, opts ...func(*coordinator.Config)) *cluster {
	t.Helper()
	dir := t.TempDir()
	anyPort := net.JoinHostPort(host, "0")
	cfg := coordinator.Config{Listen: anyPort, EmbeddedEtcdListen: anyPort, EmbeddedNATSListen: anyPort,
		DataDir: filepath.Join(dir, "coord"), Policy: jobspec.Policy{FileRoots: []string{dir}, DatasetRoots: []string{dir}}}
	for _, o := range opts {
		o(&cfg)
	}
	ca, credPath, dialOpt := newTestPKI(t, filepath.Join(cfg.DataDir, "pki"), dir)
	c, err := coordinator.Start(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.Addr(), dialOpt)
	if err != nil {
		t.Fatal(err)
	}
	cl := &cluster{t: t, coord: c, addr: c.Addr(), client: pb.NewCoordinatorClient(conn), dir: dir, workers: map[string]*exec.Cmd{},
		ca: ca, credPath: credPath}
	t.Cleanup(func() {
		cl.killWorkers()
		conn.Close()
		c.Close()
		if t.Failed() {
			cl.dumpLogs()
		}
	})
	return cl
}

// testLease is the lease of workers in tests that do not measure how fast
// a dead worker is noticed (TestKilledWorkerLeavesWithinTTL does): long
// enough that a machine busy with other tests does not miss keep-alives
// (under a load average of 10 to 20, 2 and 3 s leases expired on live
// workers), short enough that killed workers are noticed quickly.
const testLease = 8 * time.Second

// startWorker starts a worker process with a lease of ttl, and more flags.
func (c *cluster) startWorker(id string, ttl time.Duration, flags ...string) *exec.Cmd {
	c.t.Helper()
	return c.startWorkerVia(nil, id, ttl, flags...)
}

// startWorkerVia starts a worker process through a command prefix (such as
// `ip netns exec NS`); later flags override earlier ones.
func (c *cluster) startWorkerVia(prefix []string, id string, ttl time.Duration, flags ...string) *exec.Cmd {
	c.t.Helper()
	logf := filepath.Join(c.dir, id+".log")
	argv := append(append(prefix[:len(prefix):len(prefix)], os.Args[0], "worker"), []string{"--coordinator", c.addr, "--id", id, "--listen", "127.0.0.1:0",
		"--lease-ttl", ttl.String(), "--threads", "1", "--log-file", logf, "--state-dir", filepath.Join(c.dir, "workers")}...)
	cmd := exec.Command(argv[0], append(argv[1:], flags...)...)
	cmd.Env = append(os.Environ(), worker.JoinTokenEnv+"="+c.joinToken())
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.workers[id] = cmd
	c.mu.Unlock()
	return cmd
}

// killWorkers ends every worker process still running.
func (c *cluster) killWorkers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.workers {
		_ = w.Process.Kill()
		_ = w.Wait()
	}
}

// kill ends a worker process abruptly (SIGKILL: no deregistration).
func (c *cluster) kill(id string) {
	c.mu.Lock()
	cmd := c.workers[id]
	delete(c.workers, id)
	c.mu.Unlock()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	_ = cmd.Wait()
}

func (c *cluster) dumpLogs() {
	files, _ := filepath.Glob(filepath.Join(c.dir, "*.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		c.t.Logf("--- %s (tail)\n%s", filepath.Base(f), strings.Join(lines, "\n"))
	}
}

// logsContain reports whether any worker's log has s.
func (c *cluster) logsContain(s string) bool {
	files, _ := filepath.Glob(filepath.Join(c.dir, "*.log"))
	for _, f := range files {
		if b, _ := os.ReadFile(f); strings.Contains(string(b), s) {
			return true
		}
	}
	return false
}

// cli runs a coordinator CLI command in-process against this cluster.
func (c *cluster) cli(args ...string) (string, error) {
	cmd := cli.NewCoordinatorCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append(args, "--addr", c.addr, "--credentials", c.credPath))
	err := cmd.Execute()
	return out.String(), err
}

func (c *cluster) job(id string) *pb.Job {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	j, err := c.client.GetJob(ctx, &pb.GetJobRequest{JobId: id})
	if err != nil {
		c.t.Fatal(err)
	}
	return j
}

func (c *cluster) workerIDs() []string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.client.ListWorkers(ctx, &pb.ListWorkersRequest{})
	if err != nil {
		c.t.Fatal(err)
	}
	var ids []string
	for _, w := range resp.Workers {
		ids = append(ids, w.Id)
	}
	return ids
}

// waitFor polls cond until it returns nil or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *cluster) waitState(id string, want pb.JobState, timeout time.Duration) *pb.Job {
	c.t.Helper()
	var j *pb.Job
	waitFor(c.t, timeout, fmt.Sprintf("job %s to be %v", id, want), func() error {
		j = c.job(id)
		if j.Status.State == want {
			return nil
		}
		if j.Status.State == pb.JobState_JOB_STATE_FAILED && want != pb.JobState_JOB_STATE_FAILED {
			c.t.Fatalf("job %s failed: %s", id, j.Status.Message)
		}
		return fmt.Errorf("state %v: %s", j.Status.State, j.Status.Message)
	})
	return j
}

// waitWorkers waits until exactly these workers are registered (a killed
// worker stays registered until its lease expires).
func (c *cluster) waitWorkers(ids ...string) {
	c.t.Helper()
	sort.Strings(ids)
	waitFor(c.t, 60*time.Second, fmt.Sprintf("workers %v to be registered", ids), func() error {
		if got := c.workerIDs(); !slices.Equal(got, ids) {
			return fmt.Errorf("registered: %v", got)
		}
		return nil
	})
}

// lossLog records every step loss published on NATS, per job.
type lossLog struct {
	mu     sync.Mutex
	losses map[string][]stepLoss
}

type stepLoss struct {
	step int64
	loss float64
	gen  uint64
}

func (c *cluster) recordLosses() *lossLog {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := c.client.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		c.t.Fatal(err)
	}
	nc, err := events.Connect(info.NatsUrl, "e2e-test", c.rootTLS())
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(nc.Close)
	l := &lossLog{losses: map[string][]stepLoss{}}
	sub, err := events.Subscribe(nc, "*", func(ev *pb.JobEvent, _ string) {
		if s := ev.GetStep(); s != nil {
			l.mu.Lock()
			l.losses[ev.JobId] = append(l.losses[ev.JobId], stepLoss{s.Step, s.Loss, s.Generation})
			l.mu.Unlock()
		}
	})
	if err != nil {
		c.t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { sub.Unsubscribe() })
	return l
}

func (l *lossLog) of(job string) []stepLoss {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]stepLoss(nil), l.losses[job]...)
}

func writeSpec(t *testing.T, dir, body string) string {
	t.Helper()
	p := filepath.Join(dir, fmt.Sprintf("spec-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
