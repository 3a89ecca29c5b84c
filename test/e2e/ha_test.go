package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/apiclient"
)

// replica is one coordinator process of a replicated control plane.
type replica struct {
	name, addr, dir string
	health          string // the probes' address
	proc            *exec.Cmd
	client          pb.CoordinatorClient
}

// haCluster is three coordinator replicas, each a process with its own
// member of one embedded etcd cluster and one NATS cluster, and workers
// that are given all three addresses.
type haCluster struct {
	*chaosCluster
	replicas       []*replica
	initialCluster string
	natsRoutes     string
	caDir          string // the replicas' shared CA
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startHACluster(t *testing.T, seed uint64) *haCluster {
	t.Helper()
	dir := t.TempDir()
	h := &haCluster{caDir: filepath.Join(dir, "ca")}
	ca, credPath, dialOpt := newTestPKI(t, h.caDir, dir)
	var peers, routes, addrs []string
	for i := range 3 {
		r := &replica{name: fmt.Sprintf("c%d", i+1), addr: freeAddr(t), health: freeAddr(t), dir: filepath.Join(dir, fmt.Sprintf("c%d", i+1))}
		conn, err := apiclient.Dial(r.addr, dialOpt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		r.client = pb.NewCoordinatorClient(conn)
		h.replicas = append(h.replicas, r)
		peers = append(peers, r.name+"=http://"+freeAddr(t))
		routes = append(routes, r.name+"=nats://"+freeAddr(t))
		addrs = append(addrs, r.addr)
	}
	h.initialCluster, h.natsRoutes = strings.Join(peers, ","), strings.Join(routes, ",")
	list := strings.Join(addrs, ",")
	conn, err := apiclient.Dial(list, dialOpt)
	if err != nil {
		t.Fatal(err)
	}
	cl := &cluster{t: t, addr: list, client: pb.NewCoordinatorClient(conn), dir: dir, workers: map[string]*exec.Cmd{},
		ca: ca, credPath: credPath}
	h.chaosCluster = chaosOn(t, cl, seed)
	t.Cleanup(func() {
		cl.killWorkers()
		for _, r := range h.replicas {
			if r.proc != nil {
				_ = r.proc.Process.Signal(syscall.SIGTERM)
				_ = r.proc.Wait()
			}
		}
		conn.Close()
		if t.Failed() {
			cl.dumpLogs()
		}
		if keep := os.Getenv("RINGMASTER_E2E_KEEP"); keep != "" {
			_ = os.CopyFS(filepath.Join(keep, t.Name()), os.DirFS(dir))
		}
	})
	// The members start together: each waits for a quorum of the others.
	for _, r := range h.replicas {
		h.startReplica(r)
	}
	for _, r := range h.replicas {
		h.waitAnswers(r)
	}
	return h
}

// startReplica starts (or restarts, on its data directory) one replica.
// probe GETs an HTTP probe of a process.
func probe(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (h *haCluster) startReplica(r *replica) {
	h.t.Helper()
	cmd := exec.Command(os.Args[0], "serve", "--name", r.name, "--listen", r.addr, "--data-dir", r.dir,
		"--initial-cluster", h.initialCluster, "--nats-routes", h.natsRoutes, "--health-listen", r.health, "--ca-dir", h.caDir,
		"--log-file", filepath.Join(h.dir, "coordinator-"+r.name+".log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	r.proc = cmd
}

func (h *haCluster) waitAnswers(r *replica) {
	h.t.Helper()
	waitFor(h.t, 2*time.Minute, "replica "+r.name+" to answer", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := r.client.Info(ctx, &pb.InfoRequest{})
		return err
	})
}

func (h *haCluster) kill(r *replica) {
	h.t.Helper()
	if err := r.proc.Process.Signal(syscall.SIGKILL); err != nil {
		h.t.Fatal(err)
	}
	_ = r.proc.Wait()
	r.proc = nil
}

// status asks replica r how the control plane stands.
func (h *haCluster) status(r *replica) (*pb.ClusterStatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.client.ClusterStatus(ctx, &pb.ClusterStatusRequest{})
}

// scheduler returns the replica that schedules, as replica r sees it.
func (h *haCluster) scheduler(r *replica) *replica {
	st, err := h.status(r)
	if err != nil {
		return nil
	}
	for _, o := range h.replicas {
		if strings.HasPrefix(st.Scheduler, o.name+" ") {
			return o
		}
	}
	return nil
}

// waitNewScheduler waits until a replica other than dead schedules, as the
// live replica r sees it, and returns it with how long after since it was
// elected (the time of its log line).
func (h *haCluster) waitNewScheduler(r, dead *replica, since time.Time) (*replica, time.Duration) {
	h.t.Helper()
	var next *replica
	waitFor(h.t, time.Minute, "another replica to schedule", func() error {
		if next = h.scheduler(r); next == nil || next == dead {
			return fmt.Errorf("scheduler %v", next)
		}
		return nil
	})
	b, err := os.ReadFile(filepath.Join(h.dir, "coordinator-"+next.name+".log"))
	if err != nil {
		h.t.Fatal(err)
	}
	var elected time.Time
	for _, line := range strings.Split(string(b), "\n") {
		if ts, _, ok := strings.Cut(line, "\t"); ok && strings.Contains(line, "elected leader; scheduling") {
			if at, err := time.Parse("2006-01-02T15:04:05.000Z0700", ts); err == nil && at.After(since) {
				elected = at
			}
		}
	}
	if elected.IsZero() {
		h.t.Fatalf("replica %s schedules, but its log has no election after %v", next.name, since)
	}
	return next, elected.Sub(since)
}

// decisions counts the decisions logged by every replica that contain s.
func (h *haCluster) decisions(s string) int {
	n := 0
	for _, r := range h.replicas {
		b, _ := os.ReadFile(filepath.Join(h.dir, "coordinator-"+r.name+".log"))
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "\tdecided\t") && strings.Contains(line, s) {
				n++
			}
		}
	}
	return n
}

// Three replicas with embedded etcd. kill -9 of the replica that schedules
// mid-job: another takes over within 5 s, training goes on, and a job
// submitted during the failover is scheduled exactly once. Then a second
// replica is killed: the last refuses writes and says why, training still
// goes on. One comes back: writes are accepted again and the job finishes
// in its first generation, every sample seen exactly once.
func TestReplicatedControlPlaneSurvivesReplicaLoss(t *testing.T) {
	seed := chaosSeed(t)
	start := time.Now()
	logf := func(format string, args ...any) {
		t.Helper()
		t.Logf("%5.1fs "+format, append([]any{time.Since(start).Seconds()}, args...)...)
	}
	h := startHACluster(t, seed)
	logf("three replicas answer")
	h.startWorkers("h0", "h1", "h2")
	// An epoch in 264 steps of 2 x 24 samples (with a learning rate for
	// that batch) outlasts the scenario, which starts early in it.
	spec := strings.NewReplacer("batch_size: 32", "batch_size: 24", "lr: 0.05", "lr: 0.02").Replace(chaosSpec("2", 3))
	id := h.submit(spec)
	h.waitCommitted(id, int64(10+h.rng.IntN(20)), 3*time.Minute)

	leader := h.scheduler(h.replicas[0])
	if leader == nil {
		t.Fatal("no replica schedules")
	}
	var others []*replica
	for _, r := range h.replicas {
		if r != leader {
			others = append(others, r)
		}
	}
	before := h.lastCommitted(id)
	killedAt := time.Now()
	h.kill(leader)
	logf("kill -9 of the scheduling replica %s at step %d", leader.name, before)
	// A job submitted while no replica schedules: it must start once.
	type submitted struct {
		out string
		err error
	}
	sub := make(chan submitted, 1)
	smallSpec := writeSpec(t, h.dir, strings.Replace(chaosSpec("1", 3), "epochs: 1", "steps: 20", 1))
	go func() {
		out, err := h.cli("submit", smallSpec)
		sub <- submitted{strings.TrimSpace(out), err}
	}()
	next, took := h.waitNewScheduler(others[0], leader, killedAt)
	logf("replica %s schedules %v after the kill", next.name, took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("a new scheduler took %v, want at most 5s", took)
	}
	s := <-sub
	if s.err != nil {
		t.Fatalf("a submission during the failover: %v: %s", s.err, s.out)
	}
	small := s.out
	h.waitState(small, pb.JobState_JOB_STATE_RUNNING, time.Minute)
	if during := h.lastCommitted(id); during <= before {
		t.Errorf("no step committed during the failover (step %d)", during)
	}

	// Down to one replica: no quorum.
	h.kill(next)
	var last *replica
	for _, r := range others {
		if r != next {
			last = r
		}
	}
	lostQuorum := h.lastCommitted(id)
	logf("kill -9 of %s too at step %d; %s is alone", next.name, lostQuorum, last.name)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	// (Jobs that need 4 workers, of which there are 3, stay pending and
	// take no CPU from the job under test.)
	_, err := last.client.SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: []byte(chaosSpec("4", 3))})
	cancel()
	// A request the last etcd leader took before it noticed it had lost
	// its quorum may commit when the quorum is back: the refusal names
	// the job it may become.
	var maybe string
	if err == nil || !strings.Contains(err.Error(), "no quorum") {
		t.Errorf("a submission to the last replica: got %v, want a refusal that says there is no quorum", err)
	} else {
		logf("refused: %v", err)
		if _, rest, ok := strings.Cut(err.Error(), "may still be recorded as job "); ok {
			maybe, _, _ = strings.Cut(rest, " ")
		}
	}
	st, err := h.status(last)
	if err != nil || st.Quorum {
		t.Errorf("the last replica's status: %v, %v; want an answer without quorum", st, err)
	}
	if code, body := probe(t, last.health, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no quorum") {
		t.Errorf("the last replica's /readyz: %d %q; want 503 saying there is no quorum", code, body)
	}
	if code, _ := probe(t, last.health, "/healthz"); code != http.StatusOK {
		t.Errorf("the last replica's /healthz: %d; want 200 (alive without quorum)", code)
	}
	time.Sleep(3 * time.Second)
	if now := h.lastCommitted(id); now <= lostQuorum {
		t.Errorf("no step committed in 3 s without quorum (step %d)", now)
	} else {
		logf("steps %d to %d committed without quorum", lostQuorum, now)
	}

	// One comes back.
	h.startReplica(leader)
	h.waitAnswers(leader)
	logf("%s is back", leader.name)
	waitFor(t, time.Minute, "quorum and a scheduler", func() error {
		st, err := h.status(last)
		if err != nil {
			return err
		}
		if !st.Quorum || st.Scheduler == "" {
			return fmt.Errorf("quorum %v, scheduler %q", st.Quorum, st.Scheduler)
		}
		if code, body := probe(t, last.health, "/readyz"); code != http.StatusOK {
			return fmt.Errorf("/readyz: %d %q", code, body)
		}
		return nil
	})
	if maybe != "" {
		if out, err := h.cli("cancel", maybe); err != nil && !strings.Contains(out+err.Error(), "does not exist") {
			t.Errorf("cancel %s: %v: %s", maybe, err, out)
		} else {
			logf("the refused submission %s: %s", maybe, strings.TrimSpace(out+fmt.Sprint(err)))
		}
	}
	extra := h.submit(chaosSpec("4", 3))
	if _, err := h.cli("cancel", extra); err != nil {
		t.Errorf("cancel after quorum came back: %v", err)
	}
	h.waitState(extra, pb.JobState_JOB_STATE_CANCELLED, time.Minute)
	logf("writes accepted again")

	j := h.waitState(id, pb.JobState_JOB_STATE_SUCCEEDED, 5*time.Minute)
	logf("job %s succeeded at step %d", id, h.lastCommitted(id))
	if acc := j.Status.Result.GetTestAccuracy(); acc < 0.98 {
		t.Errorf("test accuracy %.4f, want at least 0.98", acc)
	}
	if j.Assignment.Generation != 1 || j.Status.Restarts != 0 {
		t.Errorf("the job finished on generation %d after %d restarts; the ring should never have changed", j.Assignment.Generation, j.Status.Restarts)
	}
	if redone := h.checkExactlyOnce(id, trainSamples(t), 1); redone != 0 {
		t.Errorf("%d steps redone; none should be", redone)
	}
	sj := h.waitState(small, pb.JobState_JOB_STATE_SUCCEEDED, 5*time.Minute)
	logf("job %s succeeded", small)
	if sj.Assignment.Generation != 1 {
		t.Errorf("the job submitted during the failover ended on generation %d, want 1", sj.Assignment.Generation)
	}
	if n := h.decisions("assign job " + small + " "); n != 1 {
		t.Errorf("the job submitted during the failover was assigned %d times, want once", n)
	}
	if n := h.decisions("assign job " + id + " "); n != 1 {
		t.Errorf("the first job was assigned %d times, want once", n)
	}
}
