package mnist

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadShippedMNIST(t *testing.T) {
	dir, err := DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	ds, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ds.Train.N != 60000 || ds.Test.N != 10000 {
		t.Fatalf("train %d test %d, want 60000 and 10000", ds.Train.N, ds.Test.N)
	}
	// Known facts of MNIST: the first training label is 5, the first test
	// label is 7, and the classes are roughly balanced.
	if ds.Train.Labels[0] != 5 || ds.Test.Labels[0] != 7 {
		t.Errorf("first labels %d, %d; want 5, 7", ds.Train.Labels[0], ds.Test.Labels[0])
	}
	var counts [10]int
	for _, l := range ds.Train.Labels {
		counts[l]++
	}
	for d, c := range counts {
		if c < 5000 || c > 7000 {
			t.Errorf("digit %d has %d samples", d, c)
		}
	}
	x := make([]float32, 2*Pixels)
	y := make([]int32, 2)
	ds.Train.Gather([]int32{1, 0}, x, y)
	if y[0] != int32(ds.Train.Labels[1]) || y[1] != 5 {
		t.Errorf("gathered labels %v", y)
	}
	if min := (float32(0) - Mean) / Std; x[0] != min {
		t.Errorf("background pixel = %v, want %v", x[0], min)
	}
}

func writeIDX(t *testing.T, path string, hdr []uint32, payload []byte, gz bool) {
	var b bytes.Buffer
	binary.Write(&b, binary.BigEndian, hdr)
	b.Write(payload)
	data := b.Bytes()
	if gz {
		var z bytes.Buffer
		w := gzip.NewWriter(&z)
		w.Write(data)
		w.Close()
		data = z.Bytes()
		path += ".gz"
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadPlainAndErrors(t *testing.T) {
	dir := t.TempDir()
	writeIDX(t, filepath.Join(dir, "train-images-idx3-ubyte"), []uint32{0x803, 2, 28, 28}, make([]byte, 2*Pixels), false)
	writeIDX(t, filepath.Join(dir, "train-labels-idx1-ubyte"), []uint32{0x801, 2}, []byte{3, 4}, true)
	s, err := LoadSet(dir, "train")
	if err != nil || s.N != 2 || s.Labels[1] != 4 {
		t.Fatalf("LoadSet = %+v, %v", s, err)
	}
	if _, err := LoadSet(dir, "t10k"); err == nil || !strings.Contains(err.Error(), "t10k-images-idx3-ubyte") {
		t.Errorf("missing file: %v", err)
	}
	writeIDX(t, filepath.Join(dir, "t10k-images-idx3-ubyte"), []uint32{0x803, 3, 28, 28}, make([]byte, Pixels), false)
	writeIDX(t, filepath.Join(dir, "t10k-labels-idx1-ubyte"), []uint32{0x801, 3}, []byte{1, 2, 3}, false)
	if _, err := LoadSet(dir, "t10k"); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("truncated file: %v", err)
	}
	writeIDX(t, filepath.Join(dir, "t10k-images-idx3-ubyte"), []uint32{0x801, 3, 28, 28}, make([]byte, 3*Pixels), false)
	if _, err := LoadSet(dir, "t10k"); err == nil || !strings.Contains(err.Error(), "magic") {
		t.Errorf("wrong magic: %v", err)
	}
}

// FuzzParseIDX: no header makes the parser panic or allocate what the
// stream does not hold; what it accepts has exactly the items it claims.
func FuzzParseIDX(f *testing.F) {
	hdr := func(magic uint32, dims ...uint32) []byte {
		b := binary.BigEndian.AppendUint32(nil, magic)
		for _, d := range dims {
			b = binary.BigEndian.AppendUint32(b, d)
		}
		return b
	}
	f.Add(append(hdr(0x803, 2, 28, 28), make([]byte, 2*784)...))
	f.Add(hdr(0x803, 0x7fffffff, 28, 28))         // a 16-byte header claiming 2 GiB and more
	f.Add(append(hdr(0x801, 3), 1, 2, 3))         // labels
	f.Add(append(hdr(0x801, 4), 1, 2))            // truncated
	f.Add(hdr(0x803, 0xffffffff, 0xffffffff, 28)) // wrong dimension, negative count
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, kind := range []struct {
			magic uint32
			inner []int
		}{{0x803, []int{28, 28}}, {0x801, nil}} {
			buf, n, err := parseIDX(bytes.NewReader(data), "fuzz", kind.magic, kind.inner)
			if err != nil {
				continue
			}
			size := n
			for _, d := range kind.inner {
				size *= d
			}
			if n <= 0 || len(buf) != size || len(buf) > len(data) {
				t.Fatalf("accepted %d items in %d bytes from %d bytes of input", n, len(buf), len(data))
			}
		}
	})
}
