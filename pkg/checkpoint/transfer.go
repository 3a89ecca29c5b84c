package checkpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"sync"
	"unsafe"

	"golang.org/x/sync/errgroup"

	"github.com/ringmaster/ringmaster/internal/crc32c"
)

// source is the data of a save: segments of memory (the tensors), back to
// back.
type source struct {
	segs   [][]byte
	starts []int64 // offset of each segment in the data
}

func newSource(segs [][]byte) *source {
	s := &source{}
	var off int64
	for _, b := range segs {
		if len(b) == 0 {
			continue
		}
		// Tensors that are neighbours in memory (slices of one flat
		// buffer, as a model's parameters are) make one segment, so parts
		// across them need no copy.
		if n := len(s.segs); n > 0 {
			last := s.segs[n-1]
			if cap(last)-len(last) >= len(b) && unsafe.SliceData(last[len(last):cap(last)]) == unsafe.SliceData(b) {
				s.segs[n-1] = last[:len(last)+len(b)]
				off += int64(len(b))
				continue
			}
		}
		s.segs = append(s.segs, b)
		s.starts = append(s.starts, off)
		off += int64(len(b))
	}
	return s
}

// bytes returns the data in [off, off+n): a slice of one segment when the
// range lies in one (no copy), else the pieces copied into buf.
func (s *source) bytes(off, n int64, buf []byte) []byte {
	i := s.segment(off)
	if at := off - s.starts[i]; at+n <= int64(len(s.segs[i])) {
		return s.segs[i][at : at+n]
	}
	out := buf[:n]
	s.copyTo(off, out)
	return out
}

// segment is the index of the segment that holds byte off: the last one
// starting at or before it (empty segments start where the next does).
func (s *source) segment(off int64) int {
	return sort.Search(len(s.starts), func(i int) bool { return s.starts[i] > off }) - 1
}

// copyTo copies the data at off into dst.
func (s *source) copyTo(off int64, dst []byte) {
	i := s.segment(off)
	for len(dst) > 0 {
		at := off - s.starts[i]
		c := copy(dst, s.segs[i][at:])
		dst, off = dst[c:], off+int64(c)
		i++
	}
}

// each calls fn with the non-empty pieces of [off, off+n), in order.
func (s *source) each(off, n int64, fn func([]byte)) {
	i := s.segment(off)
	for n > 0 {
		at := off - s.starts[i]
		b := s.segs[i][at:min(int64(len(s.segs[i])), at+n)]
		if len(b) > 0 {
			fn(b)
		}
		off, n = off+int64(len(b)), n-int64(len(b))
		i++
	}
}

// pieceWriter is implemented by uploads that can checksum a part while
// they write it (a file): WritePartHashed writes part n like WritePart and
// calls hash, if not nil, on its pieces of piece bytes in order, beside
// the write; it returns when both are done.
type pieceWriter interface {
	WritePartHashed(ctx context.Context, n int, p []byte, piece int, hash func([]byte)) error
}

// hashPiece is the piece the checksum beside a file write works through,
// so that it reads the part in cache-sized steps.
const hashPiece = 256 << 10

// part is one part of one object.
type part struct {
	obj, n    int   // object index, 1-based part number
	off, size int64 // in the object
}

func (m *Manager) parts(objs []ObjectEntry) [][]part {
	out := make([][]part, len(objs))
	for i, o := range objs {
		for off, n := int64(0), 1; off < o.Size; off, n = off+m.partSize, n+1 {
			out[i] = append(out[i], part{obj: i, n: n, off: off, size: min(m.partSize, o.Size-off)})
		}
	}
	return out
}

// feed sends every part to a channel that m.parallel workers drain.
func feed(ctx context.Context, g *errgroup.Group, parts [][]part) <-chan part {
	ch := make(chan part)
	g.Go(func() error {
		defer close(ch)
		for _, ps := range parts {
			for _, p := range ps {
				select {
				case ch <- p:
				case <-ctx.Done():
					return nil
				}
			}
		}
		return nil
	})
	return ch
}

// writeObjects writes the data objects of man from src, m.parallel parts
// at a time, and fills in their checksums. Memory beyond the source is at
// most one part per worker, and only for parts that span tensors.
func (m *Manager) writeObjects(ctx context.Context, dir string, man *Manifest, src *source) (err error) {
	ups := make([]Upload, len(man.Objects))
	defer func() {
		if err != nil {
			actx := context.WithoutCancel(ctx)
			for _, u := range ups {
				if u != nil {
					_ = u.Abort(actx)
				}
			}
		}
	}()
	for i, o := range man.Objects {
		if ups[i], err = m.store.Create(ctx, dir+o.Key, o.Size, m.partSize, Condition{}); err != nil {
			return err
		}
	}
	parts := m.parts(man.Objects)
	crcs := make([][]uint32, len(parts))
	for i := range parts {
		crcs[i] = make([]uint32, len(parts[i]))
	}
	// A store that writes a part with one system call (a file) gets the
	// part checksummed, in pieces, by a goroutine beside the write, on the
	// other core. Writes to one file are serialized by the kernel, and
	// concurrent writers contend for it: one writer of whole parts with the
	// checksum beside it beat two writers of 256 KiB pieces, each
	// checksummed before its write, by 1.4x, and checksumming each piece
	// just before its pwrite in lockstep was slower still. With
	// internal/crc32c the save runs at 0.91 to 0.97x of a plain write of
	// the same bytes (BenchmarkFileSaveAgainstPlainWrite). So one writer.
	fused := man.Checksum == ChecksumCRC32C
	for _, u := range ups {
		if _, ok := u.(pieceWriter); !ok {
			fused = false
		}
	}
	writers := m.parallel
	if fused {
		writers = 1
	}
	g, gctx := errgroup.WithContext(ctx)
	ch := feed(gctx, g, parts)
	for range writers {
		g.Go(func() error {
			var buf []byte
			for p := range ch {
				o := man.Objects[p.obj]
				if buf == nil && m.spans(src, o.Offset+p.off, p.size) {
					buf = make([]byte, m.partSize)
				}
				data := src.bytes(o.Offset+p.off, p.size, buf)
				var err error
				if fused {
					var c uint32
					err = ups[p.obj].(pieceWriter).WritePartHashed(gctx, p.n, data, hashPiece, func(b []byte) { c = crc32c.Update(c, b) })
					crcs[p.obj][p.n-1] = c
				} else {
					err = ups[p.obj].WritePart(gctx, p.n, data)
				}
				if err != nil {
					return fmt.Errorf("object %s part %d: %w", o.Key, p.n, err)
				}
			}
			return gctx.Err()
		})
	}
	// Otherwise the checksums are computed from the source by goroutines
	// of their own, so that they run while writers wait on the store
	// (S3's wait on the network).
	if man.Checksum == ChecksumCRC32C && !fused {
		hch := feed(gctx, g, parts)
		for range hashers() {
			g.Go(func() error {
				for p := range hch {
					var c uint32
					src.each(man.Objects[p.obj].Offset+p.off, p.size, func(b []byte) { c = crc32c.Update(c, b) })
					crcs[p.obj][p.n-1] = c
				}
				return gctx.Err()
			})
		}
	}
	shas := make([]string, len(man.Objects))
	if man.Checksum == ChecksumSHA256 {
		// SHA-256 cannot be computed in pieces; one goroutine hashes the
		// source in order while the parts go up.
		g.Go(func() error {
			for i, o := range man.Objects {
				h := sha256.New()
				src.each(o.Offset, o.Size, func(b []byte) { h.Write(b) })
				shas[i] = hex.EncodeToString(h.Sum(nil))
				if err := gctx.Err(); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, o := range man.Objects {
		if man.Checksum == ChecksumCRC32C {
			man.Objects[i].CRC32C = formatCRC(combineParts(crcs[i], parts[i]))
		} else {
			man.Objects[i].SHA256 = shas[i]
		}
		if err := ups[i].Complete(ctx); err != nil {
			return fmt.Errorf("object %s: %w", o.Key, err)
		}
	}
	return nil
}

// spans reports whether [off, off+n) of src crosses a segment boundary
// (and so needs a copy).
func (m *Manager) spans(src *source, off, n int64) bool {
	var pieces int
	src.each(off, n, func([]byte) { pieces++ })
	return pieces > 1
}

func combineParts(crcs []uint32, parts []part) uint32 {
	var c uint32
	for i, p := range parts {
		if i == 0 {
			c = crcs[0]
			continue
		}
		c = crc32c.Combine(c, crcs[i], p.size)
	}
	return c
}

// readObjects reads the objects of man under dir, m.parallel parts at a
// time, and checks their checksums. With dst the data lands there (len
// man.Size); without, it is read into one part-sized buffer per worker and
// dropped (verification only).
func (m *Manager) readObjects(ctx context.Context, dir string, man *Manifest, dst []byte) error {
	if man.Checksum == ChecksumSHA256 && dst == nil {
		return m.verifySHA256(ctx, dir, man)
	}
	parts := m.parts(man.Objects)
	crcs := make([][]uint32, len(parts))
	for i := range parts {
		crcs[i] = make([]uint32, len(parts[i]))
	}
	g, gctx := errgroup.WithContext(ctx)
	ch := feed(gctx, g, parts)
	// With a destination, parts that have landed are checksummed by
	// goroutines of their own while the readers fetch more; with scratch
	// buffers, by the reader before it reuses its buffer.
	var landed chan part
	var readers sync.WaitGroup
	if dst != nil && man.Checksum == ChecksumCRC32C {
		landed = make(chan part, m.parallel)
		for range hashers() {
			g.Go(func() error {
				for p := range landed {
					o := man.Objects[p.obj]
					crcs[p.obj][p.n-1] = crc32c.Checksum(dst[o.Offset+p.off : o.Offset+p.off+p.size])
				}
				return gctx.Err()
			})
		}
	}
	for range m.parallel {
		readers.Add(1)
		g.Go(func() error {
			defer readers.Done()
			var scratch []byte
			for p := range ch {
				o := man.Objects[p.obj]
				var buf []byte
				if dst != nil {
					buf = dst[o.Offset+p.off : o.Offset+p.off+p.size]
				} else {
					if scratch == nil {
						scratch = make([]byte, m.partSize)
					}
					buf = scratch[:p.size]
				}
				if err := m.readRange(gctx, dir+o.Key, o, p.off, buf); err != nil {
					return err
				}
				switch {
				case landed != nil:
					select {
					case landed <- p:
					case <-gctx.Done():
						return gctx.Err()
					}
				case man.Checksum == ChecksumCRC32C:
					crcs[p.obj][p.n-1] = crc32c.Checksum(buf)
				}
			}
			return gctx.Err()
		})
	}
	if landed != nil {
		g.Go(func() error {
			readers.Wait()
			close(landed)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, o := range man.Objects {
		switch man.Checksum {
		case ChecksumCRC32C:
			want, _ := parseCRC(o.CRC32C)
			if got := combineParts(crcs[i], parts[i]); got != want {
				return invalidf("object %s has CRC32C %s, the manifest says %s (corrupt)", o.Key, formatCRC(got), o.CRC32C)
			}
		case ChecksumSHA256:
			sum := sha256.Sum256(dst[o.Offset : o.Offset+o.Size])
			if got := hex.EncodeToString(sum[:]); got != o.SHA256 {
				return invalidf("object %s has SHA-256 %s, the manifest says %s (corrupt)", o.Key, got, o.SHA256)
			}
		}
	}
	return nil
}

func (m *Manager) readRange(ctx context.Context, key string, o ObjectEntry, off int64, buf []byte) error {
	rc, err := m.store.Read(ctx, key, off, int64(len(buf)))
	if errors.Is(err, ErrNotFound) {
		return invalidf("object %s is missing (partial checkpoint)", o.Key)
	}
	if err != nil {
		return fmt.Errorf("object %s: %w", o.Key, err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return invalidf("object %s is shorter than the %d bytes the manifest says (partial)", o.Key, o.Size)
		}
		return fmt.Errorf("object %s: %w", o.Key, err)
	}
	return nil
}

// verifySHA256 streams each object through SHA-256, in order.
func (m *Manager) verifySHA256(ctx context.Context, dir string, man *Manifest) error {
	for _, o := range man.Objects {
		rc, err := m.store.Read(ctx, dir+o.Key, 0, o.Size)
		if errors.Is(err, ErrNotFound) {
			return invalidf("object %s is missing (partial checkpoint)", o.Key)
		}
		if err != nil {
			return fmt.Errorf("object %s: %w", o.Key, err)
		}
		h := sha256.New()
		n, err := io.CopyBuffer(h, rc, make([]byte, 1<<20))
		rc.Close()
		if err != nil {
			return fmt.Errorf("object %s: %w", o.Key, err)
		}
		if n != o.Size {
			return invalidf("object %s is shorter than the %d bytes the manifest says (partial)", o.Key, o.Size)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != o.SHA256 {
			return invalidf("object %s has SHA-256 %s, the manifest says %s (corrupt)", o.Key, got, o.SHA256)
		}
	}
	return nil
}

// hashers is how many goroutines compute checksums beside the transfer:
// half the processors (at least one).
func hashers() int { return max(runtime.GOMAXPROCS(0)/2, 1) }
