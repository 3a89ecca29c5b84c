package allreduce

import "testing"

func TestDirtyPoolSizes(t *testing.T) {
	p := newDirtyPool()
	for _, tc := range []struct{ size, wantCap int }{
		{0, 256}, {1, 256}, {256, 256}, {257, 512}, {16384, 16384}, {16385, 32768}, {4 << 20, 4 << 20}, {4<<20 + 1, 4<<20 + 1},
	} {
		b := p.Get(tc.size)
		if len(*b) != tc.size || cap(*b) != tc.wantCap {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", tc.size, len(*b), cap(*b), tc.size, tc.wantCap)
		}
		p.Put(b)
	}
	// A returned buffer comes back for any size of its class, resliced.
	// (sync.Pool may drop it, so retry a few times.)
	reused := false
	for range 10 {
		b := p.Get(1000)
		(*b)[0] = 42
		p.Put(b)
		c := p.Get(600)
		if len(*c) != 600 || cap(*c) != 1024 {
			t.Fatalf("Get(600): len %d cap %d", len(*c), cap(*c))
		}
		if c == b {
			reused = true
			break
		}
		p.Put(c)
	}
	if !reused {
		t.Log("sync.Pool never handed a buffer back (allowed, but unusual)")
	}
	// Buffers that are not of the pool's shapes are dropped, not pooled.
	odd := make([]byte, 300)
	p.Put(&odd)
	if b := p.Get(300); cap(*b) != 512 {
		t.Errorf("Get(300) after putting a 300-byte buffer: cap %d, want 512", cap(*b))
	}
}
