//go:build !noasm

package model

import (
	"math"
	"unsafe"

	"golang.org/x/sys/cpu"
)

//go:noescape
func geluFwdAVX512(dst, x *float32, n int, consts *float32)

//go:noescape
func geluBwdAVX512(dst, dout, x *float32, n int, consts *float32)

//go:noescape
func expSubAVX512(dst, src *float32, n int, shift float32, consts *float32) float32

// geluConsts are the constants of the vectorised GELU, in the order of the
// C_* offsets in vec_amd64.s: the same formulas as geluCDF and expf.
var geluConsts = [...]float32{
	math.Float32frombits(0x7fffffff), // |x| mask
	sqrt12,
	0.3275911, // Abramowitz–Stegun 7.1.26: p, then a5..a1
	1,
	1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592,
	log2e, ln2Hi, ln2Lo,
	1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1, // Cephes expf
	0.5,
	invSqrt2Pi,
	-88,                              // exp's argument is clamped here: e⁻⁸⁸ is below every normal float32
	math.Float32frombits(0x80000000), // sign bit
}

// vecKernels are the vectorised elementwise kernels, nil where the CPU (or
// the build) has none.
type vecKernels struct {
	geluFwd func(dst, x []float32)
	geluBwd func(dst, dout, x []float32)
	// expSub sets dst = exp(src − shift), for src ≤ shift, and returns
	// the sum of dst.
	expSub func(dst, src []float32, shift float32) float32
}

func bestVec() vecKernels {
	if !cpu.X86.HasAVX512F {
		return vecKernels{}
	}
	return vecKernels{geluFwd: geluFwd512, geluBwd: geluBwd512, expSub: expSub512}
}

func expSub512(dst, src []float32, shift float32) float32 {
	if len(src) == 0 {
		return 0
	}
	_ = dst[len(src)-1]
	return expSubAVX512(unsafe.SliceData(dst), unsafe.SliceData(src), len(src), shift, &geluConsts[0])
}

// The wrappers run whole vectors of 16 in place and the tail through a
// padded copy, so every element gets the same arithmetic.

func geluFwd512(dst, x []float32) {
	n := len(x) &^ 15
	if n > 0 {
		_, _ = dst[n-1], x[n-1]
		geluFwdAVX512(unsafe.SliceData(dst), unsafe.SliceData(x), n, &geluConsts[0])
	}
	if r := len(x) - n; r > 0 {
		var t, u [16]float32
		copy(t[:], x[n:])
		geluFwdAVX512(&u[0], &t[0], 16, &geluConsts[0])
		copy(dst[n:], u[:r])
	}
}

func geluBwd512(dst, dout, x []float32) {
	n := len(x) &^ 15
	if n > 0 {
		_, _, _ = dst[n-1], dout[n-1], x[n-1]
		geluBwdAVX512(unsafe.SliceData(dst), unsafe.SliceData(dout), unsafe.SliceData(x), n, &geluConsts[0])
	}
	if r := len(x) - n; r > 0 {
		var t, d, u [16]float32
		copy(t[:], x[n:])
		copy(d[:], dout[n:])
		geluBwdAVX512(&u[0], &d[0], &t[0], 16, &geluConsts[0])
		copy(dst[n:], u[:r])
	}
}
