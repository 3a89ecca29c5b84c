// Command worker is a Ringmaster training worker. See `worker --help`.
package main

import (
	"fmt"
	"os"

	"github.com/ringmaster/ringmaster/internal/cli"
)

func main() {
	cmd := cli.NewWorkerCommand()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
