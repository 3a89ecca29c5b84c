package cli

import (
	"fmt"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ringmaster/ringmaster/pkg/tokens"
)

func newPrepareCommand() *cobra.Command {
	o := tokens.PrepareOptions{}
	var shardSize, valSize, maxSize string
	cmd := &cobra.Command{
		Use:   "prepare --out DIR [--input PATH ...] [--include GLOB ...] [--exclude GLOB ...]",
		Short: "Turn text files into token shards (llm.c format, byte-level tokenizer, vocabulary 256)",
		Long: `Turn text files into token shards for the language models.

With no --input, prepare uses the demo corpus every machine with Go has: the
Go source files under GOROOT (excluding tests). Files are read in lexical
order and separated by token 0; the first --val-tokens tokens form
NAME_val_000000.bin, the rest NAME_train_NNNNNN.bin.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.OutDir == "" {
				return fmt.Errorf("--out is required: the directory to write shards to")
			}
			if len(o.Inputs) == 0 {
				o.Inputs = []string{filepath.Join(runtime.GOROOT(), "src")}
				if len(o.Include) == 0 {
					o.Include = []string{"*.go"}
				}
				if len(o.Exclude) == 0 {
					o.Exclude = []string{"*_test.go"}
				}
			}
			var err error
			if o.ShardTokens, err = parseCount("--shard-tokens", shardSize); err != nil {
				return err
			}
			if o.ValTokens, err = parseCount("--val-tokens", valSize); err != nil {
				return err
			}
			if o.MaxTokens, err = parseCount("--max-tokens", maxSize); err != nil {
				return err
			}
			res, err := tokens.Prepare(cmd.Context(), o)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%d files, %d tokens\n", res.Files, res.Tokens)
			if res.ValShard != "" {
				fmt.Fprintf(out, "validation: %s\n", res.ValShard)
			}
			fmt.Fprintf(out, "training:   %d shards, %s\n", len(res.TrainShards), filepath.Join(o.OutDir, o.Name+"_train_*.bin"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.Inputs, "input", nil, "files or directories to read (default: $GOROOT/src)")
	f.StringSliceVar(&o.Include, "include", nil, "keep only files whose name matches these globs (default with no --input: *.go)")
	f.StringSliceVar(&o.Exclude, "exclude", nil, "drop files whose name matches these globs (default with no --input: *_test.go)")
	f.StringVar(&o.OutDir, "out", "", "output directory")
	f.StringVar(&o.Name, "name", "corpus", "shard name prefix")
	f.StringVar(&shardSize, "shard-tokens", "16M", "tokens per training shard (K, M, G suffixes)")
	f.StringVar(&valSize, "val-tokens", "1M", "tokens in the validation shard (0: none)")
	f.StringVar(&maxSize, "max-tokens", "0", "stop after this many tokens (0: no limit)")
	return cmd
}

// parseCount reads counts like 512, 64K, 16M, 1G (powers of 1024).
func parseCount(flag, s string) (int, error) {
	s = strings.TrimSpace(s)
	mult := 1
	switch {
	case strings.HasSuffix(s, "K"), strings.HasSuffix(s, "k"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"), strings.HasSuffix(s, "m"):
		mult, s = 1<<20, s[:len(s)-1]
	case strings.HasSuffix(s, "G"), strings.HasSuffix(s, "g"):
		mult, s = 1<<30, s[:len(s)-1]
	}
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n < 0 {
		return 0, fmt.Errorf("%s %q: write a count such as 1048576, 64K or 16M", flag, s)
	}
	return n * mult, nil
}
