package allreduce

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// dirtyPool is the buffer pool the gRPC transport reads frames into. It is
// gRPC's tiered pool without the zeroing: gRPC's default pool clears every
// buffer it hands out, which was 8% of a rank's CPU time in a 16 MiB
// all-reduce (every received HTTP/2 DATA frame, 16 KiB), although gRPC
// overwrites the whole buffer (io.ReadFull of the frame) before anyone
// reads it. Sizes are rounded up to powers of two from 2^minPoolShift to
// 2^maxPoolShift; larger buffers are not pooled.
type dirtyPool struct {
	classes [maxPoolShift - minPoolShift + 1]sync.Pool
}

const (
	minPoolShift = 8  // 256 B
	maxPoolShift = 22 // 4 MiB
)

var _ mem.BufferPool = (*dirtyPool)(nil)

func newDirtyPool() *dirtyPool { return &dirtyPool{} }

// class returns the index of the smallest class holding size, or -1.
func poolClass(size int) int {
	if size <= 1<<minPoolShift {
		return 0
	}
	s := bits.Len(uint(size - 1)) // 2^s >= size
	if s > maxPoolShift {
		return -1
	}
	return s - minPoolShift
}

func (p *dirtyPool) Get(size int) *[]byte {
	c := poolClass(size)
	if c < 0 {
		b := make([]byte, size)
		return &b
	}
	if bp, ok := p.classes[c].Get().(*[]byte); ok {
		*bp = (*bp)[:size]
		return bp
	}
	b := make([]byte, size, 1<<(c+minPoolShift))
	return &b
}

func (p *dirtyPool) Put(bp *[]byte) {
	c := cap(*bp)
	if c < 1<<minPoolShift || c&(c-1) != 0 {
		return // not one of ours
	}
	k := bits.Len(uint(c)) - 1 - minPoolShift
	if k >= len(p.classes) {
		return
	}
	p.classes[k].Put(bp)
}
