package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/cli"
	"github.com/ringmaster/ringmaster/internal/coordinator"
	"github.com/ringmaster/ringmaster/internal/worker"
)

// recoveryBench measures how fast a job recovers from one lost worker: a
// real coordinator (in this process, embedded etcd and NATS) and real
// worker processes (this binary's hidden worker command) train the CNN on
// MNIST; at --at-step one rank gets the fault.
type recoveryBench struct {
	workers, rank int
	model, fault  string
	atStep        int64
	steps         int64
	batch         int
	leaseTTL      time.Duration
	threads       int
	dir           string
}

func newRecoveryCommand() *cobra.Command {
	b := &recoveryBench{}
	cmd := &cobra.Command{
		Use:   "recovery [--workers 4] [--model cnn] [--fault kill|stop] [--rank R] [--at-step N]",
		Short: "Time from a lost worker to the next completed step (in-place recovery)",
		Long: `Runs a coordinator and --workers real worker processes on loopback, trains
the model, and at step --at-step sends rank --rank the fault: kill (SIGKILL:
its TCP connections break) or stop (SIGSTOP: it hangs; only its lease, of
--lease-ttl, tells). Prints one line:

  recovery fault=kill workers=4 detect_s=... recover_s=... redone_steps=...

detect_s is the time from the fault to the coordinator's new ring
generation, recover_s the time to the next step committed after it, and
redone_steps the steps committed under both generations.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return b.run(cmd.Context()) },
	}
	f := cmd.Flags()
	f.IntVar(&b.workers, "workers", 4, "worker processes")
	f.IntVar(&b.rank, "rank", 1, "the rank that gets the fault")
	f.StringVar(&b.model, "model", "cnn", "model: cnn")
	f.StringVar(&b.fault, "fault", "kill", "kill (SIGKILL) or stop (SIGSTOP)")
	f.Int64Var(&b.atStep, "at-step", 40, "the step after which the fault comes")
	f.Int64Var(&b.steps, "steps", 80, "steps of the job")
	f.IntVar(&b.batch, "batch", 32, "per-worker batch")
	f.DurationVar(&b.leaseTTL, "lease-ttl", worker.DefaultLeaseTTL, "the workers' lease TTL")
	f.IntVar(&b.threads, "threads", 1, "compute threads per worker")
	f.StringVar(&b.dir, "dir", "", "directory for etcd data, checkpoints and logs (default: a temporary one)")
	return cmd
}

// newHiddenWorkerCommand is the worker that recovery starts: this binary
// re-executed.
func newHiddenWorkerCommand() *cobra.Command {
	cmd := cli.NewWorkerCommand()
	cmd.Hidden = true
	return cmd
}

func (b *recoveryBench) run(ctx context.Context) error {
	if b.model != "cnn" {
		return fmt.Errorf("--model %s: only cnn is measured", b.model)
	}
	if b.fault != "kill" && b.fault != "stop" {
		return fmt.Errorf("--fault %q: use kill or stop", b.fault)
	}
	if b.rank < 0 || b.rank >= b.workers || b.workers < 2 {
		return fmt.Errorf("--rank %d of --workers %d: need at least 2 workers and a rank among them", b.rank, b.workers)
	}
	dir := b.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "ringbench-recovery-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	log := zap.NewNop()
	c, err := coordinator.Start(coordinator.Config{Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "coord")}, log)
	if err != nil {
		return err
	}
	defer c.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	procs := map[string]*exec.Cmd{}
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGCONT)
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}()
	tok, _, err := c.CreateToken(ctx, "worker", 0)
	if err != nil && !c.Insecure() {
		return err
	}
	for i := range b.workers {
		id := fmt.Sprintf("w%d", i)
		p := exec.Command(exe, "worker", "--coordinator", c.Addr(), "--id", id, "--listen", "127.0.0.1:0",
			"--lease-ttl", b.leaseTTL.String(), "--threads", fmt.Sprint(b.threads), "--log-file", filepath.Join(dir, id+".log"),
			"--state-dir", filepath.Join(dir, "workers"))
		p.Env = append(os.Environ(), "RINGMASTER_JOIN_TOKEN="+tok.String())
		p.Stdout, p.Stderr = os.Stderr, os.Stderr
		if err := p.Start(); err != nil {
			return err
		}
		procs[id] = p
	}
	dialOpt, err := c.AdminDialOption()
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(c.Addr(), dialOpt)
	if err != nil {
		return err
	}
	defer conn.Close()
	api := pb.NewCoordinatorClient(conn)
	if err := waitUntil(ctx, time.Minute, func() (bool, error) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		resp, err := api.ListWorkers(rctx, &pb.ListWorkersRequest{})
		return err == nil && len(resp.GetWorkers()) == b.workers, err
	}); err != nil {
		return fmt.Errorf("waiting for %d workers: %w", b.workers, err)
	}

	// Every step metric and state change, with its arrival time.
	type stepAt struct {
		step int64
		gen  uint64
		at   time.Time
	}
	var mu sync.Mutex
	var steps []stepAt
	var rebuilt time.Time
	stepped := make(chan struct{}, 1)
	var jobID string
	sub, err := c.SubscribeEvents("*", func(ev *pb.JobEvent, _ string) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if s := ev.GetStep(); s != nil {
			steps = append(steps, stepAt{s.Step, s.Generation, now})
			select {
			case stepped <- struct{}{}:
			default:
			}
		}
		if st := ev.GetState(); st != nil && rebuilt.IsZero() && strings.HasPrefix(st.Message, "ring rebuilt") {
			rebuilt = now
		}
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe() //nolint:errcheck
	spec := fmt.Sprintf("name: recovery\nmodel: cnn\nworkers: %d\nbatch_size: %d\noptimizer: {lr: 0.05, momentum: 0.9}\n"+
		"steps: %d\nseed: 1\nmax_restarts: 3\ncheckpoint: {every_steps: 10, keep: 2}\nlog_every: 1000\n", b.workers, b.batch, b.steps)
	resp, err := api.SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: []byte(spec)})
	if err != nil {
		return err
	}
	jobID = resp.JobId
	last := func() stepAt {
		mu.Lock()
		defer mu.Unlock()
		if len(steps) == 0 {
			return stepAt{}
		}
		return steps[len(steps)-1]
	}
	if err := waitUntil(ctx, 5*time.Minute, func() (bool, error) { return last().step >= b.atStep, nil }); err != nil {
		return fmt.Errorf("waiting for step %d: %w", b.atStep, err)
	}
	j, err := api.GetJob(ctx, &pb.GetJobRequest{JobId: jobID})
	if err != nil {
		return err
	}
	victim := j.Assignment.Ranks[b.rank].WorkerId
	gen0 := j.Assignment.Generation
	sig := syscall.SIGKILL
	if b.fault == "stop" {
		sig = syscall.SIGSTOP
	}
	fault := time.Now()
	if err := procs[victim].Process.Signal(sig); err != nil {
		return err
	}
	// The first step committed by a newer generation.
	var next stepAt
	if err := waitUntil(ctx, 2*time.Minute, func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range steps {
			if s.gen > gen0 {
				next = s
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		return fmt.Errorf("waiting for a step of a new generation: %w", err)
	}
	mu.Lock()
	detect := rebuilt.Sub(fault)
	gens := map[int64]map[uint64]bool{}
	for _, s := range steps {
		if gens[s.step] == nil {
			gens[s.step] = map[uint64]bool{}
		}
		gens[s.step][s.gen] = true
	}
	mu.Unlock()
	// Steps committed under the old generation after the fault, and again
	// under the new one.
	redone := 0
	for _, g := range gens {
		if len(g) > 1 {
			redone++
		}
	}
	if rebuilt.IsZero() {
		detect = -1
	}
	fmt.Printf("recovery fault=%s workers=%d rank=%d at_step=%d lease_ttl_s=%.1f detect_s=%.3f recover_s=%.3f redone_steps=%d\n",
		b.fault, b.workers, b.rank, b.atStep, b.leaseTTL.Seconds(), detect.Seconds(), next.at.Sub(fault).Seconds(), redone)
	api.CancelJob(ctx, &pb.CancelJobRequest{JobId: jobID}) //nolint:errcheck // the measurement is done
	return nil
}

// waitUntil polls cond every 5 ms until it is true, it fails, or timeout.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			if last != nil {
				return last
			}
			return fmt.Errorf("timed out after %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
