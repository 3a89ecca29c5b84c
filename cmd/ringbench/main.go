// Command ringbench measures Ringmaster's parts against peers measured in
// the same run. One file per benchmark; see `ringbench --help`.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{Use: "ringbench", Short: "Benchmarks of Ringmaster against peers, in one run", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newCheckpointCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
