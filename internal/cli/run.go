package cli

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/coordinator"
	"github.com/ringmaster/ringmaster/internal/worker"
)

func newRunCommand(insecureFlag *bool) *cobra.Command {
	var (
		workers int
		threads int
		dataDir string
		lf      logFlags
		policy  localPolicy
	)
	cmd := &cobra.Command{
		Use:   "run JOB.yaml [--local-workers N]",
		Short: "Run a whole job on this machine: a coordinator with embedded etcd and NATS, N local worker processes, and a live progress view",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if workers < 1 {
				return fmt.Errorf("--local-workers %d: start at least 1 worker", workers)
			}
			if dataDir, err = filepath.Abs(dataDir); err != nil {
				return err
			}
			logDir := filepath.Join(dataDir, "logs")
			if lf.file == "" {
				lf.file = filepath.Join(logDir, "coordinator.log")
			}
			log, err := lf.build()
			if err != nil {
				return err
			}
			defer log.Sync()
			out := cmd.OutOrStdout()
			ctx, stop := runContext(cmd.Context())
			defer stop()

			pol, err := policy.widen(dataDir, spec)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			c, err := coordinator.Start(coordinator.Config{Listen: "127.0.0.1:0", DataDir: dataDir, Policy: pol, Insecure: *insecureFlag}, log)
			if err != nil {
				return err
			}
			defer c.Close()
			// The local workers join like any other: with a token, over
			// mutual TLS (unless --insecure).
			var token string
			if !c.Insecure() {
				tctx, cancel := context.WithTimeout(ctx, rpcTimeout)
				tok, _, err := c.CreateToken(tctx, "worker", time.Hour)
				cancel()
				if err != nil {
					return err
				}
				token = tok.String()
			}
			fmt.Fprintf(out, "coordinator %s (data %s, logs %s)\n", c.Addr(), dataDir, logDir)

			if threads <= 0 {
				threads = max(1, runtime.NumCPU()/workers)
			}
			procs, err := startLocalWorkers(ctx, c.Addr(), workers, threads, logDir, filepath.Join(dataDir, "workers"), token, log)
			if err != nil {
				return err
			}
			defer stopLocalWorkers(procs, log)
			fmt.Fprintf(out, "started %d local workers (%d compute threads each)\n", workers, threads)

			dialOpt, err := c.AdminDialOption()
			if err != nil {
				return err
			}
			conn, err := grpc.NewClient(c.Addr(), dialOpt)
			if err != nil {
				return err
			}
			defer conn.Close()
			cli := pb.NewCoordinatorClient(conn)
			sctx, cancel := context.WithTimeout(ctx, rpcTimeout)
			resp, err := cli.SubmitJob(sctx, &pb.SubmitJobRequest{SpecYaml: spec})
			cancel()
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], rpcError(err))
			}
			fmt.Fprintf(out, "submitted job %s\n", resp.JobId)

			final, err := watchJob(ctx, cli, resp.JobId, out)
			if err != nil {
				if ctx.Err() != nil {
					fmt.Fprintf(out, "interrupted; resume later with: coordinator run --data-dir %s ... or coordinator resume %s\n", dataDir, resp.JobId)
				}
				return err
			}
			if r := final.Result; r != nil {
				gctx, cancel := context.WithTimeout(ctx, rpcTimeout)
				job, err := cli.GetJob(gctx, &pb.GetJobRequest{JobId: resp.JobId})
				cancel()
				if err != nil {
					return rpcError(err)
				}
				fmt.Fprintf(out, "%s\n", evalSummary(job.Spec, r))
				fmt.Fprintf(out, "final loss: %.4f after %d steps\n", r.FinalLoss, r.Steps)
				fmt.Fprintf(out, "last checkpoint: %s\n", r.LastCheckpoint)
			}
			return finalError(resp.JobId, final)
		},
	}
	f := cmd.Flags()
	f.IntVar(&workers, "local-workers", 2, "worker processes to start on this machine")
	f.IntVar(&threads, "threads", 0, "compute threads per worker (default: CPUs / workers)")
	f.StringVar(&dataDir, "data-dir", "ringmaster-data", "directory for etcd data, checkpoints and logs")
	addPolicyFlags(cmd, &policy.Policy, true)
	addLogFlags(cmd, &lf)
	return cmd
}

type localWorker struct {
	cmd  *exec.Cmd
	done chan error
}

// startLocalWorkers starts worker processes of this same binary; they die
// with this process (SIGTERM on a clean stop; the parent-death signal if it
// is killed).
// They join with token (in their environment, not on their command line),
// keeping their credentials in stateDir; without a token they run
// --insecure.
func startLocalWorkers(ctx context.Context, coordAddr string, n, threads int, logDir, stateDir, token string, log *zap.Logger) ([]*localWorker, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var procs []*localWorker
	for i := range n {
		id := fmt.Sprintf("local-%d", i)
		args := []string{"worker", "--coordinator", coordAddr, "--id", id, "--listen", "127.0.0.1:0",
			"--threads", fmt.Sprint(threads), "--log-file", filepath.Join(logDir, id+".log"), "--state-dir", stateDir}
		if token == "" {
			args = append(args, "--insecure")
		}
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), worker.JoinTokenEnv+"="+token)
		cmd.SysProcAttr = childAttr()
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			stopLocalWorkers(procs, log)
			return nil, fmt.Errorf("starting worker %s: %w", id, err)
		}
		lw := &localWorker{cmd: cmd, done: make(chan error, 1)}
		go func() { lw.done <- cmd.Wait() }()
		procs = append(procs, lw)
		log.Info("local worker started", zap.String("id", id), zap.Int("pid", cmd.Process.Pid))
	}
	return procs, nil
}

func stopLocalWorkers(procs []*localWorker, log *zap.Logger) {
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			log.Warn("worker did not stop; killing it", zap.Int("pid", p.cmd.Process.Pid))
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}
