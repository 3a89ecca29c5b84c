package crc32c

import "hash/crc32"

var table = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C of p.
func Checksum(p []byte) uint32 { return Update(0, p) }

// Update returns the CRC-32C of the bytes whose checksum is crc followed by
// p; Update(0, p) is the CRC-32C of p, as with hash/crc32.
func Update(crc uint32, p []byte) uint32 {
	if n := foldable(len(p)); n > 0 {
		rem := fold(^crc, p[:n])
		// The remainder is congruent to p[:n] (with crc folded in), so
		// its own CRC from a zero state, followed by the tail, is p's.
		return crc32.Update(crc32.Update(0xffffffff, table, rem[:]), table, p[n:])
	}
	return crc32.Update(crc, table, p)
}

// Combine returns the CRC-32C of A followed by B from crcA, crcB and the
// length of B, without the bytes (zlib's crc32_combine: appending n zero
// bits is a linear map over GF(2), applied by repeated squaring). It lets
// pieces of one object be checksummed in parallel.
func Combine(crcA, crcB uint32, lenB int64) uint32 {
	if lenB <= 0 {
		return crcA
	}
	var even, odd [32]uint32
	odd[0] = crc32.Castagnoli // the operator for one zero bit
	row := uint32(1)
	for n := 1; n < 32; n++ {
		odd[n] = row
		row <<= 1
	}
	gf2Square(&even, &odd) // two zero bits
	gf2Square(&odd, &even) // four zero bits
	for {
		gf2Square(&even, &odd)
		if lenB&1 != 0 {
			crcA = gf2Times(&even, crcA)
		}
		lenB >>= 1
		if lenB == 0 {
			break
		}
		gf2Square(&odd, &even)
		if lenB&1 != 0 {
			crcA = gf2Times(&odd, crcA)
		}
		lenB >>= 1
		if lenB == 0 {
			break
		}
	}
	return crcA ^ crcB
}

func gf2Times(mat *[32]uint32, vec uint32) uint32 {
	var sum uint32
	for i := 0; vec != 0; i, vec = i+1, vec>>1 {
		if vec&1 != 0 {
			sum ^= mat[i]
		}
	}
	return sum
}

func gf2Square(square, mat *[32]uint32) {
	for n := range 32 {
		square[n] = gf2Times(mat, mat[n])
	}
}

// foldConstant returns x^k mod P, P the Castagnoli polynomial, in the
// bit order the folding kernel multiplies with: the coefficient of x^d at
// bit 63-d of the word. A reflected 64-bit lane times such a word, with a
// carry-less multiply, lands in the 128-bit reflected layout one degree
// low, so the kernel is given x^(k-1) where it means x^k.
func foldConstant(k int) uint64 {
	const poly = 1<<32 | 0x1EDC6F41 // Castagnoli, x^32 explicit
	r := uint64(1)
	for range k {
		r <<= 1
		if r&(1<<32) != 0 {
			r ^= poly
		}
	}
	var w uint64
	for d := range 32 {
		if r>>d&1 != 0 {
			w |= 1 << (63 - d)
		}
	}
	return w
}

// foldPair returns the constants that move a 128-bit accumulator forward
// by d bits: the first multiplies its first (higher-degree) 64-bit lane,
// which stands for lane·x^(64+d), the second its second lane (lane·x^d).
func foldPair(d int) [2]uint64 {
	return [2]uint64{foldConstant(d + 64 - 1), foldConstant(d - 1)}
}
