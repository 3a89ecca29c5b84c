// Command coordinator is Ringmaster's control plane and CLI. See
// `coordinator --help`.
package main

import (
	"fmt"
	"os"

	"github.com/ringmaster/ringmaster/internal/cli"
)

func main() {
	if err := cli.NewCoordinatorCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
