package allreduce

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// kernelVariants are every implementation of addF32 this machine can run.
func kernelVariants() map[string]func([]float32, []byte) {
	v := map[string]func([]float32, []byte){"generic": addF32Generic, "dispatch": addF32}
	addAsmVariants(v)
	return v
}

func TestAddKernelsMatchScalar(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for name, add := range kernelVariants() {
		for _, n := range []int{0, 1, 7, 8, 15, 16, 17, 63, 64, 65, 1000, 4099} {
			for _, misalign := range []int{0, 1, 2, 3} {
				dst := make([]float32, n)
				src := make([]byte, 4*n+misalign)
				want := make([]float32, n)
				for i := range dst {
					dst[i] = rng.Float32()*2 - 1
					x := rng.Float32()*2 - 1
					bits := math.Float32bits(x)
					for b := range 4 {
						src[misalign+4*i+b] = byte(bits >> (8 * b))
					}
					want[i] = dst[i] + x
				}
				add(dst, src[misalign:])
				sameBits(t, fmt.Sprintf("%s n %d misalign %d", name, n, misalign), dst, want)
			}
		}
	}
}

func TestDivKernelMatchesScalar(t *testing.T) {
	for _, n := range []int{0, 1, 5, 16, 33, 1000} {
		a := make([]float32, n)
		for i := range a {
			a[i] = float32(i)*0.37 - 3
		}
		want := append([]float32(nil), a...)
		divF32Generic(want, 3)
		divF32(a, 3)
		sameBits(t, fmt.Sprintf("div n %d", n), a, want)
	}
}

func TestBF16Rounding(t *testing.T) {
	cases := []struct {
		in   uint32
		want uint16
	}{
		{0x3f800000, 0x3f80}, // 1
		{0x3f808000, 0x3f80}, // tie, even stays
		{0x3f818000, 0x3f82}, // tie, odd rounds up
		{0x3f807fff, 0x3f80},
		{0x3f808001, 0x3f81},
		{0x7f7fffff, 0x7f80}, // max float rounds to +inf
		{0x7fc00001, 0x7fc0}, // NaN stays NaN
		{0x7f800001, 0x7fc0}, // signalling NaN is quieted
		{0x00000001, 0x0000}, // denormal rounds like any number
	}
	for _, c := range cases {
		if got := toBF16(math.Float32frombits(c.in)); got != c.want {
			t.Errorf("toBF16(%08x) = %04x, want %04x", c.in, got, c.want)
		}
	}
}

func BenchmarkAddF32(b *testing.B) {
	for _, n := range []int{4 << 10, 64 << 10, 4 << 20} { // 16 KiB (L1), 256 KiB (L2), 16 MiB (memory)
		for name, add := range kernelVariants() {
			b.Run(fmt.Sprintf("%s/%dKiB", name, n*4>>10), func(b *testing.B) {
				dst := make([]float32, n)
				src := floatBytes(make([]float32, n))
				b.SetBytes(int64(4 * n)) // bytes of dst reduced; memory traffic is 3x
				for b.Loop() {
					add(dst, src)
				}
			})
		}
	}
}
