//go:build !noasm

package model

import "golang.org/x/sys/cpu"

//go:noescape
func kernel8x32AVX512(kc int, a *float32, aRow, aK int, b, c *float32, ldc int, alpha, beta float32, betaZero int)

//go:noescape
func transpose8x8(dst *float32, dstStride int, src *float32, srcStride int, blocks int)

//go:noescape
func copyBlocks8(dst *float32, dstStride int, src *float32, srcStride int, rows, width int)

// fmaPeakAVX512 runs n iterations of 12 independent 16-lane FMAs (384
// floating-point operations each); BenchmarkPeak times it.
//
//go:noescape
func fmaPeakAVX512(n int)

//go:noescape
func kernel6x16AVX2(kc int, a *float32, aRow, aK int, b, c *float32, ldc int, alpha, beta float32, betaZero int)

var (
	avx512Kernel = microKernel{name: "avx512", mr: 8, nr: 32, fn: kernel8x32AVX512, transpose8: transpose8x8, copy8: copyBlocks8}
	avx2Kernel   = microKernel{name: "avx2", mr: 6, nr: 16, fn: kernel6x16AVX2, transpose8: transpose8x8, copy8: copyBlocks8}
)

// bestKernel returns the fastest micro-kernel this CPU supports. x/sys/cpu
// checks that the operating system saves the vector registers too.
func bestKernel() microKernel {
	switch {
	case cpu.X86.HasAVX512F:
		return avx512Kernel
	case cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		return avx2Kernel
	}
	return goKernel
}

// asmKernels lists the assembly kernels this CPU can run, for tests.
func asmKernels() []microKernel {
	var ks []microKernel
	if cpu.X86.HasAVX512F {
		ks = append(ks, avx512Kernel)
	}
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		ks = append(ks, avx2Kernel)
	}
	return ks
}
