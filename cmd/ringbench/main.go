// Command ringbench measures Ringmaster's building blocks against their
// peers. Each benchmark is a subcommand in its own file.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "ringbench",
		Short:         "Benchmarks for Ringmaster, printed in the nccl-tests line format",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newAllReduceCmd(), newAllReduceRankCmd(), newCheckpointCommand(), newTrainCommand(), newRecoveryCommand(), newHiddenWorkerCommand(),
		newControlCommand(), newHiddenServeCommand())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ringbench:", err)
		os.Exit(1)
	}
}

// startCPUProfile writes a CPU profile to path until stop is called; an
// empty path profiles nothing.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
