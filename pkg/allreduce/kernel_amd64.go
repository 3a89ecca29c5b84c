package allreduce

import "golang.org/x/sys/cpu"

// Which vector units the kernels use; fixed for the process.
var (
	hasAVX512 = cpu.X86.HasAVX512F
	hasAVX2   = cpu.X86.HasAVX2
)

//go:noescape
func addF32AVX512(dst *float32, src *byte, n int)

//go:noescape
func addF32AVX2(dst *float32, src *byte, n int)

//go:noescape
func divF32AVX512(dst *float32, d float32, n int)

//go:noescape
func divF32AVX2(dst *float32, d float32, n int)

// addF32 adds the little-endian float32s in src to dst; len(src) ==
// 4*len(dst); src may be unaligned.
func addF32(dst []float32, src []byte) {
	if len(dst) == 0 {
		return
	}
	_ = src[4*len(dst)-1]
	switch {
	case hasAVX512:
		addF32AVX512(&dst[0], &src[0], len(dst))
	case hasAVX2:
		addF32AVX2(&dst[0], &src[0], len(dst))
	default:
		addF32Generic(dst, src)
	}
}

// divF32 divides every element of dst by d.
func divF32(dst []float32, d float32) {
	if len(dst) == 0 {
		return
	}
	switch {
	case hasAVX512:
		divF32AVX512(&dst[0], d, len(dst))
	case hasAVX2:
		divF32AVX2(&dst[0], d, len(dst))
	default:
		divF32Generic(dst, d)
	}
}

// addAsmVariants adds the assembly kernels this CPU can run, for tests.
func addAsmVariants(v map[string]func([]float32, []byte)) {
	if hasAVX2 {
		v["avx2"] = func(d []float32, s []byte) {
			if len(d) > 0 {
				addF32AVX2(&d[0], &s[0], len(d))
			}
		}
	}
	if hasAVX512 {
		v["avx512"] = func(d []float32, s []byte) {
			if len(d) > 0 {
				addF32AVX512(&d[0], &s[0], len(d))
			}
		}
	}
}
