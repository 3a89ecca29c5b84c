package checkpoint

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"go.uber.org/zap"

	"github.com/ringmaster/ringmaster/internal/crc32c"
)

// BenchmarkFileSave decomposes a file save of 512 MiB into the page cache
// (fsync off, so that the disk does not dominate): a plain write of the
// bytes, the CRC32C pass followed by the write, the manager's save (which
// checksums each piece right before writing it), and the same save with
// the checksums computed by goroutines of their own beside the writers
// (the path S3 takes). Dirty pages are flushed before every iteration,
// outside the timer.
//
//	go test -run '^$' -bench FileSave -benchtime 9x ./pkg/checkpoint
func BenchmarkFileSave(b *testing.B) {
	const size = 512 << 20
	dir := b.TempDir()
	flat := make([]float32, size/4)
	for i := range flat {
		flat[i] = float32(i)
	}
	raw := floatBytes(flat)
	st := &State{World: 1}
	per := len(flat) / 16
	for i := range 16 {
		st.Tensors = append(st.Tensors, Tensor{Name: string(rune('a' + i)), Shape: []int{per}, Data: flat[i*per : (i+1)*per]})
	}
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
