//go:build !noasm

package model

import (
	"runtime"
	"sync"
	"testing"

	"golang.org/x/sys/cpu"
)

// BenchmarkPeak measures the machine's peak single-precision rate with
// AVX-512 FMAs on registers (no memory traffic), on one core and on all of
// them at once: the bound BenchmarkGemm is compared against in
// docs/benchmarks.md.
func BenchmarkPeak(b *testing.B) {
	if !cpu.X86.HasAVX512F {
		b.Skip("no AVX-512")
	}
	const iters = 1 << 20
	for _, procs := range []int{1, runtime.GOMAXPROCS(0)} {
		b.Run(map[bool]string{true: "one_core", false: "all_cores"}[procs == 1], func(b *testing.B) {
			for b.Loop() {
				var wg sync.WaitGroup
				for range procs {
					wg.Go(func() { fmaPeakAVX512(iters) })
				}
				wg.Wait()
			}
			b.ReportMetric(float64(procs)*384*iters*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
