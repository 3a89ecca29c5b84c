package crc32c

import "golang.org/x/sys/cpu"

// The folding kernel needs 512-bit registers (AVX512F), xor of three
// (VPTERNLOGQ, AVX512F) and carry-less multiplication of every 128-bit lane
// at once (VPCLMULQDQ).
var hasFold = cpu.X86.HasAVX512F && cpu.X86.HasAVX512VPCLMULQDQ

// foldKeys are the kernel's constants: moving an accumulator 2048 bits
// (one 256-byte step), 512 bits (one register's worth), and, for the last
// register's four lanes, 384, 256, 128 and 0 bits.
var foldKeys = func() (k [12]uint64) {
	for i, d := range []int{2048, 512, 384, 256, 128} {
		p := foldPair(d)
		k[2*i], k[2*i+1] = p[0], p[1]
	}
	return k
}()

//go:noescape
func foldAVX512(crc uint32, p []byte, out *[16]byte, keys *[12]uint64)

// foldable returns how many bytes at the start of an n-byte input the
// kernel folds (a multiple of 256), or 0 where it does not pay.
func foldable(n int) int {
	if !hasFold || n < 512 {
		return 0
	}
	return n &^ 255
}

// fold folds p (len a multiple of 256, at least 256) with the inverted
// running state crc xored into its first four bytes, into a 16-byte
// remainder congruent to it.
func fold(crc uint32, p []byte) (rem [16]byte) {
	foldAVX512(crc, p, &rem, &foldKeys)
	return rem
}
