package cli

import (
	"fmt"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/tokens"
)

func newPrepareCommand() *cobra.Command {
	o := tokens.PrepareOptions{}
	var shardSize, valSize, maxSize, upload string
	cmd := &cobra.Command{
		Use:   "prepare --out DIR [--input PATH ...] [--include GLOB ...] [--exclude GLOB ...] [--upload URL]",
		Short: "Turn text files into token shards (llm.c format, byte-level tokenizer, vocabulary 256)",
		Long: `Turn text files into token shards for the language models.

With no --input, prepare uses the demo corpus every machine with Go has: the
Go source files under GOROOT (excluding tests). Files are taken in a
permutation drawn from --seed (in lexical order with --shuffle=false) and
separated by token 0; the first --val-tokens tokens form
NAME_val_000000.bin, the rest NAME_train_NNNNNN.bin.

With --upload, the shards written are then copied to an object store
(s3://bucket/prefix?endpoint=...&path_style=true&tls=false, or
file:///path; the same URLs and credentials as checkpoint stores), and
jobs read them from there: data: s3://bucket/prefix/NAME_train_*.bin?...`,
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
			var store checkpoint.Store
			if upload != "" {
				// Checked before the work, so that a typo costs nothing.
				if store, err = checkpoint.Open(upload); err != nil {
					return fmt.Errorf("--upload: %w", err)
				}
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
			if store == nil {
				return nil
			}
			return uploadPrepared(cmd, store, o.Name, res)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.Inputs, "input", nil, "files or directories to read (default: $GOROOT/src)")
	f.BoolVar(&o.Shuffle, "shuffle", true, "order the files by a seeded permutation, so every shard samples the whole corpus (false: by name)")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the --shuffle permutation")
	f.StringSliceVar(&o.Include, "include", nil, "keep only files whose name matches these globs (default with no --input: *.go)")
	f.StringSliceVar(&o.Exclude, "exclude", nil, "drop files whose name matches these globs (default with no --input: *_test.go)")
	f.StringVar(&o.OutDir, "out", "", "output directory")
	f.StringVar(&o.Name, "name", "corpus", "shard name prefix")
	f.StringVar(&shardSize, "shard-tokens", "16M", "tokens per training shard (K, M, G suffixes)")
	f.StringVar(&valSize, "val-tokens", "1M", "tokens in the validation shard (0: none)")
	f.StringVar(&maxSize, "max-tokens", "0", "stop after this many tokens (0: no limit)")
	f.StringVar(&upload, "upload", "", "copy the shards to this object store (s3://bucket/prefix?endpoint=... or file:///path)")
	return cmd
}

// uploadPrepared copies what Prepare wrote to store and says where it
// went. Objects of an earlier run that the dataset's glob would also match
// are reported, not deleted.
func uploadPrepared(cmd *cobra.Command, store checkpoint.Store, name string, res *tokens.PrepareResult) error {
	ctx, out := cmd.Context(), cmd.OutOrStdout()
	files := res.TrainShards
	if res.ValShard != "" {
		files = append([]string{res.ValShard}, files...)
	}
	urls, err := tokens.UploadShards(ctx, store, files)
	if err != nil {
		return err
	}
	if res.ValShard != "" {
		fmt.Fprintf(out, "uploaded validation: %s\n", urls[0])
		urls = urls[1:]
	}
	fmt.Fprintf(out, "uploaded training:   %d shards, %s\n", len(urls), checkpoint.ObjectURL(store, name+"_train_*.bin"))
	objs, err := store.List(ctx, name+"_")
	if err != nil {
		return err
	}
	written := map[string]bool{}
	for _, f := range files {
		written[filepath.Base(f)] = true
	}
	var stale []string
	for _, ob := range objs {
		if ok, _ := filepath.Match(name+"_*_*.bin", ob.Key); ok && !written[ob.Key] && !strings.Contains(ob.Key, "/") {
			stale = append(stale, ob.Key)
		}
	}
	if len(stale) > 0 {
		fmt.Fprintf(out, "warning: %d objects from an earlier run are still there and match the same globs (%s ... %s); delete them or upload under another prefix\n",
			len(stale), stale[0], stale[len(stale)-1])
	}
	return nil
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
