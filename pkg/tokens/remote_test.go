package tokens

import (
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/ringmaster/ringmaster/internal/versitygw"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/shard"
)

// walkEpochs runs the trainer's loop over a block sampler: Prefetch what
// comes, then Batch the step's samples, on every source, calling check
// with each step's batches.
func walkEpochs(t *testing.T, srcs []Source, T, batch, epochs int, seed uint64, each func(step int, xs, ys [][]int32)) {
	t.Helper()
	ctx := context.Background()
	s := shard.NewBlockSampler(srcs[0].BlockSizes(), seed)
	xs, ys := make([][]int32, len(srcs)), make([][]int32, len(srcs))
	p := shard.Position{}
	for step := 0; p.Epoch < epochs; step++ {
		idx, _, next, err := s.Step(p, 1, 0, batch)
		if err != nil {
			t.Fatal(err)
		}
		for k, src := range srcs {
			src.Prefetch(s.Upcoming(p))
			xs[k], ys[k] = make([]int32, len(idx)*T), make([]int32, len(idx)*T)
			if err := src.Batch(ctx, idx, xs[k], ys[k]); err != nil {
				t.Fatalf("step %d (epoch %d, position %d): %v", step, p.Epoch, p.Pos, err)
			}
		}
		each(step, xs, ys)
		p = next
	}
}

// TestRemoteMatchesLocal walks two epochs of a block sampler over the same
// shards read locally and from versitygw, and compares every batch.
func TestRemoteMatchesLocal(t *testing.T) {
	const T, readAhead = 16, 2
	dir := t.TempDir()
	// Uneven shards; the fifth is too short for a sample.
	paths := writeShards(t, dir, "go", 1, 300, 517, 64, 1000, 9, 700, 450, 120)
	srv, _ := s3Data(t, "sets/go", paths)
	ctx := context.Background()

	local, err := OpenSource(ctx, filepath.Join(dir, "go_train_*.bin"), SourceOptions{T: T})
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	cache := t.TempDir()
	src, err := OpenSource(ctx, dataURL(srv.Addr, "sets/go", "go_train_*.bin", ""), SourceOptions{T: T, ReadAhead: readAhead, CacheDir: cache, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	src.(*remote).part = 256 // several ranged reads per shard
	if src.Len() != local.Len() || src.Tokens() != local.Tokens() || !slices.Equal(src.BlockSizes(), local.BlockSizes()) {
		t.Fatalf("remote: %d samples, %d tokens, blocks %v; local: %d, %d, %v",
			src.Len(), src.Tokens(), src.BlockSizes(), local.Len(), local.Tokens(), local.BlockSizes())
	}
	if st := src.(StatsSource).Stats(); st.Fetches != 0 {
		t.Fatalf("opening fetched %d shards; sizes must come from the listing", st.Fetches)
	}
	steps := 0
	walkEpochs(t, []Source{local, src}, T, 5, 2, 42, func(step int, xs, ys [][]int32) {
		steps++
		if !slices.Equal(xs[0], xs[1]) || !slices.Equal(ys[0], ys[1]) {
			t.Fatalf("step %d: remote batch differs from local\nx local  %v\nx remote %v", step, xs[0], xs[1])
		}
		// Staged shards: the window plus what the last batch read.
		if n := countFiles(t, cache); n > 1+readAhead+2 {
			t.Fatalf("step %d: %d shards staged, read-ahead is %d", step, n, readAhead)
		}
	})
	st := src.(StatsSource).Stats()
	t.Logf("%d steps, stats %+v", steps, st)
	if st.Batches != int64(steps) || st.MaxStaged > 1+readAhead+2 || st.Evictions < int64(len(paths)-1-(1+readAhead+2)) {
		t.Errorf("stats %+v over %d steps: want a batch a step, at most %d shards staged, and evictions", st, steps, 1+readAhead+2)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if n := countFiles(t, cache); n != 0 {
		t.Errorf("%d staged files left after Close", n)
	}
	if _, err := os.Stat(cache); err != nil {
		t.Errorf("the cache directory given was removed: %v", err)
	}
}

func countFiles(t *testing.T, dir string) int {
	n := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRemoteDoesNotWaitWhenWarm runs a consumer slower than the network:
// once the read-ahead is warm, no Batch waits. A source asked for a shard
// it was never told about does wait, and counts it.
func TestRemoteDoesNotWaitWhenWarm(t *testing.T) {
	const T = 16
	dir := t.TempDir()
	sizes := make([]int, 10)
	for i := range sizes {
		sizes[i] = 20*T + 1 // 20 samples, 10 steps of 2
	}
	srv, _ := s3Data(t, "warm", writeShards(t, dir, "w", 2, sizes...))
	ctx := context.Background()
	loc := dataURL(srv.Addr, "warm", "w_train_*.bin", "")

	cold, err := OpenSource(ctx, loc, SourceOptions{T: T})
	if err != nil {
		t.Fatal(err)
	}
	x, y := make([]int32, T), make([]int32, T)
	if err := cold.Batch(ctx, []int32{45}, x, y); err != nil {
		t.Fatal(err)
	}
	if st := cold.(StatsSource).Stats(); st.Waits != 1 || st.Waited <= 0 || st.Fetches != 1 {
		t.Errorf("a batch of a shard never prefetched: stats %+v, want one wait and one fetch", st)
	}
	cold.Close()

	src, err := OpenSource(ctx, loc, SourceOptions{T: T, ReadAhead: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var warm Stats
	walkEpochs(t, []Source{src}, T, 2, 1, 7, func(step int, _, _ [][]int32) {
		if step == 0 {
			warm = src.(StatsSource).Stats()
		}
		time.Sleep(10 * time.Millisecond) // the step's compute
	})
	st := src.(StatsSource).Stats()
	t.Logf("after the first step %+v; at the end %+v", warm, st)
	if st.Waits != warm.Waits {
		t.Errorf("%d batches after the first waited (%v in all, longest %v); with read-ahead warm none should",
			st.Waits-warm.Waits, st.Waited-warm.Waited, st.MaxWait)
	}
	if st.Fetches != int64(len(sizes)) {
		t.Errorf("%d fetches for %d shards read once each", st.Fetches, len(sizes))
	}
}

// TestRemoteCloseStopsFetches closes a source whose fetches hang on a
// silent server: Close returns, and no goroutine is left.
func TestRemoteCloseStopsFetches(t *testing.T) {
	const T = 8
	dir := t.TempDir()
	srv, _ := s3Data(t, "c", writeShards(t, dir, "c", 3, 100, 100, 100, 100))
	px := startProxy(t, srv.Addr)
	ctx := context.Background()
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	src, err := OpenSource(ctx, dataURL(px.Addr(), "c", "c_train_*.bin", ""), SourceOptions{T: T, ReadAhead: 3})
	if err != nil {
		t.Fatal(err)
	}
	staging := src.(*remote).dir
	px.blackhole()
	src.Prefetch(shard.BlockOrder(1, 0, src.BlockSizes()))
	r := src.(*remote)
	r.mu.Lock()
	inflight := r.inflight
	r.mu.Unlock()
	if inflight == 0 {
		t.Fatal("Prefetch started no fetch")
	}
	start := time.Now()
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Close with %d fetches hanging took %v", inflight, time.Since(start))
	if _, err := os.Stat(staging); !os.IsNotExist(err) {
		t.Errorf("staging directory %s still there after Close: %v", staging, err)
	}
	if err := src.Batch(ctx, []int32{0}, make([]int32, T), make([]int32, T)); err == nil {
		t.Error("Batch after Close succeeded")
	}
	px.Close() // its connections are the test's, not the source's
}

// TestRemoteUnreachable: a server that refuses or never answers gives an
// error within the deadline, when opening and when fetching.
func TestRemoteUnreachable(t *testing.T) {
	const T = 8
	dir := t.TempDir()
	srv, _ := s3Data(t, "u", writeShards(t, dir, "u", 4, 100, 100))
	ctx := context.Background()

	t.Run("open, silent", func(t *testing.T) {
		px := startProxy(t, srv.Addr)
		px.blackhole()
		octx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		start := time.Now()
		_, err := OpenSource(octx, dataURL(px.Addr(), "u", "u_train_*.bin", ""), SourceOptions{T: T})
		t.Logf("%v after %v", err, time.Since(start))
		if err == nil || !strings.Contains(err.Error(), "deadline") {
			t.Errorf("opening on a silent server: %v, want a deadline error", err)
		}
	})
	t.Run("fetch, silent", func(t *testing.T) {
		px := startProxy(t, srv.Addr)
		src, err := OpenSource(ctx, dataURL(px.Addr(), "u", "u_train_*.bin", ""), SourceOptions{T: T, FetchTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		px.blackhole()
		start := time.Now()
		err = src.Batch(ctx, []int32{0}, make([]int32, T), make([]int32, T))
		t.Logf("%v after %v", err, time.Since(start))
		if err == nil || !strings.Contains(err.Error(), "deadline") || !strings.Contains(err.Error(), "u_train_000001.bin") {
			t.Errorf("fetching from a silent server: %v, want a deadline error naming the object", err)
		}
		// The consumer's own deadline bounds a wait too (here shorter than
		// the fetch's).
		bctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if err := src.Batch(bctx, []int32{13}, make([]int32, T), make([]int32, T)); err == nil || !strings.Contains(err.Error(), "waiting for") {
			t.Errorf("Batch past its context's deadline: %v", err)
		}
	})
	t.Run("fetch, refused", func(t *testing.T) {
		src, err := OpenSource(ctx, dataURL(srv.Addr, "u", "u_train_*.bin", "retries=2"), SourceOptions{T: T})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		srv.Kill()
		start := time.Now()
		err = src.Batch(ctx, []int32{0}, make([]int32, T), make([]int32, T))
		t.Logf("%v after %v", err, time.Since(start))
		if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "u_train_000001.bin") {
			t.Errorf("fetching from a dead server: %v, want connection refused naming the object", err)
		}
	})
}

// TestRemoteBadShards: objects that are not shards, or whose header does
// not match their size, are errors naming the object.
func TestRemoteBadShards(t *testing.T) {
	const T = 8
	dir := t.TempDir()
	paths := writeShards(t, dir, "b", 5, 100, 100, 100, 100)
	good, _ := os.ReadFile(paths[0])
	damage := func(p string, at int, v uint32) {
		b := slices.Clone(good)
		binary.LittleEndian.PutUint32(b[at:], v)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	damage(paths[1], 0, 12345) // magic
	damage(paths[2], 8, 99)    // count: 99 tokens in an object of 100
	damage(paths[3], 4, 2)     // version
	srv, st := s3Data(t, "b", paths[:1])
	for _, p := range paths[1:] { // bypass UploadShards, which checks headers
		b, _ := os.ReadFile(p)
		putObject(t, st, filepath.Base(p), b)
	}
	ctx := context.Background()
	src, err := OpenSource(ctx, dataURL(srv.Addr, "b", "b_train_*.bin", ""), SourceOptions{T: T})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	x, y := make([]int32, T), make([]int32, T)
	per := src.BlockSizes()[0]
	for s, want := range []string{"", "magic 12345", "header says 99 tokens", "version 2"} {
		for try := range 2 { // a failed shard is tried again, and fails again
			err := src.Batch(ctx, []int32{int32(s * per)}, x, y)
			name := "s3://" + bucket + "/b/" + filepath.Base(paths[s])
			switch {
			case want == "" && err != nil:
				t.Errorf("good shard: %v", err)
			case want != "" && (err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), name)):
				t.Errorf("shard %d, try %d: %v; want an error naming %s and saying %q", s, try, err, name, want)
			}
		}
	}

	// Sizes that no shard has are refused when opening.
	for name, size := range map[string]int{"b_short_000001.bin": 1000, "b_odd_000001.bin": 1025} {
		putObject(t, st, name, good[:size])
		pattern := strings.Replace(name, "000001", "*", 1)
		_, err := OpenSource(ctx, dataURL(srv.Addr, "b", pattern, ""), SourceOptions{T: T})
		if err == nil || !strings.Contains(err.Error(), "not a token shard") || !strings.Contains(err.Error(), name) {
			t.Errorf("%s of %d bytes: %v", name, size, err)
		}
	}
	if _, err := OpenSource(ctx, dataURL(srv.Addr, "b", "none_*.bin", ""), SourceOptions{T: T}); err == nil || !strings.Contains(err.Error(), "--upload") {
		t.Errorf("no objects match: %v", err)
	}
}

func putObject(t *testing.T, st checkpoint.Store, key string, b []byte) {
	t.Helper()
	ctx := context.Background()
	up, err := st.Create(ctx, key, int64(len(b)), int64(len(b)), checkpoint.Condition{})
	if err == nil {
		err = up.WritePart(ctx, 1, b)
	}
	if err == nil {
		err = up.Complete(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// fileRemote is a remote source over a file store: the logic of the
// remote source without a server.
func fileRemote(t testing.TB, dir, pattern string, o SourceOptions) *remote {
	t.Helper()
	st, err := checkpoint.NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := listShards(context.Background(), st, pattern)
	if err != nil {
		t.Fatal(err)
	}
	r, err := newRemote(st, objs, o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPrefetchWindow checks the shards Prefetch asks for: the first
// 1+ReadAhead that the order reads, however long the runs.
func TestPrefetchWindow(t *testing.T) {
	const T = 4
	dir := t.TempDir()
	// Shards of 1, 2, 3, 50, 1, 7, 30 samples.
	writeShards(t, dir, "p", 6, 1*T+1, 2*T+1, 3*T+1, 50*T+1, 1*T+1, 7*T+1, 30*T+1)
	r := fileRemote(t, dir, "p_train_*.bin", SourceOptions{T: T, ReadAhead: 2})
	defer r.Close()
	sizes := r.BlockSizes()
	order := shard.BlockOrder(3, 0, sizes)
	// The shards in the order they are read, from the sampler itself.
	var blocks []int
	for _, i := range order {
		if s := r.shardOf(int(i)); len(blocks) == 0 || blocks[len(blocks)-1] != s {
			blocks = append(blocks, s)
		}
	}
	if len(blocks) != len(sizes) {
		t.Fatalf("block order reads shards %v, not each once", blocks)
	}
	for pos := range order {
		r.Prefetch(order[pos:])
		cur := slices.Index(blocks, r.shardOf(int(order[pos])))
		want := blocks[cur:min(cur+3, len(blocks))]
		r.mu.Lock()
		got := slices.Clone(r.window)
		r.mu.Unlock()
		if !slices.Equal(got, want) {
			t.Fatalf("position %d: window %v, want %v", pos, got, want)
		}
	}
	r.Prefetch(nil)
	if r.window == nil || len(r.window) != 0 {
		t.Errorf("empty upcoming: window %v", r.window)
	}
}

// BenchmarkPrefetch is the cost of one Prefetch call on an epoch of 64
// shards of 65536 samples each, with the window already fetched, against
// the peer a plain implementation would be: a scan of upcoming until
// 1+ReadAhead shards are found.
func BenchmarkPrefetch(b *testing.B) {
	const T, shards, per = 1, 64, 1 << 16
	dir := b.TempDir()
	sizes := make([]int, shards)
	for i := range sizes {
		sizes[i] = per*T + 1
	}
	writeShards(b, dir, "bench", 1, sizes...)
	r := fileRemote(b, dir, "bench_train_*.bin", SourceOptions{T: T})
	defer r.Close()
	order := shard.BlockOrder(1, 0, r.BlockSizes())
	r.Prefetch(order)
	x, y := make([]int32, T), make([]int32, T)
	if err := r.Batch(context.Background(), order[:1], x, y); err != nil { // waits for the first shard
		b.Fatal(err)
	}
	b.Run("source", func(b *testing.B) {
		for i := range b.N {
			r.Prefetch(order[(i*64)%(per*3):])
		}
	})
	b.Run("scan", func(b *testing.B) {
		var w []int
		for i := range b.N {
			w = w[:0]
			for _, v := range order[(i*64)%(per*3):] {
				if s := r.shardOf(int(v)); !slices.Contains(w, s) {
					if w = append(w, s); len(w) == 1+r.readAhead {
						break
					}
				}
			}
		}
	})
}

// BenchmarkBatch gathers batches of 16 samples of 64 tokens from a warm
// remote source and, as the peer, from the local Dataset over the same
// files.
func BenchmarkBatch(b *testing.B) {
	const T, batch = 64, 16
	dir := b.TempDir()
	writeShards(b, dir, "bench", 1, 64*T+1, 64*T+1)
	local, err := Open(filepath.Join(dir, "bench_train_*.bin"), T)
	if err != nil {
		b.Fatal(err)
	}
	defer local.Close()
	r := fileRemote(b, dir, "bench_train_*.bin", SourceOptions{T: T})
	defer r.Close()
	order := shard.BlockOrder(1, 0, r.BlockSizes())
	x, y := make([]int32, batch*T), make([]int32, batch*T)
	ctx := context.Background()
	for name, src := range map[string]Source{"remote": r, "local": local} {
		if err := src.Batch(ctx, order[:batch], x, y); err != nil { // stages the shard
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(batch * T * 4 * 2)
			for range b.N {
				if err := src.Batch(ctx, order[:batch], x, y); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFetch stages one shard of 16M tokens (32 MiB) from versitygw:
// through a cold remote source (ranged reads, four at a time, then map and
// check), and, as the peer, as one plain Store.Read copied to a file.
func BenchmarkFetch(b *testing.B) {
	dir := b.TempDir()
	paths := writeShards(b, dir, "f", 1, 16<<20)
	srv := versitygw.Start(b, bucket)
	st, err := checkpoint.NewS3Store(srv.Config(bucket, "f"))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := UploadShards(ctx, st, paths); err != nil {
		b.Fatal(err)
	}
	objs, err := listShards(ctx, st, "f_train_*.bin")
	if err != nil {
		b.Fatal(err)
	}
	size := objs[0].Size
	x, y := make([]int32, 8), make([]int32, 8)
	b.Run("source", func(b *testing.B) {
		b.SetBytes(size)
		for range b.N {
			r, err := newRemote(st, objs, SourceOptions{T: 8})
			if err != nil {
				b.Fatal(err)
			}
			if err := r.Batch(ctx, []int32{1}, x, y); err != nil {
				b.Fatal(err)
			}
			r.Close()
		}
	})
	b.Run("plain-read", func(b *testing.B) {
		b.SetBytes(size)
		for range b.N {
			f, err := os.Create(filepath.Join(b.TempDir(), "copy"))
			if err != nil {
				b.Fatal(err)
			}
			rc, err := st.Read(ctx, objs[0].Key, 0, -1)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(f, rc); err != nil {
				b.Fatal(err)
			}
			rc.Close()
			f.Close()
		}
	})
}
