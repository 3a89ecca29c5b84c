package model

import (
	"fmt"
	"testing"
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

func BenchmarkGemm(b *testing.B) {
	for _, s := range gemmShapes {
		b.Run(fmt.Sprintf("%s_%dx%dx%d", s.name, s.m, s.n, s.k), func(b *testing.B) {
			be := NewCPU(0)
			r := newRand(1)
			ar, ac := stored(s.transA, s.m, s.k)
			br, bc := stored(s.transB, s.k, s.n)
			a, bb, c := uniform32(r, ar*ac, -1, 1), uniform32(r, br*bc, -1, 1), make([]float32, s.m*s.n)
			be.Gemm(s.transA, s.transB, s.m, s.n, s.k, 1, a, ac, bb, bc, 0, c, s.n)
			b.ReportAllocs()
			for b.Loop() {
				be.Gemm(s.transA, s.transB, s.m, s.n, s.k, 1, a, ac, bb, bc, 0, c, s.n)
			}
			b.ReportMetric(2*float64(s.m*s.n*s.k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
