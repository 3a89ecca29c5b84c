package model

import (
	"fmt"
	"runtime"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gorgonia.org/tensor"
)

// gemmShapes are the products the models spend their time in, plus square
// ones for comparison with the machine's peak. Names say where they come from.
var gemmShapes = []struct {
	name           string
	transA, transB bool
	m, n, k        int
}{
	{"square512", false, false, 512, 512, 512},
	{"square1024", false, false, 1024, 1024, 1024},
	{"gpt_fc_fwd", false, true, 1024, 512, 128},   // x·Wᵀ, B·T × 4C
	{"gpt_proj_fwd", false, true, 1024, 128, 512}, // mlp.c_proj
	{"gpt_fc_dx", false, false, 1024, 128, 512},   // dy·W
	{"gpt_fc_dw", true, false, 512, 128, 1024},    // dyᵀ·x
	{"cnn_fc1_fwd", false, true, 64, 128, 3136},
	{"cnn_conv2_fwd", false, false, 64, 12544, 288},
	{"cnn_conv2_dw", false, true, 64, 288, 12544},
}

// BenchmarkGemm runs each shape with one worker (compare with BenchmarkPeak's
// one core) and with GOMAXPROCS workers (all cores).
func BenchmarkGemm(b *testing.B) {
	for _, s := range gemmShapes {
		for _, workers := range []int{1, 0} {
			name := fmt.Sprintf("%s_%dx%dx%d/%s", s.name, s.m, s.n, s.k, map[bool]string{true: "one_core", false: "all_cores"}[workers == 1])
			b.Run(name, func(b *testing.B) { benchGemm(b, NewCPU(workers), s.transA, s.transB, s.m, s.n, s.k) })
		}
	}
}

func benchGemm(b *testing.B, be *CPU, transA, transB bool, m, n, k int) {
	r := newRand(1)
	ar, ac := stored(transA, m, k)
	br, bc := stored(transB, k, n)
	a, bb, c := uniform32(r, ar*ac, -1, 1), uniform32(r, br*bc, -1, 1), make([]float32, m*n)
	be.Gemm(transA, transB, m, n, k, 1, a, ac, bb, bc, 0, c, n)
	b.ReportAllocs()
	for b.Loop() {
		be.Gemm(transA, transB, m, n, k, 1, a, ac, bb, bc, 0, c, n)
	}
	b.ReportMetric(2*float64(m*n*k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkGemmPeers runs a few shapes on one core through the pure-Go
// micro-kernel (the path of CPUs without AVX2) and through gonum's Sgemm
// (gorgonia.org/tensor's default BLAS, which the CPU backend used before),
// for comparison with BenchmarkGemm's one_core results.
func BenchmarkGemmPeers(b *testing.B) {
	for _, s := range gemmShapes {
		if s.name != "square512" && s.name != "gpt_fc_fwd" && s.name != "cnn_conv2_fwd" {
			continue
		}
		shape := fmt.Sprintf("%s_%dx%dx%d", s.name, s.m, s.n, s.k)
		b.Run(shape+"/pure_go", func(b *testing.B) { benchGemm(b, NewCPUPureGo(1), s.transA, s.transB, s.m, s.n, s.k) })
		b.Run(shape+"/gonum", func(b *testing.B) {
			r := newRand(1)
			ar, ac := stored(s.transA, s.m, s.k)
			br, bc := stored(s.transB, s.k, s.n)
			a, bb, c := uniform32(r, ar*ac, -1, 1), uniform32(r, br*bc, -1, 1), make([]float32, s.m*s.n)
			tA, tB := blas.NoTrans, blas.NoTrans
			if s.transA {
				tA = blas.Trans
			}
			if s.transB {
				tB = blas.Trans
			}
			impl := tensor.WhichBLAS()
			// gonum parallelises large products itself; one core here.
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
			for b.Loop() {
				impl.Sgemm(tA, tB, s.m, s.n, s.k, 1, a, ac, bb, bc, 0, c, s.n)
			}
			b.ReportMetric(2*float64(s.m*s.n*s.k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
