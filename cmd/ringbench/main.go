// Command ringbench measures Ringmaster's building blocks against their
// peers. Each benchmark is a subcommand in its own file.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
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
	root.AddCommand(newAllReduceCmd(), newAllReduceRankCmd(), newCheckpointCommand(), newTrainCommand())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ringbench:", err)
		os.Exit(1)
	}
}
