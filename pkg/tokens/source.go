package tokens

import (
	"context"
	"fmt"
	"net/url"
	"path"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

// Source is a token dataset the trainer samples from.
type Source interface {
	Len() int          // number of samples (of T+1 tokens)
	BlockSizes() []int // samples in each shard, in shard order (for shard.NewBlockSampler)
	Tokens() int       // tokens in all shards
	// Prefetch tells the source which samples come next, in order (the
	// slice is Sampler.Upcoming's, it aliases the sampler's cache: do not
	// keep it). It starts fetching the shards they need, up to the
	// read-ahead, and must be cheap: the trainer calls it every step.
	Prefetch(upcoming []int32)
	// Batch gathers samples idx: inputs into x and next-token targets into
	// y, each len(idx)*T int32, waiting (bounded by ctx) for shards that are
	// not local yet.
	Batch(ctx context.Context, idx []int32, x, y []int32) error
	Close() error
}

// StatsSource is a Source that counts its waits. Both sources of this
// package implement it.
type StatsSource interface {
	Stats() Stats
}

// Stats counts what a source did. A step that did not wait on I/O is a
// Batch call that did not count in Waits.
type Stats struct {
	// Batches is the number of Batch calls.
	Batches int64
	// Waits is the number of Batch calls that had to wait for a shard, and
	// Waited the time they waited in all (MaxWait the longest).
	Waits           int64
	Waited, MaxWait time.Duration
	// Fetches is the number of shards downloaded, FetchedBytes their size.
	Fetches, FetchedBytes int64
	// Evictions is the number of staged shards dropped because the read
	// order had passed them.
	Evictions int64
	// MaxStaged is the largest number of shards staged or being fetched at
	// once (the read-ahead window, plus those the last Batch still read).
	MaxStaged int
}

// SourceOptions configures OpenSource.
type SourceOptions struct {
	T         int    // tokens per sample (the model's context)
	ReadAhead int    // shards fetched ahead (0: default 2)
	CacheDir  string // where remote shards are staged ("" : a temp dir removed on Close)
	Log       *zap.Logger
	// FetchTimeout bounds the download of one shard, retries included
	// (0: DefaultFetchTimeout).
	FetchTimeout time.Duration
}

// DefaultReadAhead is the read-ahead of SourceOptions that set none.
const DefaultReadAhead = 2

// DefaultFetchTimeout bounds a shard's download when SourceOptions set no
// FetchTimeout: a 32 MiB shard (16M tokens) at 1 MB/s.
const DefaultFetchTimeout = 5 * time.Minute

// OpenSource opens loc: a local glob ("data/go_train_*.bin"), a file:// URL
// whose last element may be a glob, or s3://bucket/prefix/NAME_train_*.bin?endpoint=...
// (the same query options as checkpoint stores). Shard sizes come from
// headers (local) or object sizes (remote: (size-1024)/2 tokens), so Len
// and BlockSizes are known without downloading.
//
// Local files and file:// URLs are mapped in place. Objects of an s3://
// location are listed here (bounded by ctx) and downloaded later, as
// Prefetch and Batch ask for them.
func OpenSource(ctx context.Context, loc string, o SourceOptions) (Source, error) {
	if o.T < 1 {
		return nil, fmt.Errorf("tokens: sequence length %d must be at least 1", o.T)
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	scheme, _, _ := strings.Cut(loc, "://")
	switch {
	case !strings.Contains(loc, "://"):
		return Open(loc, o.T)
	case scheme == "file":
		u, err := url.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("tokens: dataset URL %q: %w", loc, err)
		}
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") || u.RawQuery != "" {
			return nil, fmt.Errorf("tokens: dataset URL %q: write file:///absolute/path/NAME_train_*.bin (three slashes, no options)", loc)
		}
		return Open(filepath.FromSlash(u.Path), o.T)
	case scheme == "s3":
		storeURL, pattern, err := splitPattern(loc)
		if err != nil {
			return nil, err
		}
		st, err := checkpoint.Open(storeURL)
		if err != nil {
			return nil, fmt.Errorf("tokens: dataset %q: %w", loc, err)
		}
		objs, err := listShards(ctx, st, pattern)
		if err != nil {
			return nil, fmt.Errorf("tokens: dataset %q: %w", loc, err)
		}
		if len(objs) == 0 {
			return nil, fmt.Errorf("tokens: no objects match %q; upload shards with `coordinator prepare --out DIR --upload %s`", loc, storeURL)
		}
		return newRemote(st, objs, o)
	default:
		return nil, fmt.Errorf("tokens: dataset %q: scheme %q is not supported (use a local path, file:// or s3://)", loc, scheme)
	}
}

// splitPattern splits scheme://bucket/dir/PATTERN?query into the store URL
// scheme://bucket/dir?query and PATTERN.
func splitPattern(loc string) (storeURL, pattern string, err error) {
	p, query, _ := strings.Cut(loc, "?")
	i := strings.LastIndex(p, "/")
	if i < len("s3://") || i == len(p)-1 {
		return "", "", fmt.Errorf("tokens: dataset URL %q names no shards; end it with a name or a glob such as NAME_train_*.bin", loc)
	}
	storeURL, pattern = p[:i], p[i+1:]
	if _, err := path.Match(pattern, ""); err != nil {
		return "", "", fmt.Errorf("tokens: dataset URL %q: pattern %q: %w", loc, pattern, err)
	}
	if query != "" {
		storeURL += "?" + query
	}
	return storeURL, pattern, nil
}

// listShards lists the objects of st whose keys (no '/' in them) match
// pattern, in key order.
func listShards(ctx context.Context, st checkpoint.Store, pattern string) ([]checkpoint.ObjectInfo, error) {
	lit := pattern
	if i := strings.IndexAny(pattern, `*?[\`); i >= 0 {
		lit = pattern[:i]
	}
	all, err := st.List(ctx, lit)
	if err != nil {
		return nil, err
	}
	var out []checkpoint.ObjectInfo
	for _, o := range all {
		if ok, _ := path.Match(pattern, o.Key); ok && !strings.Contains(o.Key, "/") {
			out = append(out, o)
		}
	}
	return out, nil
}
