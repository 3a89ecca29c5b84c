package model

import "math"

// Scalar float32 functions for the elementwise kernels: Go's math works in
// float64 and is several times slower than these, which are accurate to a
// few float32 ulps (expf) or 1.5e-7 absolute (erff) — as accurate as the
// vectorised versions PyTorch uses on CPU.

const (
	log2e      = 1.44269504088896341
	ln2Hi      = 0.693359375
	ln2Lo      = -2.12194440e-4
	sqrt12     = 0.70710678118654752440 // 1/√2
	invSqrt2Pi = 0.39894228040143267794 // 1/√(2π)
)

// expf returns eˣ. It is Cephes' expf: x = k·ln2 + r with |r| ≤ ln2/2, a
// degree-6 polynomial for eʳ, and 2ᵏ put into the exponent bits. Results
// below the smallest normal float32 flush to 0; above the largest, +Inf.
func expf(x float32) float32 {
	switch {
	case x != x:
		return x
	case x > 88.72283:
		return float32(math.Inf(1))
	case x < -87.33654:
		return 0
	}
	k := float32(math.Floor(float64(x*log2e + 0.5)))
	r := x - k*ln2Hi
	r -= k * ln2Lo
	z := r * r
	p := float32(1.9875691500e-4)
	p = p*r + 1.3981999507e-3
	p = p*r + 8.3334519073e-3
	p = p*r + 4.1665795894e-2
	p = p*r + 1.6666665459e-1
	p = p*r + 5.0000001201e-1
	p = p*z + r + 1
	// 2ᵏ for k in [−126, 128]; k = 128 happens only just below the overflow
	// bound, where p < 1, so it is split in two.
	ki := int32(k)
	if ki > 127 {
		return p * 2 * math.Float32frombits(uint32(ki-1+127)<<23)
	}
	return p * math.Float32frombits(uint32(ki+127)<<23)
}

// erfTail returns t·P(t) and exp(−z²) for z ≥ 0, with t = 1/(1 + p·z), so
// that erf(z) = 1 − t·P(t)·exp(−z²) (Abramowitz and Stegun 7.1.26, absolute
// error below 1.5e-7; the formula PyTorch's vectorised erf uses).
func erfTail(z float32) (tp, e float32) {
	t := 1 / (1 + 0.3275911*z)
	p := float32(1.061405429)
	p = p*t - 1.453152027
	p = p*t + 1.421413741
	p = p*t - 0.284496736
	p = p*t + 0.254829592
	return t * p, expf(-z * z)
}

// erff returns erf(x).
func erff(x float32) float32 {
	z := x
	if z < 0 {
		z = -z
	}
	tp, e := erfTail(z)
	y := 1 - tp*e
	if x < 0 {
		return -y
	}
	return y
}

// geluCDF returns Φ(x), the standard normal CDF, and φ(x), its density.
func geluCDF(x float32) (cdf, pdf float32) {
	z := x * sqrt12
	az := z
	if az < 0 {
		az = -az
	}
	tp, e := erfTail(az) // e = exp(−x²/2)
	erf := 1 - tp*e
	if z < 0 {
		erf = -erf
	}
	return 0.5 * (1 + erf), e * invSqrt2Pi
}

// sigmoid64 and tanh64 are the LSTM gates' activations, in float64: the
// gates are few next to the GEMMs, and float64 keeps tanh accurate near 0.
func sigmoid64(x float32) float32 { return float32(1 / (1 + math.Exp(-float64(x)))) }
func tanh64(x float32) float32    { return float32(math.Tanh(float64(x))) }
