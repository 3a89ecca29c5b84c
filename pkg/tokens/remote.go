package tokens

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

// Download tuning: a shard larger than fetchPart bytes is fetched as ranged
// reads of fetchPart bytes, fetchParallel at a time; at most maxFetches
// shards are fetched at once for read-ahead (a shard a Batch waits for is
// fetched at once whatever the count), so that the shard needed next gets
// the bandwidth before those needed later.
const (
	fetchPart     = 8 << 20
	fetchParallel = 4
	maxFetches    = 2
)

type shardState int

const (
	absent   shardState = iota // not staged
	fetching                   // a fetch is in flight; done closes when it ends
	ready                      // staged and mapped
	failed                     // the last fetch failed with err
)

// remoteShard is one object of a remote source. Every field but the
// constants (key, name, size, tokens) is guarded by remote.mu.
type remoteShard struct {
	key, name string // object key in the store; URL for messages
	size      int64
	tokens    int

	state   shardState
	done    chan struct{}      // closed when the fetch in flight ends
	cancel  context.CancelFunc // ends the fetch in flight
	evicted bool               // the fetch in flight was cancelled because the order passed it
	m       *Shard             // when ready
	err     error              // when failed
	refs    int                // Batch calls reading or waiting for it
}

// remote is a Source over shards in an object store, staged on local disk
// as the read order nears them.
type remote struct {
	t, readAhead int
	store        checkpoint.Store
	dir          string // this source's staging directory (removed on Close)
	fetchTimeout time.Duration
	part         int64 // ranged-read size (fetchPart; tests make it small)
	log          *zap.Logger
	shards       []*remoteShard
	starts       []int // starts[i] is shard i's first sample; starts[len] = Len
	tokens       int

	ctx    context.Context // ends every fetch on Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the fetches in flight

	mu       sync.Mutex
	closed   bool
	window   []int // shards the last Prefetch asked for, in read order
	last     []int // shards the last Batch read
	inflight int   // fetches in flight
	live     []int // shards fetching or ready
	stats    Stats
}

var _ Source = (*remote)(nil)

// newRemote returns a source over objs (shards in key order) of st. It
// downloads nothing.
func newRemote(st checkpoint.Store, objs []checkpoint.ObjectInfo, o SourceOptions) (*remote, error) {
	if o.T < 1 {
		return nil, fmt.Errorf("tokens: sequence length %d must be at least 1", o.T)
	}
	if len(objs) == 0 {
		return nil, errNoShards
	}
	r := &remote{t: o.T, readAhead: o.ReadAhead, store: st, fetchTimeout: o.FetchTimeout, part: fetchPart, log: o.Log,
		starts: make([]int, len(objs)+1)}
	if r.readAhead <= 0 {
		r.readAhead = DefaultReadAhead
	}
	if r.fetchTimeout <= 0 {
		r.fetchTimeout = DefaultFetchTimeout
	}
	if r.log == nil {
		r.log = zap.NewNop()
	}
	for i, ob := range objs {
		name, _, _ := strings.Cut(checkpoint.ObjectURL(st, ob.Key), "?")
		if ob.Size < HeaderBytes || (ob.Size-HeaderBytes)%2 != 0 || (ob.Size-HeaderBytes)/2 > 1<<31-1 {
			return nil, fmt.Errorf("tokens: %s: an object of %d bytes is not a token shard (a %d-byte header, then 2 bytes a token)", name, ob.Size, HeaderBytes)
		}
		sh := &remoteShard{key: ob.Key, name: name, size: ob.Size, tokens: int((ob.Size - HeaderBytes) / 2)}
		r.shards = append(r.shards, sh)
		r.tokens += sh.tokens
		r.starts[i+1] = r.starts[i] + SamplesIn(sh.tokens, o.T)
	}
	if r.Len() == 0 {
		return nil, fmt.Errorf("tokens: no shard holds a whole sample of %d tokens", o.T+1)
	}
	if o.CacheDir != "" {
		if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
			return nil, fmt.Errorf("tokens: cache directory: %w", err)
		}
	}
	// A directory of its own, so that sources sharing a CacheDir (train and
	// validation, or two workers on one host) never touch each other's
	// files; with no CacheDir it lands in the system's temp directory.
	dir, err := os.MkdirTemp(o.CacheDir, "tokens-")
	if err != nil {
		return nil, fmt.Errorf("tokens: cache directory: %w", err)
	}
	r.dir = dir
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.log.Info("remote token dataset", zap.String("store", st.URL()), zap.Int("shards", len(r.shards)),
		zap.Int("tokens", r.tokens), zap.Int("samples", r.Len()), zap.Int("read_ahead", r.readAhead), zap.String("staging", dir))
	return r, nil
}

func (r *remote) Len() int { return r.starts[len(r.shards)] }

func (r *remote) Tokens() int { return r.tokens }

func (r *remote) BlockSizes() []int {
	out := make([]int, len(r.shards))
	for i := range out {
		out[i] = r.starts[i+1] - r.starts[i]
	}
	return out
}

// shardOf is the shard holding sample i (0 <= i < Len).
func (r *remote) shardOf(i int) int { return sort.SearchInts(r.starts, i+1) - 1 }

// Prefetch implements Source. It finds the first 1+ReadAhead shards that
// upcoming reads, in order, skipping each shard's run of samples by
// galloping and bisection: O(ReadAhead * log(shard size)) whatever the
// length of upcoming. (The runs are contiguous in shard.BlockOrder; with
// another order the window is only a guess, and Batch fetches what it
// misses.)
func (r *remote) Prefetch(upcoming []int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	w := r.window[:0]
	n := r.Len()
	for i := 0; i < len(upcoming) && len(w) < 1+r.readAhead; {
		v := int(upcoming[i])
		if v < 0 || v >= n {
			i++
			continue
		}
		s := r.shardOf(v)
		if !slices.Contains(w, s) {
			w = append(w, s)
		}
		lo, hi := r.starts[s], r.starts[s+1]
		in := func(j int) bool { v := int(upcoming[j]); return v >= lo && v < hi }
		// Gallop to a sample outside the run, then bisect for its end.
		last, step := i, 1
		j := i + 1
		for j < len(upcoming) && in(j) {
			last, j, step = j, j+step, step*2
		}
		j = min(j, len(upcoming))
		i = last + 1 + sort.Search(j-last-1, func(k int) bool { return !in(last + 1 + k) })
	}
	r.window = w
	r.evictLocked()
	r.fillLocked()
}

// fillLocked starts fetches of the window's shards, in order, up to
// maxFetches in flight.
func (r *remote) fillLocked() {
	for _, s := range r.window {
		if r.inflight >= maxFetches {
			return
		}
		if r.shards[s].state == absent {
			r.startLocked(s)
		}
	}
}

// wantedLocked reports whether shard s must stay staged: the read order
// still needs it, or a Batch reads it or did last.
func (r *remote) wantedLocked(s int) bool {
	return r.shards[s].refs > 0 || slices.Contains(r.window, s) || slices.Contains(r.last, s)
}

// evictLocked drops the staged shards and cancels the fetches that nothing
// wants any more.
func (r *remote) evictLocked() {
	for k := 0; k < len(r.live); k++ {
		s := r.live[k]
		sh := r.shards[s]
		if r.wantedLocked(s) {
			continue
		}
		switch sh.state {
		case fetching:
			if !sh.evicted {
				sh.evicted = true
				sh.cancel()
			}
		case ready:
			r.dropLocked(s)
			sh.state = absent
			r.stats.Evictions++
			k-- // live[k] is another shard now
		}
	}
}

// dropLocked unmaps shard s and deletes its file, if it was staged, and
// takes it off the live list.
func (r *remote) dropLocked(s int) {
	sh := r.shards[s]
	if sh.m != nil {
		if err := sh.m.Close(); err != nil {
			r.log.Warn("unmapping a staged shard", zap.String("shard", sh.name), zap.Error(err))
		}
		if err := os.Remove(sh.m.Path); err != nil {
			r.log.Warn("removing a staged shard", zap.String("shard", sh.name), zap.Error(err))
		}
		sh.m = nil
	}
	if k := slices.Index(r.live, s); k >= 0 {
		r.live = slices.Delete(r.live, k, k+1)
	}
}

// startLocked starts fetching sh in a goroutine that the source owns: it
// ends when the fetch does, and Close cancels and waits for it.
func (r *remote) startLocked(s int) {
	sh := r.shards[s]
	ctx, cancel := context.WithTimeout(r.ctx, r.fetchTimeout)
	sh.state, sh.done, sh.cancel, sh.evicted, sh.err = fetching, make(chan struct{}), cancel, false, nil
	r.inflight++
	r.live = append(r.live, s)
	r.stats.MaxStaged = max(r.stats.MaxStaged, len(r.live))
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		start := time.Now()
		m, err := r.fetch(ctx, sh)
		cancel()
		r.mu.Lock()
		defer r.mu.Unlock()
		r.inflight--
		switch {
		case err == nil && !r.closed:
			sh.state, sh.m = ready, m
			r.stats.Fetches++
			r.stats.FetchedBytes += sh.size
			el := time.Since(start)
			r.log.Debug("shard staged", zap.String("shard", sh.name), zap.Int64("bytes", sh.size), zap.Duration("took", el),
				zap.Float64("MB_per_s", float64(sh.size)/1e6/max(el.Seconds(), 1e-9)))
		case err == nil: // closed while it finished
			sh.m = m
			r.dropLocked(s)
			sh.state = absent
		case r.closed || sh.evicted:
			r.dropLocked(s)
			sh.state = absent
		default:
			r.dropLocked(s)
			sh.state, sh.err = failed, err
		}
		close(sh.done)
		if !r.closed {
			r.evictLocked()
			r.fillLocked()
		}
	}()
}

// fetch downloads sh into the staging directory, in ranged parts, then
// maps it and checks its header.
func (r *remote) fetch(ctx context.Context, sh *remoteShard) (m *Shard, err error) {
	final := filepath.Join(r.dir, filepath.Base(filepath.FromSlash(sh.key)))
	tmp := final + ".part"
	f, err := os.Create(tmp)
	if err != nil {
		return nil, fmt.Errorf("tokens: staging %s: %w", sh.name, err)
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Truncate(sh.size); err != nil {
		return nil, fmt.Errorf("tokens: staging %s: %w", sh.name, err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(fetchParallel)
	for off := int64(0); off < sh.size; off += r.part {
		n := min(r.part, sh.size-off)
		g.Go(func() error {
			rc, err := r.store.Read(gctx, sh.key, off, n)
			if err != nil {
				return err
			}
			defer rc.Close()
			got, err := io.Copy(io.NewOffsetWriter(f, off), rc)
			if err == nil && got < n {
				err = fmt.Errorf("the object ends at byte %d but was listed with %d bytes", off+got, sh.size)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, fmt.Errorf("tokens: fetching %s: %w", sh.name, err)
	}
	cerr := f.Close()
	f = nil
	if cerr != nil {
		return nil, fmt.Errorf("tokens: staging %s: %w", sh.name, cerr)
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("tokens: staging %s: %w", sh.name, err)
	}
	m, err = openShardAs(final, sh.name)
	if err != nil {
		os.Remove(final)
		return nil, err
	}
	return m, nil
}

// Batch implements Source. A shard that is not staged yet is fetched at
// once (whatever the read-ahead) and waited for.
func (r *remote) Batch(ctx context.Context, idx []int32, x, y []int32) error {
	if err := checkBatch(idx, x, y, r.t, r.Len()); err != nil {
		return err
	}
	// The shards idx reads, in order of first use; a batch spans one or
	// two shards unless shards are smaller than batches.
	var buf [4]int
	need := buf[:0]
	for _, i := range idx {
		if s := r.shardOf(int(i)); !slices.Contains(need, s) {
			need = append(need, s)
		}
	}
	start := time.Now()
	waited := false
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return errors.New("tokens: Batch on a closed source")
	}
	r.stats.Batches++
	for _, s := range need {
		r.shards[s].refs++ // pinned: not evicted while this call reads it
	}
	r.last = append(r.last[:0], need...)
	defer func() {
		r.mu.Lock()
		for _, s := range need {
			r.shards[s].refs--
		}
		if waited {
			w := time.Since(start)
			r.stats.Waits++
			r.stats.Waited += w
			r.stats.MaxWait = max(r.stats.MaxWait, w)
		}
		if !r.closed {
			r.evictLocked()
		}
		r.mu.Unlock()
	}()
	var mbuf [4]*Shard
	maps := mbuf[:0]
	for _, s := range need {
		sh := r.shards[s]
		for sh.state != ready {
			switch {
			case r.closed:
				r.mu.Unlock()
				return errors.New("tokens: source closed while Batch waited")
			case sh.state == failed:
				err := sh.err
				sh.state, sh.err = absent, nil // the next Batch tries again
				r.mu.Unlock()
				return err
			case sh.state == absent:
				r.startLocked(s)
			}
			done := sh.done
			r.mu.Unlock()
			waited = true
			select {
			case <-done:
			case <-ctx.Done():
				return fmt.Errorf("tokens: waiting for %s: %w", sh.name, ctx.Err())
			case <-r.ctx.Done():
				return errors.New("tokens: source closed while Batch waited")
			}
			r.mu.Lock()
		}
		maps = append(maps, sh.m)
	}
	r.mu.Unlock()
	for j, i := range idx {
		s := r.shardOf(int(i))
		m := maps[slices.Index(need, s)]
		gather(m.Tokens(), (int(i)-r.starts[s])*r.t, r.t, x[j*r.t:], y[j*r.t:])
	}
	return nil
}

// Stats implements StatsSource.
func (r *remote) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// Close implements Source: it cancels the fetches in flight, waits for
// them, unmaps the staged shards and removes the staging directory. Batch
// must not run concurrently with Close or after it.
func (r *remote) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.cancel()
	r.mu.Unlock()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	var first error
	for _, sh := range r.shards {
		if sh.m != nil {
			if err := sh.m.Close(); err != nil && first == nil {
				first = err
			}
			sh.m = nil
		}
		sh.state = absent
	}
	if err := os.RemoveAll(r.dir); err != nil && first == nil {
		first = err
	}
	return first
}
