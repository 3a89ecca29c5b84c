package allreduce

import "hash/fnv"

// This file is the pure part of the library: which elements each rank
// owns, in what order sums are formed, how regions are cut into frames.
// It does no I/O.

// BlockElems is the size of the blocks that fix the order of every sum.
// Element i of a reduced buffer lies in block k = i / BlockElems; with n
// ranks the block's class is c = k mod n, and the element's sum is formed
// as ((x_c + x_{c+1}) + x_{c+2}) + ... + x_{c-1}, where x_r is rank r's
// value and rank indexes wrap around. In the ring, the blocks of class c
// start their journey at rank c and end fully reduced at rank c-1; the
// small-message algorithm adds in the same order. So the bits of a reduced
// element depend only on the world size, its index and the inputs: not on
// the algorithm, the frame size or how the buffer was cut into buckets.
const BlockElems = 4096

// span is a half-open range of element indexes.
type span struct{ lo, hi int }

func (s span) len() int { return s.hi - s.lo }

// blockClass is the class of the block holding element i.
func blockClass(i, world int) int { return (i / BlockElems) % world }

// classRegion appends to dst the parts of spans whose blocks have class c,
// in the order of spans and then of indexes.
func classRegion(dst []span, spans []span, world, c int) []span {
	for _, s := range spans {
		if s.len() <= 0 {
			continue
		}
		for k := s.lo / BlockElems; k*BlockElems < s.hi; k++ {
			if k%world != c {
				// Skip to the next block of class c.
				skip := (c - k%world + world) % world
				k += skip - 1
				continue
			}
			lo, hi := max(s.lo, k*BlockElems), min(s.hi, (k+1)*BlockElems)
			if n := len(dst); n > 0 && dst[n-1].hi == lo {
				dst[n-1].hi = hi
			} else {
				dst = append(dst, span{lo, hi})
			}
		}
	}
	return dst
}

// shard returns the bounds of rank r's contiguous part of n elements split
// as evenly as possible over world ranks (the first n mod world ranks get
// one more element... in the order of the formula below).
func shard(n, world, r int) (int, int) {
	return r * n / world, (r + 1) * n / world
}

func mod(a, w int) int { return ((a % w) + w) % w }

func spansLen(spans []span) int {
	n := 0
	for _, s := range spans {
		n += s.len()
	}
	return n
}

// shapeHash identifies a set of spans, so that ranks reducing different
// parts of a buffer of the same total length are told apart.
func shapeHash(spans []span) uint64 {
	if len(spans) == 1 && spans[0].lo == 0 {
		return 0 // the whole buffer
	}
	h := fnv.New64a()
	var b [16]byte
	for _, s := range spans {
		putU64(b[:], uint64(s.lo))
		putU64(b[8:], uint64(s.hi))
		h.Write(b[:])
	}
	return h.Sum64()
}

func putU64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (8 * i))
	}
}

// slices cuts region into consecutive frames of at most per elements; it
// appends to dst the start index (into the flattened region) of each
// frame and returns it with the region's length appended last.
func sliceBounds(dst []int, regionLen, per int) []int {
	for off := 0; off < regionLen; off += per {
		dst = append(dst, off)
	}
	return append(dst, regionLen)
}

// subSpans appends to dst the parts of region covering flattened offsets
// [from, to).
func subSpans(dst []span, region []span, from, to int) []span {
	off := 0
	for _, s := range region {
		l := s.len()
		if off+l > from && off < to {
			lo := s.lo + max(0, from-off)
			hi := s.lo + min(l, to-off)
			dst = append(dst, span{lo, hi})
		}
		off += l
		if off >= to {
			break
		}
	}
	return dst
}

// Ring schedule. Rank r's neighbours are r-1 (left, it receives from) and
// r+1 (right, it sends to). The chunk "owned" by rank o ends fully reduced
// at o after the reduce-scatter.
//
// Reduce-scatter step s (0..n-2): rank r sends the partial sum of o's
// chunk for o = r-1-s, receives o = r-2-s and adds its own values.
// All-gather step s (0..n-2): rank r sends the final chunk of o = r-s and
// receives (copies) o = r-s-1.

func rsSendOwner(r, s, n int) int { return mod(r-1-s, n) }
func rsRecvOwner(r, s, n int) int { return mod(r-2-s, n) }
func agSendOwner(r, s, n int) int { return mod(r-s, n) }
func agRecvOwner(r, s, n int) int { return mod(r-s-1, n) }

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	neg := i < 0
	if neg {
		i = -i
	}
	var b [20]byte
	p := len(b)
	for i > 0 {
		p--
		b[p] = byte('0' + i%10)
		i /= 10
	}
	if neg {
		p--
		b[p] = '-'
	}
	return string(b[p:])
}
