package tokens

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"unsafe"
)

// Format constants of llm.c's token shards.
const (
	Magic       = 20240520
	Version     = 1
	HeaderInts  = 256
	HeaderBytes = HeaderInts * 4
	// Vocab is the byte-level tokenizer's vocabulary.
	Vocab = 256
	// EOT separates documents.
	EOT = 0
)

// WriteShard writes tokens as one shard.
func WriteShard(w io.Writer, toks []uint16) error {
	var hdr [HeaderInts]int32
	hdr[0], hdr[1], hdr[2] = Magic, Version, int32(len(toks))
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := binary.Write(bw, binary.LittleEndian, hdr[:]); err != nil {
		return err
	}
	if err := binary.Write(bw, binary.LittleEndian, toks); err != nil {
		return err
	}
	return bw.Flush()
}

// WriteShardFile writes a shard atomically (temporary file, then rename).
func WriteShardFile(path string, toks []uint16) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	err = WriteShard(f, toks)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// Shard is a memory-mapped token shard.
type Shard struct {
	Path string
	data []byte
	toks []uint16
}

// OpenShard maps a shard file and checks its header.
func OpenShard(path string) (*Shard, error) { return openShardAs(path, path) }

// openShardAs is OpenShard naming the shard name in errors (a staged copy
// of an object is reported as the object).
func openShardAs(path, name string) (*Shard, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < HeaderBytes {
		return nil, fmt.Errorf("tokens: %s: %d bytes is shorter than the %d-byte header", name, size, HeaderBytes)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("tokens: mapping %s: %w", name, err)
	}
	s := &Shard{Path: path, data: data}
	if err := s.check(name, size); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Shard) check(name string, size int64) error {
	magic := int32(binary.LittleEndian.Uint32(s.data[0:]))
	version := int32(binary.LittleEndian.Uint32(s.data[4:]))
	n := int64(int32(binary.LittleEndian.Uint32(s.data[8:])))
	switch {
	case magic != Magic:
		return fmt.Errorf("tokens: %s: magic %d, want %d (not an llm.c token shard)", name, magic, Magic)
	case version != Version:
		return fmt.Errorf("tokens: %s: version %d, want %d", name, version, Version)
	case n < 0 || HeaderBytes+2*n != size:
		return fmt.Errorf("tokens: %s: header says %d tokens (%d bytes) but the file has %d bytes", name, n, HeaderBytes+2*n, size)
	}
	if n > 0 {
		s.toks = unsafe.Slice((*uint16)(unsafe.Pointer(&s.data[HeaderBytes])), n)
	}
	return nil
}

// Tokens returns the shard's tokens; the slice is valid until Close.
func (s *Shard) Tokens() []uint16 { return s.toks }

// Len is the number of tokens.
func (s *Shard) Len() int { return len(s.toks) }

// Close unmaps the shard.
func (s *Shard) Close() error {
	if s.data == nil {
		return nil
	}
	err := syscall.Munmap(s.data)
	s.data, s.toks = nil, nil
	return err
}

var errNoShards = errors.New("tokens: no shards")
