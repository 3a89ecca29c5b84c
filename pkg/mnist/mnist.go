package mnist

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// Image geometry and normalisation constants (mean and standard deviation of
// the training set's pixels scaled to [0,1], as torchvision uses).
const (
	Rows    = 28
	Cols    = 28
	Pixels  = Rows * Cols
	Classes = 10
	Mean    = 0.1307
	Std     = 0.3081
)

// Set is one split of the dataset.
type Set struct {
	N      int
	Images []byte // N*Pixels, row-major
	Labels []uint8
}

// Dataset holds the training and test splits.
type Dataset struct {
	Train, Test *Set
}

// Load reads the four standard files from dir. Each may be gzipped
// (name.gz) or plain.
func Load(dir string) (*Dataset, error) {
	train, err := LoadSet(dir, "train")
	if err != nil {
		return nil, err
	}
	test, err := LoadSet(dir, "t10k")
	if err != nil {
		return nil, err
	}
	return &Dataset{Train: train, Test: test}, nil
}

// LoadSet reads one split ("train" or "t10k") from dir.
func LoadSet(dir, split string) (*Set, error) {
	imgs, n, err := readIDX(dir, split+"-images-idx3-ubyte", 0x803, []int{Rows, Cols})
	if err != nil {
		return nil, err
	}
	labels, m, err := readIDX(dir, split+"-labels-idx1-ubyte", 0x801, nil)
	if err != nil {
		return nil, err
	}
	if n != m {
		return nil, fmt.Errorf("mnist: %s: %d images but %d labels", dir, n, m)
	}
	for i, l := range labels {
		if l >= Classes {
			return nil, fmt.Errorf("mnist: %s: label %d of sample %d is not a digit", dir, l, i)
		}
	}
	return &Set{N: n, Images: imgs, Labels: labels}, nil
}

// readIDX reads an IDX file of unsigned bytes with the given magic and inner
// dimensions, returning the payload and the item count.
func readIDX(dir, base string, magic uint32, inner []int) ([]byte, int, error) {
	path := filepath.Join(dir, base)
	f, err := os.Open(path)
	gz := false
	if errors.Is(err, os.ErrNotExist) {
		path += ".gz"
		f, err = os.Open(path)
		gz = true
	}
	if err != nil {
		return nil, 0, fmt.Errorf("mnist: %w (the directory must hold %s or %s.gz)", err, base, base)
	}
	defer f.Close()
	var r io.Reader = bufio.NewReaderSize(f, 1<<20)
	if gz {
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, 0, fmt.Errorf("mnist: %s: %w", path, err)
		}
		defer z.Close()
		r = z
	}
	return parseIDX(r, path, magic, inner)
}

// idxPiece is the most parseIDX allocates ahead of the data it has read.
const idxPiece = 64 << 20

// maxIDXItems bounds the item count an IDX header may claim (MNIST has
// 70,000 images; EMNIST about 800,000).
const maxIDXItems = 1 << 24

// parseIDX reads an IDX stream: its header, then the payload, which is
// read as it comes rather than allocated from the header's claim, so a
// header that lies about its size costs only the bytes that are there.
func parseIDX(r io.Reader, path string, magic uint32, inner []int) ([]byte, int, error) {
	hdr := make([]uint32, 2+len(inner))
	if err := binary.Read(r, binary.BigEndian, hdr); err != nil {
		return nil, 0, fmt.Errorf("mnist: %s: reading header: %w", path, err)
	}
	if hdr[0] != magic {
		return nil, 0, fmt.Errorf("mnist: %s: magic %#x, want %#x (not an IDX file of this kind)", path, hdr[0], magic)
	}
	n := int(hdr[1])
	if n <= 0 || n > maxIDXItems {
		return nil, 0, fmt.Errorf("mnist: %s: implausible item count %d (at most %d)", path, hdr[1], maxIDXItems)
	}
	size := int64(n)
	for i, d := range inner {
		if int(hdr[2+i]) != d {
			return nil, 0, fmt.Errorf("mnist: %s: dimension %d is %d, want %d", path, i+1, hdr[2+i], d)
		}
		size *= int64(d)
	}
	// Read in pieces of at most 64 MiB, so that a header that lies about
	// its size costs only the bytes that are there (a real file is read
	// into one exact allocation).
	buf := make([]byte, 0, min(size, idxPiece))
	for int64(len(buf)) < size {
		piece := int(min(size-int64(len(buf)), idxPiece))
		buf = slices.Grow(buf, piece)
		got, err := io.ReadFull(r, buf[len(buf):len(buf)+piece])
		buf = buf[:len(buf)+got]
		if err != nil {
			return nil, 0, fmt.Errorf("mnist: %s: truncated: the header claims %d items (%d bytes) but %d bytes follow it: %w", path, n, size, len(buf), err)
		}
	}
	return buf, n, nil
}

// Gather copies the samples idx into x (len(idx)*Pixels floats, normalised)
// and y (their labels).
func (s *Set) Gather(idx []int32, x []float32, y []int32) {
	var lut [256]float32
	for i := range lut {
		lut[i] = (float32(i)/255 - Mean) / Std
	}
	for j, i := range idx {
		src := s.Images[int(i)*Pixels : (int(i)+1)*Pixels]
		dst := x[j*Pixels : (j+1)*Pixels]
		for k, v := range src {
			dst[k] = lut[v]
		}
		y[j] = int32(s.Labels[i])
	}
}

// Filter returns the subset of samples whose label satisfies keep, in order.
func (s *Set) Filter(keep func(label uint8) bool) *Set {
	out := &Set{}
	for i := 0; i < s.N; i++ {
		if keep(s.Labels[i]) {
			out.Images = append(out.Images, s.Images[i*Pixels:(i+1)*Pixels]...)
			out.Labels = append(out.Labels, s.Labels[i])
			out.N++
		}
	}
	return out
}
