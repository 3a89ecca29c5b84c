package allreduce

import (
	"encoding/binary"
	"math"
	"unsafe"
)

// The element kernels. addF32 and divF32 dispatch to AVX-512 or AVX2
// assembly where the CPU has it (kernel_amd64.go) and to the loops below
// elsewhere. Every variant computes the same IEEE single-precision
// operations element by element (no FMA, no reassociation), so results are
// bit-identical whichever one a rank uses: a ring may mix machines.

// addF32Generic adds the little-endian float32s in src to dst;
// len(src) == 4*len(dst). src may be unaligned.
func addF32Generic(dst []float32, src []byte) {
	if len(dst) == 0 {
		return
	}
	if uintptr(unsafe.Pointer(&src[0]))%4 == 0 {
		s := unsafe.Slice((*float32)(unsafe.Pointer(&src[0])), len(dst))
		for i := range dst {
			dst[i] += s[i]
		}
		return
	}
	for i := range dst {
		dst[i] += math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}

// divF32Generic divides every element of dst by d.
func divF32Generic(dst []float32, d float32) {
	for i := range dst {
		dst[i] /= d
	}
}

// bf16 wire compression: a float32 is sent as its top 16 bits, rounded to
// nearest even; NaNs stay NaNs (quieted). The conversion is integer
// arithmetic, so it is the same on every machine (denormals included).

func toBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 { // NaN
		return uint16(u>>16) | 0x40
	}
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

func fromBF16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// encodeBF16 writes src as bf16 into dst (len(dst) == 2*len(src)).
func encodeBF16(dst []byte, src []float32) {
	for i, f := range src {
		binary.LittleEndian.PutUint16(dst[2*i:], toBF16(f))
	}
}

// roundBF16 rounds every element of buf to the nearest bf16 value, so that
// a rank's own copy equals what its peers decode.
func roundBF16(buf []float32) {
	for i, f := range buf {
		buf[i] = fromBF16(toBF16(f))
	}
}

// addBF16 adds the bf16 values in src to dst (len(src) == 2*len(dst)).
func addBF16(dst []float32, src []byte) {
	for i := range dst {
		dst[i] += fromBF16(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

// copyBF16 decodes the bf16 values in src into dst.
func copyBF16(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = fromBF16(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

// floatBytes views a float32 slice as its little-endian bytes (every
// platform this project supports is little-endian).
func floatBytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), len(f)*4)
}
