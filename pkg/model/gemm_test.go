package model

import (
	"fmt"
	"math"
	"testing"
)

// naiveProduct is the triple loop, in float64, of op(A)·op(B) (m×n). It also
// returns Σₗ|a·b| per element, which bounds the float32 rounding error.
func naiveProduct(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int) (prod, mag []float64) {
	prod, mag = make([]float64, m*n), make([]float64, m*n)
	for i := 0; i < m; i++ {
		for l := 0; l < k; l++ {
			var av float64
			if transA {
				av = float64(a[l*lda+i])
			} else {
				av = float64(a[i*lda+l])
			}
			for j := 0; j < n; j++ {
				var bv float64
				if transB {
					bv = float64(b[j*ldb+l])
				} else {
					bv = float64(b[l*ldb+j])
				}
				prod[i*n+j] += av * bv
				mag[i*n+j] += math.Abs(av * bv)
			}
		}
	}
	return prod, mag
}

// stored returns the rows and columns of an operand as stored.
func stored(trans bool, r, c int) (int, int) {
	if trans {
		return c, r
	}
	return r, c
}

// allKernels are the micro-kernels this machine can run: its assembly ones
// and the pure-Go one.
func allKernels() []microKernel { return append(asmKernels(), goKernel) }

func TestGemmMatchesNaive(t *testing.T) {
	r := newRand(1)
	// Sizes around the kernels' tiles (8×32, 6×16, 4×4), k across block
	// boundaries (kBlock cuts 300 into 150+150 and 600 into 200×3).
	sizes := [][3]int{{1, 1, 1}, {7, 5, 3}, {3, 11, 1}, {8, 32, 9}, {17, 33, 300}, {33, 130, 65}, {70, 129, 100}, {6, 47, 600}}
	scalars := [][2]float32{{1, 0}, {1, 1}, {0.5, 1}, {-1.5, 0.25}, {2, -1}}
	for _, kern := range allKernels() {
		for _, sz := range sizes {
			m, n, k := sz[0], sz[1], sz[2]
			for _, tA := range []bool{false, true} {
				for _, tB := range []bool{false, true} {
					// Leading dimensions larger than the rows, so strides are exercised.
					ar, ac := stored(tA, m, k)
					br, bc := stored(tB, k, n)
					lda, ldb, ldc := ac+3, bc+1, n+2
					a := uniform32(r, (ar-1)*lda+ac, -1, 1)
					b := uniform32(r, (br-1)*ldb+bc, -1, 1)
					c0 := uniform32(r, m*ldc, -1, 1)
					const pad = float32(1234.5) // in C's ldc padding, which Gemm must not touch
					for i := 0; i < m; i++ {
						for j := n; j < ldc; j++ {
							c0[i*ldc+j] = pad
						}
					}
					prod, mag := naiveProduct(tA, tB, m, n, k, a, lda, b, ldb)
					for _, ab := range scalars {
						for _, workers := range []int{1, 2} {
							alpha, beta := ab[0], ab[1]
							name := fmt.Sprintf("%s/%dx%dx%d/tA=%v/tB=%v/alpha=%g/beta=%g/w%d", kern.name, m, n, k, tA, tB, alpha, beta, workers)
							c := append([]float32(nil), c0...)
							if beta == 0 { // BLAS: C is not read, so a NaN in it must vanish
								for i := 0; i < m; i++ {
									c[i*ldc] = float32(math.NaN())
								}
							}
							newCPU(workers, kern, bestVec()).Gemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
							for i := 0; i < m; i++ {
								for j := 0; j < ldc; j++ {
									got := c[i*ldc+j]
									if j >= n {
										if got != pad {
											t.Fatalf("%s: C[%d][%d] in the ldc padding changed to %v", name, i, j, got)
										}
										continue
									}
									old := float64(c0[i*ldc+j])
									want := float64(alpha)*prod[i*n+j] + float64(beta)*old
									// float32 accumulation: a few k·2⁻²⁴ relative to the terms' magnitudes.
									tol := 4*float64(k+2)*0x1p-24*(math.Abs(float64(alpha))*mag[i*n+j]+math.Abs(float64(beta)*old)) + 1e-30
									if d := math.Abs(float64(got) - want); !(d <= tol) {
										t.Fatalf("%s: C[%d][%d] = %.8g, want %.8g (|diff| %.3g > tol %.3g)", name, i, j, got, want, d, tol)
									}
								}
							}
						}
					}
				}
			}
		}
	}
}

// TestGemmAlphaZero checks BLAS's rule that alpha = 0 does not read A or B:
// an Inf there must not turn into a NaN in C.
func TestGemmAlphaZero(t *testing.T) {
	be := NewCPU(2)
	a := []float32{float32(math.Inf(1)), 1, 2, 3}
	b := []float32{1, 2, 3, float32(math.NaN())}
	c := []float32{1, 2, 3, 4}
	be.Gemm(false, false, 2, 2, 2, 0, a, 2, b, 2, 0.5, c, 2)
	for i, want := range []float32{0.5, 1, 1.5, 2} {
		if c[i] != want {
			t.Errorf("C[%d] = %v, want %v", i, c[i], want)
		}
	}
	be.Gemm(false, false, 2, 2, 0, 1, nil, 1, nil, 2, 0, c, 2)
	for i := range c {
		if c[i] != 0 {
			t.Errorf("k=0, beta=0: C[%d] = %v, want 0", i, c[i])
		}
	}
}

// TestGemmDeterministic checks that the result is bit-identical for any
// number of workers and any split of a batch, for every micro-kernel; for
// the Go kernel it also recomputes the documented arithmetic exactly.
func TestGemmDeterministic(t *testing.T) {
	r := newRand(2)
	shapes := []struct {
		tA, tB  bool
		m, n, k int
	}{{false, false, 64, 196, 288}, {false, true, 64, 288, 196}, {true, false, 130, 190, 64}, {true, true, 45, 150, 700}}
	for _, kern := range allKernels() {
		for _, tc := range shapes {
			ar, ac := stored(tc.tA, tc.m, tc.k)
			br, bc := stored(tc.tB, tc.k, tc.n)
			a, b := uniform32(r, ar*ac, -1, 1), uniform32(r, br*bc, -1, 1)
			c0 := uniform32(r, tc.m*tc.n, -1, 1)
			var want []float32
			for _, workers := range []int{1, 2, 3, 8} {
				c := append([]float32(nil), c0...)
				newCPU(workers, kern, bestVec()).Gemm(tc.tA, tc.tB, tc.m, tc.n, tc.k, 0.75, a, ac, b, bc, 0.5, c, tc.n)
				if want == nil {
					want = c
					continue
				}
				equalBits(t, fmt.Sprintf("%s tA=%v tB=%v workers=%d vs 1", kern.name, tc.tA, tc.tB, workers), c, want)
			}
			if kern.name == "go" {
				equalBits(t, fmt.Sprintf("go kernel tA=%v tB=%v vs its documented arithmetic", tc.tA, tc.tB),
					want, goGemmArithmetic(tc.tA, tc.tB, tc.m, tc.n, tc.k, 0.75, a, ac, b, bc, 0.5, c0, tc.n))
			}
		}
	}
}

// goGemmArithmetic computes, element by element and in plain Go, what the
// pure-Go kernel is documented to compute: per k-block (kBlock), a float32
// sum of rounded products in k order, then C = alpha·acc + beta·C on the
// first block and C = alpha·acc + C on the others.
func goGemmArithmetic(tA, tB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c0 []float32, ldc int) []float32 {
	c := append([]float32(nil), c0...)
	kc := kBlock(k)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			for k0 := 0; k0 < k; k0 += kc {
				var acc float32
				for l := k0; l < min(k0+kc, k); l++ {
					var av, bv float32
					if tA {
						av = a[l*lda+i]
					} else {
						av = a[i*lda+l]
					}
					if tB {
						bv = b[j*ldb+l]
					} else {
						bv = b[l*ldb+j]
					}
					acc += float32(av * bv)
				}
				u := float32(alpha * acc)
				bt := beta
				if k0 > 0 {
					bt = 1
				}
				if k0 > 0 || beta != 0 {
					u = float32(bt*c[i*ldc+j]) + u
				}
				c[i*ldc+j] = u
			}
		}
	}
	return c
}

// TestGemmStridedBatched checks the batched GEMM against one Gemm per matrix,
// bit for bit, including a shared (stride 0) A or B, for batches smaller and
// larger than the number of workers (which take different paths).
func TestGemmStridedBatched(t *testing.T) {
	r := newRand(3)
	const m, n, k = 20, 37, 9
	for _, kern := range allKernels() {
		for _, batch := range []int{2, 5} {
			for _, shared := range []string{"none", "A", "B"} {
				for _, workers := range []int{1, 2, 3} {
					be := newCPU(workers, kern, bestVec())
					sa, sb := m*k, k*n
					switch shared {
					case "A":
						sa = 0
					case "B":
						sb = 0
					}
					a := uniform32(r, m*k*batch, -1, 1)
					b := uniform32(r, k*n*batch, -1, 1)
					c := uniform32(r, (m*n+3)*batch, -1, 1) // gap of 3 between outputs
					want := append([]float32(nil), c...)
					for i := 0; i < batch; i++ {
						be.Gemm(true, false, m, n, k, 1.5, a[i*sa:], m, b[i*sb:], n, 1, want[i*(m*n+3):], n)
					}
					be.GemmStridedBatched(true, false, m, n, k, 1.5, a, m, sa, b, n, sb, 1, c, n, m*n+3, batch)
					equalBits(t, fmt.Sprintf("%s batch=%d shared=%s workers=%d", kern.name, batch, shared, workers), c, want)
				}
			}
		}
	}
}

func TestGemmPanicsOnBadArguments(t *testing.T) {
	be := NewCPU(1)
	buf := make([]float32, 12)
	mustPanic(t, "short A", func() { be.Gemm(false, false, 3, 4, 5, 1, buf, 5, buf, 4, 0, buf, 4) })
	mustPanic(t, "lda < k", func() { be.Gemm(false, false, 2, 2, 3, 1, buf, 2, buf, 2, 0, buf, 2) })
	mustPanic(t, "negative m", func() { be.Gemm(false, false, -1, 2, 2, 1, buf, 2, buf, 2, 0, buf, 2) })
	mustPanic(t, "overlapping batch outputs", func() {
		be.GemmStridedBatched(false, false, 2, 2, 2, 1, buf, 2, 0, buf, 2, 0, 0, buf, 2, 3, 2)
	})
}

func TestGemmAllocatesNothing(t *testing.T) {
	be := NewCPU(2)
	r := newRand(4)
	a, b, c := uniform32(r, 64*300, -1, 1), uniform32(r, 300*200, -1, 1), make([]float32, 64*200)
	if got := testing.AllocsPerRun(1, func() { be.Gemm(false, false, 64, 200, 300, 1, a, 300, b, 200, 0, c, 200) }); got != 0 {
		t.Errorf("Gemm: %v allocations per call, want 0", got)
	}
}
