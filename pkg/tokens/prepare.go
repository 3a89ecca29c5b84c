package tokens

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
)

// PrepareOptions configures Prepare.
type PrepareOptions struct {
	// Inputs are files or directories, walked in lexical order.
	Inputs []string
	// Include keeps files whose base name matches one of these globs
	// (empty: every file).
	Include []string
	// Exclude drops files whose base name matches one of these globs.
	Exclude []string
	// OutDir receives <Name>_val_000000.bin and <Name>_train_NNNNNN.bin.
	OutDir string
	Name   string
	// ShardTokens is the size of a training shard.
	ShardTokens int
	// ValTokens go to the validation shard first (0: no validation shard).
	ValTokens int
	// MaxTokens stops after this many tokens (0: no limit).
	MaxTokens int
	// Shuffle orders the documents by a permutation drawn from Seed
	// instead of by name, so that every shard (and the validation shard)
	// is a sample of the whole corpus rather than one range of it: a short
	// run, which reads few shards, then sees all of it.
	Shuffle bool
	Seed    uint64
}

// PrepareResult says what Prepare wrote.
type PrepareResult struct {
	Files       int
	Tokens      int
	TrainShards []string
	ValShard    string
}

// Prepare tokenizes text files byte by byte into shards. Documents (files)
// are separated by EOT. The output is a pure function of the inputs'
// contents and names (and of Seed, with Shuffle).
func Prepare(ctx context.Context, o PrepareOptions) (*PrepareResult, error) {
	if o.Name == "" {
		o.Name = "corpus"
	}
	if o.ShardTokens <= 0 {
		o.ShardTokens = 1 << 24
	}
	if o.ShardTokens > 1<<30 {
		return nil, fmt.Errorf("tokens: shard size %d exceeds what a shard header can hold", o.ShardTokens)
	}
	files, err := listFiles(o)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("tokens: no input files under %v match %v", o.Inputs, o.Include)
	}
	if o.Shuffle {
		rng := rand.New(rand.NewPCG(o.Seed, 0x70726570617265)) // "prepare"
		rng.Shuffle(len(files), func(i, j int) { files[i], files[j] = files[j], files[i] })
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	res := &PrepareResult{}
	buf := make([]uint16, 0, o.ShardTokens)
	val := o.ValTokens > 0
	limit := o.ValTokens
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		var path string
		if val {
			path = filepath.Join(o.OutDir, fmt.Sprintf("%s_val_%06d.bin", o.Name, 0))
			res.ValShard = path
		} else {
			path = filepath.Join(o.OutDir, fmt.Sprintf("%s_train_%06d.bin", o.Name, len(res.TrainShards)+1))
			res.TrainShards = append(res.TrainShards, path)
		}
		if err := WriteShardFile(path, buf); err != nil {
			return err
		}
		buf = buf[:0]
		val, limit = false, o.ShardTokens
		return nil
	}
	if !val {
		limit = o.ShardTokens
	}
	push := func(t uint16) error {
		buf = append(buf, t)
		res.Tokens++
		if len(buf) == limit {
			return flush()
		}
		return nil
	}
	for _, path := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		res.Files++
		if err := push(EOT); err != nil {
			return nil, err
		}
		for _, b := range data {
			if o.MaxTokens > 0 && res.Tokens >= o.MaxTokens {
				break
			}
			if err := push(uint16(b)); err != nil {
				return nil, err
			}
		}
		if o.MaxTokens > 0 && res.Tokens >= o.MaxTokens {
			break
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return res, nil
}

func listFiles(o PrepareOptions) ([]string, error) {
	match := func(name string, globs []string) bool {
		for _, g := range globs {
			if ok, _ := filepath.Match(g, name); ok {
				return true
			}
		}
		return false
	}
	var out []string
	for _, in := range o.Inputs {
		err := filepath.WalkDir(in, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !d.Type().IsRegular() {
				return nil
			}
			name := d.Name()
			if (len(o.Include) > 0 && !match(name, o.Include)) || match(name, o.Exclude) {
				return nil
			}
			out = append(out, p)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("tokens: walking %s: %w", in, err)
		}
	}
	sort.Strings(out)
	return out, nil
}
