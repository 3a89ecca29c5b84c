package crc32c

import (
	"bytes"
	"hash/crc32"
	"math/rand/v2"
	"testing"
	"testing/quick"
)

func reference(crc uint32, p []byte) uint32 { return crc32.Update(crc, table, p) }

// TestUpdateMatchesStandardLibrary checks every length up to a few
// kilobytes, at every alignment of the start, from random running values,
// and some large inputs, against hash/crc32.
func TestUpdateMatchesStandardLibrary(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 5000+64)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for n := 0; n <= 5000; n++ {
		off := n % 64
		p := buf[off : off+n]
		crc := r.Uint32()
		if got, want := Update(crc, p), reference(crc, p); got != want {
			t.Fatalf("len %d at offset %d from %08x: %08x, want %08x", n, off, crc, got, want)
		}
	}
	big := make([]byte, 3<<20+77)
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	for _, n := range []int{512, 4096, 1 << 20, 3<<20 + 77} {
		if got, want := Checksum(big[:n]), crc32.Checksum(big[:n], table); got != want {
			t.Fatalf("len %d: %08x, want %08x", n, got, want)
		}
	}
	// Pieces fed in turn give the whole's checksum.
	var c uint32
	for at := 0; at < len(big); at += 70001 {
		c = Update(c, big[at:min(at+70001, len(big))])
	}
	if want := crc32.Checksum(big, table); c != want {
		t.Fatalf("in pieces: %08x, want %08x", c, want)
	}
}

// TestFoldKernelRuns makes sure that the test above exercised the kernel
// where this CPU has one, so that a fallback does not pass for it.
func TestFoldKernelRuns(t *testing.T) {
	if foldable(4096) == 0 {
		t.Skip("no folding kernel on this CPU; Update is hash/crc32's")
	}
	p := make([]byte, 4096)
	p[100] = 1
	rem := fold(^uint32(0), p)
	if rem == ([16]byte{}) {
		t.Fatal("the kernel left a zero remainder for a nonzero input")
	}
}

// The CRC of a concatenation equals the combination of the parts' CRCs.
func TestCombine(t *testing.T) {
	f := func(a, b []byte) bool {
		whole := crc32.Checksum(append(append([]byte(nil), a...), b...), table)
		return Combine(crc32.Checksum(a, table), crc32.Checksum(b, table), int64(len(b))) == whole
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 500}); err != nil {
		t.Error(err)
	}
	big := bytes.Repeat([]byte("ringmaster"), 1<<20)
	if got, want := Combine(Checksum(big[:3<<20]), Checksum(big[3<<20:]), int64(len(big)-3<<20)), crc32.Checksum(big, table); got != want {
		t.Errorf("10 MiB split at 3 MiB: %08x, want %08x", got, want)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		a := make([]byte, r.IntN(3000))
		b := make([]byte, r.IntN(3000))
		for i := range a {
			a[i] = byte(r.Uint32())
		}
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		whole := crc32.Checksum(append(append([]byte(nil), a...), b...), table)
		if got := Combine(Checksum(a), Checksum(b), int64(len(b))); got != whole {
			t.Fatalf("len %d+%d: %08x, want %08x", len(a), len(b), got, whole)
		}
	}
}

// BenchmarkChecksum compares this package's CRC-32C with hash/crc32's on
// the same bytes, in cache (64 KiB) and from memory (64 MiB).
//
//	go test -run '^$' -bench Checksum ./internal/crc32c
func BenchmarkChecksum(b *testing.B) {
	for _, size := range []int{64 << 10, 64 << 20} {
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(i * 7)
		}
		name := "64KiB"
		if size > 1<<20 {
			name = "64MiB"
		}
		b.Run(name+"/stdlib", func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				crc32.Checksum(p, table)
			}
		})
		b.Run(name+"/crc32c", func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				Checksum(p)
			}
		})
	}
}
