package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ringmaster/ringmaster/internal/worker"
)

// NewWorkerCommand returns the worker command: register in etcd, wait for
// assignments, train.
func NewWorkerCommand() *cobra.Command {
	var cfg worker.Config
	var lf logFlags
	cmd := &cobra.Command{
		Use:   "worker --coordinator ADDR [--listen ADDR] [--device cpu]",
		Short: "Run a training worker that registers with a coordinator and trains the ranks it is assigned",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Coordinator == "" {
				cfg.Coordinator = os.Getenv("RINGMASTER_ADDR")
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
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return w.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Coordinator, "coordinator", "", "coordinator API address (default $RINGMASTER_ADDR)")
	f.StringVar(&cfg.ID, "id", "", "worker id in etcd (default hostname-pid)")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:7071", "ring (all-reduce) listen address; port 0 picks one")
	f.StringVar(&cfg.Advertise, "advertise", "", "ring address peers dial (default: the bound address)")
	f.StringVar(&cfg.Device, "device", "cpu", "compute device")
	f.IntVar(&cfg.Threads, "threads", 0, "goroutines per compute kernel (0: all CPUs)")
	f.StringVar(&cfg.CacheDir, "cache-dir", "", "where dataset shards from object storage are staged while in use (default: the temporary directory)")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", worker.DefaultLeaseTTL, "registration lease TTL: a dead or hung worker is noticed within it")
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
