package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ringmaster/ringmaster/internal/version"
	"github.com/ringmaster/ringmaster/internal/worker"
)

// NewWorkerCommand returns the worker command: register in etcd, wait for
// assignments, train.
func NewWorkerCommand() *cobra.Command {
	var cfg worker.Config
	var lf logFlags
	var drainTimeout time.Duration
	cmd := &cobra.Command{
		Use:     "worker --coordinator ADDR [--listen ADDR] [--device cpu]",
		Version: version.Version,
		Short:   "Run a training worker that registers with a coordinator and trains the ranks it is assigned",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Coordinator == "" {
				cfg.Coordinator = os.Getenv("RINGMASTER_ADDR")
			}
			if cfg.JoinToken == "" {
				cfg.JoinToken = os.Getenv(worker.JoinTokenEnv)
			}
			log, err := lf.build()
			if err != nil {
				return err
			}
			defer log.Sync()
			w, err := worker.New(cfg, log)
			if err != nil {
				return err
			}
			// SIGTERM drains: the worker leaves its job at the next step
			// boundary, then exits; a second signal, SIGINT, or the drain
			// timeout stops it at once.
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			go func() {
				select {
				case sig := <-sigs:
					if sig != syscall.SIGTERM {
						cancel()
						return
					}
					log.Info("SIGTERM: draining", zap.Duration("timeout", drainTimeout))
					w.Drain()
				case <-ctx.Done():
					return
				}
				select {
				case <-sigs:
				case <-time.After(drainTimeout):
					log.Warn("drain timed out; stopping")
				case <-ctx.Done():
				}
				cancel()
			}()
			return w.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Coordinator, "coordinator", "", "coordinator API address, or the replicas' addresses separated by commas (default $RINGMASTER_ADDR)")
	f.StringVar(&cfg.ID, "id", "", "worker id in etcd (default hostname-pid)")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:7071", "ring (all-reduce) listen address; port 0 picks one")
	f.StringVar(&cfg.Advertise, "advertise", "", "ring address peers dial (default: the bound address)")
	f.StringVar(&cfg.Device, "device", "cpu", "compute device")
	f.IntVar(&cfg.Threads, "threads", 0, "goroutines per compute kernel (0: all CPUs)")
	f.StringSliceVar(&cfg.EtcdEndpoints, "etcd-endpoints", nil, "etcd endpoints to use instead of those the coordinator advertises (a proxy, another route)")
	f.StringVar(&cfg.CacheDir, "cache-dir", "", "where dataset shards from object storage are staged while in use (default: the temporary directory)")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", worker.DefaultLeaseTTL, "registration lease TTL: a dead or hung worker is noticed within it")
	f.DurationVar(&cfg.StallTimeout, "stall-timeout", worker.DefaultStallTimeout, "report this worker wedged when its training loop makes no progress in its own computation for this long (at least 10 times its longest step computation; 0: never)")
	f.DurationVar(&drainTimeout, "drain-timeout", time.Minute, "after SIGTERM, how long the worker may take to leave its job at a step boundary")
	f.StringVar(&cfg.HealthListen, "health-listen", "", "serve the HTTP probes /healthz and /readyz (ready: registered with a confirmed lease) on host:port; empty: none")
	f.BoolVar(&cfg.Insecure, "insecure", false, "plain text without authentication, for a coordinator run with --insecure")
	f.StringVar(&cfg.JoinToken, "join-token", "", "join token from `coordinator token create --role worker` (default $"+worker.JoinTokenEnv+"); traded for this worker's certificate at first start")
	addExternalTLSFlags(cmd, &cfg.EtcdTLS, &cfg.NATSTLS)
	f.StringVar(&cfg.CAFile, "ca-file", "", "the cluster's CA certificate (PEM): pins the coordinator for a join token without a CA hash (ID.SECRET, as the Helm chart's)")
	f.StringVar(&cfg.Credentials, "credentials", "", "this worker's credential file (instead of a join token)")
	f.StringVar(&cfg.StateDir, "state-dir", "ringmaster-worker-data", "where the worker keeps the credential it got by joining")
	f.StringVar(&cfg.SampleLog, "sample-log", "", "append one line per committed step to this file (which samples the ring consumed; for tests)")
	addLogFlags(cmd, &lf)
	return cmd
}

func addLogFlags(cmd *cobra.Command, lf *logFlags) {
	cmd.Flags().StringVar(&lf.level, "log-level", "info", "log level: debug, info, warn, error")
	cmd.Flags().StringVar(&lf.format, "log-format", "console", "log format: console or json")
	cmd.Flags().StringVar(&lf.file, "log-file", "", "write logs to this file instead of stderr")
}

// runContext is the context of a long-running command: cancelled by
// SIGINT or SIGTERM.
func runContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}
