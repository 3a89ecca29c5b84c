package model

import (
	"math"
	"math/rand/v2"
	"testing"
)

// newRand returns a deterministic generator for test data.
func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 1)) }

// uniform32 returns n values drawn from U(lo, hi).
func uniform32(r *rand.Rand, n int, lo, hi float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(lo + (hi-lo)*r.Float64())
	}
	return x
}

// awayFromZero returns n values with magnitudes in [lo, hi] and random signs,
// so that a perturbation smaller than lo never crosses a ReLU kink.
func awayFromZero(r *rand.Rand, n int, lo, hi float64) []float32 {
	x := uniform32(r, n, lo, hi)
	for i := range x {
		if r.IntN(2) == 0 {
			x[i] = -x[i]
		}
	}
	return x
}

// dot64 is Σ a·b accumulated in float64.
func dot64(a, b []float32) float64 {
	if len(a) != len(b) {
		panic("dot64: length mismatch")
	}
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

// gradCheck compares analytic, the gradient of f with respect to x, with
// central differences (f(x+h) − f(x−h)) / (2h) at the given coordinates of x.
// f must read x afresh on every call and evaluate in float64. The step h is
// the difference of the float32 values actually stored, so rounding x±eps to
// float32 costs nothing. A coordinate passes when
// |analytic − numeric| ≤ atol + rtol·|numeric|.
func gradCheck(t *testing.T, what string, x, analytic []float32, coords []int, eps float32, atol, rtol float64, f func() float64) {
	t.Helper()
	if len(analytic) != len(x) {
		t.Fatalf("%s: %d gradient values for %d inputs", what, len(analytic), len(x))
	}
	bad, worst := 0, 0.0 // worst is the largest |diff| / tolerance
	for _, i := range coords {
		orig := x[i]
		x[i] = orig + eps
		hi, fhi := x[i], f()
		x[i] = orig - eps
		lo, flo := x[i], f()
		x[i] = orig
		want := (fhi - flo) / (float64(hi) - float64(lo))
		got := float64(analytic[i])
		d, tol := math.Abs(got-want), atol+rtol*math.Abs(want)
		worst = max(worst, d/tol)
		if !(d <= tol) {
			if bad++; bad <= 10 {
				t.Errorf("%s[%d]: analytic gradient %.7g, central difference %.7g (|diff| %.3g > %.3g)", what, i, got, want, d, atol+rtol*math.Abs(want))
			}
		}
	}
	if bad > 10 {
		t.Errorf("%s: %d of %d coordinates differ", what, bad, len(coords))
	}
	t.Logf("%s: %d coordinates, largest |diff| is %.2g of the tolerance", what, len(coords), worst)
}

// allCoords returns 0..n-1.
func allCoords(n int) []int {
	c := make([]int, n)
	for i := range c {
		c[i] = i
	}
	return c
}

// someCoords returns k distinct coordinates in [0, n) (all of them if k >= n).
func someCoords(r *rand.Rand, n, k int) []int {
	if k >= n {
		return allCoords(n)
	}
	return r.Perm(n)[:k]
}

// equalBits reports the first index where a and b differ bit for bit.
func equalBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: length %d, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: first difference at %d: %v (%08x), want %v (%08x)", what, i, got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
		}
	}
}

// mustPanic runs f and fails unless it panics.
func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s: did not panic", what)
		}
	}()
	f()
}

// cnnFB is the CNN's ForwardBackward in the form of the original API: images,
// labels, count and scale in, loss sum out.
func cnnFB(m *CNN, x []float32, y []int32, n int, scale float32) (float64, error) {
	st, err := m.ForwardBackward(Batch{N: n, X: x, Targets: y}, scale)
	return st.Loss, err
}
