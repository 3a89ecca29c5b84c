package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
)

// startProcessCluster starts a cluster whose coordinator (`coordinator
// serve`, with its embedded etcd and NATS) runs in its own process, so
// that a test can kill it with SIGKILL and start it again on the same data
// directory and API address.
func startProcessCluster(t *testing.T) *cluster {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	ca, credPath, dialOpt := newTestPKI(t, filepath.Join(dir, "coord", "pki"), dir)
	conn, err := grpc.NewClient(addr, dialOpt)
	if err != nil {
		t.Fatal(err)
	}
	cl := &cluster{t: t, addr: addr, client: pb.NewCoordinatorClient(conn), dir: dir, workers: map[string]*exec.Cmd{},
		ca: ca, credPath: credPath}
	t.Cleanup(func() {
		cl.killWorkers()
		if cl.proc != nil {
			_ = cl.proc.Process.Signal(syscall.SIGTERM)
			_ = cl.proc.Wait()
		}
		conn.Close()
		if t.Failed() {
			cl.dumpLogs()
		}
	})
	cl.startCoordinatorProcess()
	return cl
}

// startCoordinatorProcess starts the coordinator process and waits until
// its API answers.
func (c *cluster) startCoordinatorProcess() {
	c.t.Helper()
	cmd := exec.Command(os.Args[0], "serve", "--listen", c.addr, "--data-dir", filepath.Join(c.dir, "coord"),
		"--embedded-etcd-listen", "127.0.0.1:0", "--embedded-nats-listen", "127.0.0.1:0",
		"--log-file", filepath.Join(c.dir, "coordinator.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.proc = cmd
	waitFor(c.t, time.Minute, "the coordinator's API", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.client.Info(ctx, &pb.InfoRequest{})
		return err
	})
}

// killCoordinator ends the coordinator process with SIGKILL.
func (c *cluster) killCoordinator() {
	c.t.Helper()
	if err := c.proc.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	_ = c.proc.Wait()
	c.proc = nil
}

// lastCommitted is the newest step of job id in the sample log (0: none).
func (c *chaosCluster) lastCommitted(id string) int64 {
	f, err := os.Open(c.samples)
	if err != nil {
		return 0
	}
	defer f.Close()
	var last int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var job string
		var step int64
		if _, err := fmt.Sscan(sc.Text(), &job, &step); err == nil && job == id && step > last {
			last = step
		}
	}
	return last
}

// waitCommitted waits until job id has committed step (from the sample
// log, which needs no control plane).
func (c *chaosCluster) waitCommitted(id string, step int64, timeout time.Duration) {
	c.t.Helper()
	waitFor(c.t, timeout, fmt.Sprintf("step %d of job %s", step, id), func() error {
		if got := c.lastCommitted(id); got < step {
			return fmt.Errorf("at step %d", got)
		}
		return nil
	})
}

// Control plane outages mid-job, in turn: kill -9 of the coordinator (and
// with it the embedded etcd and NATS) and a restart on the same data
// directory 10 s later; then etcd unreachable from the workers alone for
// 20 s (a proxy between them cuts every connection), long enough for
// their leases to expire while the coordinator is up. The workers train
// on through both, the coordinator adopts the job after its restart and
// waits for the unreachable workers instead of restarting the job from a
// checkpoint, and it finishes on its first generation without a failure
// counted, a step redone or a sample skipped.
func TestControlPlaneOutagesDoNotStopTraining(t *testing.T) {
	seed := chaosSeed(t)
	c := chaosOn(t, startProcessCluster(t), seed)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	info, err := c.client.Info(ctx, &pb.InfoRequest{})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	etcdURL, err := url.Parse(info.EtcdEndpoints[0])
	if err != nil {
		t.Fatal(err)
	}
	proxy := startCutProxy(t, etcdURL.Host)
	c.workerFlags = []string{"--etcd-endpoints", etcdURL.Scheme + "://" + proxy.Addr()}
	c.startWorkers("p0", "p1", "p2")
	id := c.submit(chaosSpec("3", 3))
	at := int64(5 + c.rng.IntN(10))
	c.waitCommitted(id, at, 3*time.Minute)
	s0 := c.lastCommitted(id)
	time.Sleep(2 * time.Second)
	before := c.lastCommitted(id)
	c.killCoordinator()
	t.Logf("kill -9 of the coordinator at step %d (%.1f steps/s before)", before, float64(before-s0)/2)
	const outage = 10 * time.Second
	time.Sleep(outage)
	during := c.lastCommitted(id)
	t.Logf("the workers committed steps %d to %d while the control plane was down (%.1f steps/s)", before, during, float64(during-before)/outage.Seconds())
	if during <= before {
		t.Errorf("no step was committed in the %v the control plane was down (step %d)", outage, during)
	}
	c.startCoordinatorProcess()

	// etcd unreachable from the workers only. (On a fast machine the
	// ring may finish its steps during the cut: rank 0 then waits to
	// record the result.)
	before = c.lastCommitted(id)
	proxy.setCut(true)
	const cut = 20 * time.Second
	time.Sleep(cut)
	during = c.lastCommitted(id)
	proxy.setCut(false)
	t.Logf("the workers committed steps %d to %d while etcd was unreachable from them (%.1f steps/s)", before, during, float64(during-before)/cut.Seconds())
	if during <= before {
		t.Errorf("no step was committed in the %v etcd was unreachable from the workers (step %d)", cut, during)
	}

	j := c.checkRecovered(id, 0)
	if j.Assignment.Generation != 1 {
		t.Errorf("the job finished on generation %d, want 1: the ring should not have changed", j.Assignment.Generation)
	}
	for _, h := range j.Status.History {
		if h.Event == "lost" || h.Event == "restarted" {
			t.Errorf("history: %s at step %d: %s", h.Event, h.Step, h.Detail)
		}
	}
	if !c.logsContain("all 3 workers unreachable from etcd") {
		t.Errorf("the coordinator did not record that the workers were unreachable (their leases should have expired in %v)", cut)
	}
}
