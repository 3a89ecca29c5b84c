package checkpoint

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ringmaster/ringmaster/internal/crc32c"
)

// benchState is a state of size bytes in 16 tensors cut from one buffer,
// as a model's parameters are, and that buffer's bytes.
func benchState(size int) (*State, []byte) {
	flat := make([]float32, size/4)
	for i := range flat {
		flat[i] = float32(i)
	}
	st := &State{World: 1}
	per := len(flat) / 16
	for i := range 16 {
		st.Tensors = append(st.Tensors, Tensor{Name: string(rune('a' + i)), Shape: []int{per}, Data: flat[i*per : (i+1)*per]})
	}
	return st, floatBytes(flat)
}

// BenchmarkFileSave decomposes a file save of 512 MiB into the page cache
// (fsync off, so that the disk does not dominate): a plain write of the
// bytes, the CRC32C pass followed by the write, the manager's save (one
// writer, each part checksummed beside its pwrite), and the same save with
// the checksums computed by goroutines of their own beside 4 writers (the
// path S3 takes). Dirty pages are flushed before every iteration, and the
// files removed after it, outside the timer. Sub-benchmarks run one after
// the other; BenchmarkFileSaveAgainstPlainWrite pairs them instead.
//
//	go test -run '^$' -bench FileSave -benchtime 9x ./pkg/checkpoint
func BenchmarkFileSave(b *testing.B) {
	const size = 512 << 20
	dir := b.TempDir()
	st, raw := benchState(size)
	write := func(b *testing.B, p string, crc bool) {
		if crc {
			crc32c.Checksum(raw)
		}
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Write(raw); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	run := func(name string, op func(b *testing.B, i int)) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			for i := range b.N {
				b.StopTimer()
				syscall.Sync()
				b.StartTimer()
				op(b, i)
				b.StopTimer()
				os.RemoveAll(filepath.Join(dir, "x"))
				b.StartTimer()
			}
		})
	}
	run("plain-write", func(b *testing.B, _ int) { write(b, filepath.Join(dir, "x"), false) })
	run("crc-then-write", func(b *testing.B, _ int) { write(b, filepath.Join(dir, "x"), true) })
	store, err := NewFileStore(filepath.Join(dir, "x"))
	if err != nil {
		b.Fatal(err)
	}
	store.SkipSync()
	save := func(b *testing.B, i int, fused bool) {
		if i == 0 {
			var err error
			if store, err = NewFileStore(filepath.Join(dir, "x")); err != nil {
				b.Fatal(err)
			}
			store.SkipSync()
		}
		var s Store = store
		if !fused {
			s = wholeParts{store}
		}
		m := NewManager(s, "j", 1<<20, zap.NewNop())
		st.Step = int64(i + 1)
		if _, err := m.Save(context.Background(), st); err != nil {
			b.Fatal(err)
		}
	}
	run("save", func(b *testing.B, i int) { save(b, i, true) })
	run("save-separate-crc", func(b *testing.B, i int) { save(b, i, false) })
}

// wholeParts hides a store's pieceWriter, so that saves checksum beside
// the writes instead of fused with them.
type wholeParts struct{ Store }

func (s wholeParts) Create(ctx context.Context, key string, size, partSize int64, cond Condition) (Upload, error) {
	u, err := s.Store.Create(ctx, key, size, partSize, cond)
	return struct{ Upload }{u}, err
}

// BenchmarkFileSaveAgainstPlainWrite alternates, every iteration, a plain
// write of 512 MiB and the manager's save of the same bytes (fsync off),
// each after the same preparation: dirty pages flushed, then a scratch
// file of the same size written and deleted, so that both find recently
// used free memory (on a VM that hands idle memory back to its host, cold
// memory costs a host fault per page and swings a write by 10x). It
// reports the median of each and save/plain, the ratio of the medians
// (the save's speed relative to the plain write is its inverse).
//
//	go test -run '^$' -bench FileSaveAgainstPlainWrite -benchtime 9x ./pkg/checkpoint
func BenchmarkFileSaveAgainstPlainWrite(b *testing.B) {
	const size = 512 << 20
	dir := b.TempDir()
	st, raw := benchState(size)
	scratch := make([]byte, 4<<20)
	prepare := func() {
		syscall.Sync()
		f, err := os.Create(filepath.Join(dir, "warm"))
		if err != nil {
			b.Fatal(err)
		}
		for n := 0; n < size; n += len(scratch) {
			if _, err := f.Write(scratch); err != nil {
				b.Fatal(err)
			}
		}
		f.Close()
		os.Remove(filepath.Join(dir, "warm"))
	}
	store, err := NewFileStore(filepath.Join(dir, "store"))
	if err != nil {
		b.Fatal(err)
	}
	store.SkipSync()
	m := NewManager(store, "j", 1<<20, zap.NewNop())
	var plain, save []time.Duration
	b.SetBytes(2 * size)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		prepare()
		b.StartTimer()
		start := time.Now()
		f, err := os.Create(filepath.Join(dir, "plain"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Write(raw); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		plain = append(plain, time.Since(start))
		b.StopTimer()
		os.Remove(filepath.Join(dir, "plain"))
		prepare()
		b.StartTimer()
		st.Step = int64(i + 1)
		start = time.Now()
		if _, err := m.Save(context.Background(), st); err != nil {
			b.Fatal(err)
		}
		save = append(save, time.Since(start))
		b.StopTimer()
		if err := m.Delete(context.Background(), st.Step); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	med := func(d []time.Duration) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[len(s)/2])
	}
	b.ReportMetric(med(plain)/1e6, "plain-ms")
	b.ReportMetric(med(save)/1e6, "save-ms")
	b.ReportMetric(med(save)/med(plain), "save/plain")
}
