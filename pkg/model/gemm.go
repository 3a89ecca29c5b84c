package model

import (
	"fmt"
	"unsafe"
)

// The CPU backend's GEMM, in the manner of BLIS and GotoBLAS: op(B) is packed
// into strips of NR columns laid out k-major, so that a micro-kernel walks
// them sequentially and keeps an MR×NR block of C in registers; op(A) is read
// in place in strips of MR rows when A is row-major (each row a contiguous run
// of k values) and packed k-major like B otherwise, or where a strip is cut by
// the edge. Micro-kernels are written in assembly for AVX-512 (8×32) and AVX2
// with FMA (6×16); other CPUs, and builds with the noasm tag, use a 4×4
// kernel in Go.
//
// Parallelism. A product runs either on one worker (small products, and each
// matrix of a batch at least as large as the team) or on all: the operands
// are packed by all workers (groups of strips per item), then tiles of C of
// up to about 192×384 are computed, one per item, k-block by k-block.
//
// Determinism. Every element of C is computed by one micro-kernel call per
// k-block: a chain of multiply-adds over the block, in k order, then one
// update of C. The k-blocks are cut from k alone (kBlock), and the blocks
// are applied to C in order. Threads only decide which goroutine computes a
// tile, never how, so the bits do not depend on the number of workers, on
// the tiling, or on whether a matrix of a batch is computed by one worker or
// by all. (They do depend on the micro-kernel: the AVX-512, AVX2 and Go
// kernels give different roundings.)

// microKernel multiplies an MR×kc panel of op(A), element (r, l) at
// a[r·aRow + l·aK], by one packed kc×NR panel of op(B) into an MR×NR block of
// C with leading dimension ldc: C = alpha·acc if betaZero != 0 (C is not
// read), else C = beta·C + alpha·acc.
type microKernel struct {
	name   string
	mr, nr int
	fn     func(kc int, a *float32, aRow, aK int, b, c *float32, ldc int, alpha, beta float32, betaZero int)
	// transpose8, if set, transposes 8×8 blocks for the packing routines
	// (see transpose8x8 in gemm_amd64.s); packing is exact copying, so it
	// changes no result.
	transpose8 func(dst *float32, dstStride int, src *float32, srcStride int, blocks int)
	// copy8, if set, copies rows of 8, 16 or 32 floats between strided
	// places (copyBlocks8).
	copy8 func(dst *float32, dstStride int, src *float32, srcStride int, rows, width int)
}

var goKernel = microKernel{name: "go", mr: 4, nr: 4, fn: kernel4x4Go}

// gemmKC bounds the k-block: a kc×NR panel of B (32 KiB for the AVX-512
// kernel) stays in the 48 KiB L1 cache while the kernel sweeps the A strips.
const gemmKC = 256

// kBlock is the length of every k-block but the last: k is cut into
// ceil(k/gemmKC) blocks of (nearly) equal length, so k = 288 gives two
// blocks of 144 rather than 256 and 32. It depends on k only.
func kBlock(k int) int { return ceilDiv(k, ceilDiv(k, gemmKC)) }

// gemmOp is one matrix product with its packing geometry.
type gemmOp struct {
	kern             microKernel
	transA, transB   bool
	m, n, k          int
	alpha, beta      float32
	a, b, c          []float32
	lda, ldb, ldc    int
	kc               int // kBlock(k)
	mStrips, nStrips int
}

func (g *gemmOp) set(kern microKernel, transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	*g = gemmOp{kern: kern, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, beta: beta,
		a: a, b: b, c: c, lda: lda, ldb: ldb, ldc: ldc, kc: kBlock(k),
		mStrips: ceilDiv(m, kern.mr), nStrips: ceilDiv(n, kern.nr)}
}

// packedA and packedB are the lengths of the packed operands.
func (g *gemmOp) packedA() int { return g.mStrips * g.kern.mr * g.k }
func (g *gemmOp) packedB() int { return g.nStrips * g.kern.nr * g.k }

// direct reports whether the kernel reads strip s of A in place rather than
// packed: A not transposed (each of the MR rows is then a contiguous run of
// k values) and the strip whole. The kernel's arithmetic is the same either
// way.
func (g *gemmOp) direct(s int) bool { return !g.transA && (s+1)*g.kern.mr <= g.m }

// packA writes strips [s0, s1) of op(A) into dst, except those read in
// place. Strip s occupies dst[s·k·MR:][:k·MR] as k groups of MR values (the
// strip transposed); rows past m are zero.
func (g *gemmOp) packA(dst []float32, s0, s1 int) {
	mr, k := g.kern.mr, g.k
	for s := s0; s < s1; s++ {
		if g.direct(s) {
			continue
		}
		strip := dst[s*k*mr : (s+1)*k*mr]
		i0 := s * mr
		rows := min(mr, g.m-i0)
		if g.transA {
			// op(A)[i][l] = a[l·lda + i]: MR contiguous values per l.
			if cp := g.kern.copy8; cp != nil && rows == mr && mr%8 == 0 {
				_ = g.a[(k-1)*g.lda+i0+mr-1]
				cp(&strip[0], mr, &g.a[i0], g.lda, k, mr/8)
				continue
			}
			for l := 0; l < k; l++ {
				d := strip[l*mr : (l+1)*mr]
				copy(d, g.a[l*g.lda+i0:][:rows])
				clear(d[rows:])
			}
			continue
		}
		for r := 0; r < rows; r++ {
			src := g.a[(i0+r)*g.lda:][:k]
			for l, v := range src {
				strip[l*mr+r] = v
			}
		}
		for r := rows; r < mr; r++ {
			for l := 0; l < k; l++ {
				strip[l*mr+r] = 0
			}
		}
	}
}

// packB writes strips [t0, t1) of op(B) into dst. Strip t occupies
// dst[t·k·NR:][:k·NR] as k rows of NR values; columns past n are zero.
func (g *gemmOp) packB(dst []float32, t0, t1 int) {
	nr, k := g.kern.nr, g.k
	for t := t0; t < t1; t++ {
		strip := dst[t*k*nr : (t+1)*k*nr]
		j0 := t * nr
		cols := min(nr, g.n-j0)
		if !g.transB {
			// op(B)[l][j] = b[l·ldb + j]: NR contiguous values per l.
			if cp := g.kern.copy8; cp != nil && cols == nr && nr%8 == 0 {
				_ = g.b[(k-1)*g.ldb+j0+nr-1]
				cp(&strip[0], nr, &g.b[j0], g.ldb, k, nr/8)
				continue
			}
			for l := 0; l < k; l++ {
				d := strip[l*nr : (l+1)*nr]
				copy(d, g.b[l*g.ldb+j0:][:cols])
				clear(d[cols:])
			}
			continue
		}
		c0, l0 := 0, 0
		if tr := g.kern.transpose8; tr != nil && k >= 8 {
			l0 = k &^ 7
			for ; c0+8 <= cols; c0 += 8 {
				_ = g.b[(j0+c0+7)*g.ldb+l0-1]
				tr(&strip[c0], nr, &g.b[(j0+c0)*g.ldb], g.ldb, k/8)
			}
		}
		for j := 0; j < cols; j++ {
			lo := l0
			if j >= c0 {
				lo = 0
			}
			src := g.b[(j0+j)*g.ldb:][:k]
			for l := lo; l < k; l++ {
				strip[l*nr+j] = src[l]
			}
		}
		for j := cols; j < nr; j++ {
			for l := 0; l < k; l++ {
				strip[l*nr+j] = 0
			}
		}
	}
}

// compute multiplies row strips [s0, s1) by column strips [t0, t1) of the
// packed operands into C, k-block by k-block. tile is MR·NR scratch for
// blocks of C cut by its edges: they are computed in full there, by the
// same kernel with the same arithmetic, and copied.
func (g *gemmOp) compute(ap, bp, tile []float32, s0, s1, t0, t1 int) {
	mr, nr, k, ldc := g.kern.mr, g.kern.nr, g.k, g.ldc
	tile = tile[:mr*nr]
	for k0 := 0; k0 < k; k0 += g.kc {
		kc := min(g.kc, k-k0)
		beta, betaZero := float32(1), 0
		if k0 == 0 {
			beta = g.beta
			if beta == 0 {
				betaZero = 1
			}
		}
		for t := t0; t < t1; t++ {
			bpan := bp[t*k*nr+k0*nr:][:kc*nr]
			j0 := t * nr
			cols := min(nr, g.n-j0)
			for s := s0; s < s1; s++ {
				i0 := s * mr
				rows := min(mr, g.m-i0)
				var a *float32
				aRow, aK := 1, mr
				if g.direct(s) {
					a = &g.a[i0*g.lda+k0 : (i0+mr-1)*g.lda+k0+kc][0]
					aRow, aK = g.lda, 1
				} else {
					a = &ap[s*k*mr+k0*mr : s*k*mr+(k0+kc)*mr][0]
				}
				if rows == mr && cols == nr {
					c := g.c[i0*ldc+j0:][:(mr-1)*ldc+nr]
					g.kern.fn(kc, a, aRow, aK, &bpan[0], &c[0], ldc, g.alpha, beta, betaZero)
					continue
				}
				if betaZero == 0 {
					for i := 0; i < rows; i++ {
						copy(tile[i*nr:][:cols], g.c[(i0+i)*ldc+j0:][:cols])
					}
				}
				g.kern.fn(kc, a, aRow, aK, &bpan[0], &tile[0], nr, g.alpha, beta, betaZero)
				for i := 0; i < rows; i++ {
					copy(g.c[(i0+i)*ldc+j0:][:cols], tile[i*nr:][:cols])
				}
			}
		}
	}
}

// gemmScratch is one worker's packing space.
type gemmScratch struct {
	a, b, tile alignedBuf
	attn       alignedBuf // AttentionBackward's datt
}

// alignedBuf is a float32 buffer whose data starts on a 64-byte boundary (a
// cache line, and one AVX-512 register), grown on demand and never shrunk.
type alignedBuf struct {
	raw []float32
	buf []float32
}

// get returns n floats, reallocating only when the buffer is too small.
func (b *alignedBuf) get(n int) []float32 {
	if cap(b.buf) < n {
		b.raw = make([]float32, n+15)
		off := 0
		if r := uintptr(unsafe.Pointer(unsafe.SliceData(b.raw))) % 64; r != 0 {
			off = int(64-r) / 4
		}
		b.buf = b.raw[off : off+n : off+n]
	}
	return b.buf[:n]
}

// ---- the parallel driver ----

// gemmPhase says what an item of gemmTask does.
type gemmPhase int

const (
	phasePack    gemmPhase = iota // pack groups of strips of A (first) and B
	phaseCompute                  // compute one tile of C
	phaseMatrix                   // pack and compute one whole matrix of a batch
)

// gemmTask runs one phase of a GEMM on the team.
type gemmTask struct {
	phase gemmPhase
	op    gemmOp
	cpu   *CPU

	ap, bp []float32 // packed operands shared by the workers

	// phasePack: items [0, itemsA) pack groupA strips of A each, the rest
	// groupB strips of B.
	packA, packB   bool
	groupA, groupB int
	itemsA         int

	// phaseCompute: tiles of tileM×tileN strips, tilesN across.
	tileM, tileN, tilesN int

	// phaseMatrix: matrix i uses a[i·sa:], b[i·sb:] and c[i·sc:]; a stride
	// of 0 with shared set means the operand is already packed in ap or bp.
	a, b, c          []float32
	sa, sb, sc       int
	sharedA, sharedB bool
	lenA, lenB, lenC int
}

func (t *gemmTask) do(item, worker int) {
	switch t.phase {
	case phasePack:
		if item < t.itemsA {
			s0 := item * t.groupA
			t.op.packA(t.ap, s0, min(s0+t.groupA, t.op.mStrips))
			return
		}
		t0 := (item - t.itemsA) * t.groupB
		t.op.packB(t.bp, t0, min(t0+t.groupB, t.op.nStrips))
	case phaseCompute:
		s0 := (item / t.tilesN) * t.tileM
		t0 := (item % t.tilesN) * t.tileN
		tile := t.cpu.scratch[worker].tile.get(t.op.kern.mr * t.op.kern.nr)
		t.op.compute(t.ap, t.bp, tile, s0, min(s0+t.tileM, t.op.mStrips), t0, min(t0+t.tileN, t.op.nStrips))
	case phaseMatrix:
		op := t.op // a copy: workers run matrices concurrently
		op.a = sliceFrom(t.a, item*t.sa, t.lenA)
		op.b = sliceFrom(t.b, item*t.sb, t.lenB)
		op.c = t.c[item*t.sc:][:t.lenC]
		t.cpu.gemmSerial(&op, worker, t.ap, t.bp)
	}
}

// sliceFrom returns s[off:off+n], or nil when n is 0 (an unread operand).
func sliceFrom(s []float32, off, n int) []float32 {
	if n == 0 {
		return nil
	}
	return s[off:][:n]
}

// reserve grows every worker's scratch to hold packed operands of a and b
// floats, a C tile, and att floats of attention scratch. Kernels call it,
// holding c.mu, before they start workers: which worker runs which item is
// decided at run time, so growing scratch inside an item would allocate in
// whichever later call first gives that worker a larger item.
func (c *CPU) reserve(a, b, att int) {
	for i := range c.scratch {
		sc := &c.scratch[i]
		sc.a.get(a)
		sc.b.get(b)
		sc.tile.get(c.kern.mr * c.kern.nr)
		sc.attn.get(att)
	}
}

// gemmSerial computes op on the calling goroutine with worker's scratch.
// Operands already packed are passed as ap or bp (nil: pack them here).
func (c *CPU) gemmSerial(op *gemmOp, worker int, ap, bp []float32) {
	sc := &c.scratch[worker]
	if ap == nil {
		ap = sc.a.get(op.packedA())
		op.packA(ap, 0, op.mStrips)
	}
	if bp == nil {
		bp = sc.b.get(op.packedB())
		op.packB(bp, 0, op.nStrips)
	}
	op.compute(ap, bp, sc.tile.get(op.kern.mr*op.kern.nr), 0, op.mStrips, 0, op.nStrips)
}

// packItems is the number of floats one packing item copies at least.
const packItems = 1 << 15

// gemmParallel computes one product with all workers: it packs both operands
// in full (phase 1), then computes tiles of C (phase 2). A nil a or b means
// that operand is already packed in ap or bp.
func (c *CPU) gemmParallel(op *gemmOp, ap, bp []float32) {
	t := &c.gemm
	packA, packB := ap == nil, bp == nil
	if packA {
		ap = c.packA.get(op.packedA())
	}
	if packB {
		bp = c.packB.get(op.packedB())
	}
	*t = gemmTask{phase: phasePack, op: *op, cpu: c, ap: ap, bp: bp}
	if packA || packB {
		items := 0
		if packA {
			t.groupA = max(1, packItems/(op.k*op.kern.mr))
			t.itemsA = ceilDiv(op.mStrips, t.groupA)
			items += t.itemsA
		}
		if packB {
			t.groupB = max(1, packItems/(op.k*op.kern.nr))
			items += ceilDiv(op.nStrips, t.groupB)
		}
		c.run(t, items, op.packedA()+op.packedB())
	}
	t.phase = phaseCompute
	c.reserve(0, 0, 0)
	t.tileM, t.tileN = gemmTiles(op, c.workers)
	t.tilesN = ceilDiv(op.nStrips, t.tileN)
	c.run(t, ceilDiv(op.mStrips, t.tileM)*t.tilesN, op.m*op.n*op.k)
	*t = gemmTask{}
}

// gemmTiles picks the tile of C, in strips, that one item computes: at most
// about 192×384 (the A block and the C tile then stay in L2), halved until
// there are 4 items per worker or the tiles are one strip. Tiles change speed
// only, never results.
func gemmTiles(op *gemmOp, workers int) (tm, tn int) {
	mr, nr := op.kern.mr, op.kern.nr
	tm = min(op.mStrips, max(1, 192/mr))
	tn = min(op.nStrips, max(1, 384/nr))
	for ceilDiv(op.mStrips, tm)*ceilDiv(op.nStrips, tn) < 4*workers {
		switch {
		case tn > 1 && tn*nr >= tm*mr:
			tn = ceilDiv(tn, 2)
		case tm > 1:
			tm = ceilDiv(tm, 2)
		case tn > 1:
			tn = ceilDiv(tn, 2)
		default:
			return tm, tn
		}
	}
	return tm, tn
}

// Gemm implements Backend.
func (c *CPU) Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, cm []float32, ldc int) {
	c.GemmStridedBatched(transA, transB, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, cm, ldc, 0, 1)
}

// GemmStridedBatched implements Backend. A batch of at least as many matrices
// as workers runs one matrix per item, each packed and computed by one
// worker; smaller batches run matrix after matrix with all workers on each.
// An operand shared by the whole batch (stride 0) is packed once.
func (c *CPU) GemmStridedBatched(transA, transB bool, m, n, k int, alpha float32, a []float32, lda, strideA int, b []float32, ldb, strideB int, beta float32, cm []float32, ldc, strideC int, batch int) {
	checkGemm(transA, transB, m, n, k, a, lda, strideA, b, ldb, strideB, cm, ldc, strideC, batch)
	if m == 0 || n == 0 || batch == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		// BLAS semantics: A and B are not read, so an Inf in them cannot
		// turn into a NaN in C.
		for i := 0; i < batch; i++ {
			scaleRows(cm[i*strideC:], m, n, ldc, beta)
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gemmLocked(transA, transB, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, cm, ldc, strideC, batch)
}

// gemmLocked is GemmStridedBatched for checked arguments, m, n, k, batch and
// alpha non-zero, with c.mu held.
func (c *CPU) gemmLocked(transA, transB bool, m, n, k int, alpha float32, a []float32, lda, strideA int, b []float32, ldb, strideB int, beta float32, cm []float32, ldc, strideC int, batch int) {
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	lenA, lenB, lenC := (ar-1)*lda+ac, (br-1)*ldb+bc, (m-1)*ldc+n
	var op gemmOp
	op.set(c.kern, transA, transB, m, n, k, alpha, a[:lenA], lda, b[:lenB], ldb, beta, cm[:lenC], ldc)
	work := m * n * k
	if batch == 1 {
		if work < minParallelWork || c.workers == 1 {
			c.gemmSerial(&op, 0, nil, nil)
		} else {
			c.gemmParallel(&op, nil, nil)
		}
		return
	}

	// An operand shared by the batch is packed once, into the shared
	// buffers, and the matrices read it from there.
	var ap, bp []float32
	if strideA == 0 {
		ap = c.packA.get(op.packedA())
		op.packA(ap, 0, op.mStrips)
	}
	if strideB == 0 {
		bp = c.packB.get(op.packedB())
		op.packB(bp, 0, op.nStrips)
	}
	if batch >= c.workers || batch*work < minParallelWork {
		c.reserve(op.packedA(), op.packedB(), 0)
		t := &c.gemm
		*t = gemmTask{phase: phaseMatrix, op: op, cpu: c, ap: ap, bp: bp,
			a: a, b: b, c: cm, sa: strideA, sb: strideB, sc: strideC, lenA: lenA, lenB: lenB, lenC: lenC}
		c.run(t, batch, batch*work)
		*t = gemmTask{}
		return
	}
	for i := 0; i < batch; i++ {
		op.a, op.b, op.c = a[i*strideA:][:lenA], b[i*strideB:][:lenB], cm[i*strideC:][:lenC]
		if work < minParallelWork {
			c.gemmSerial(&op, 0, ap, bp)
		} else {
			c.gemmParallel(&op, ap, bp)
		}
	}
}

func checkGemm(transA, transB bool, m, n, k int, a []float32, lda, strideA int, b []float32, ldb, strideB int, c []float32, ldc, strideC int, batch int) {
	if m < 0 || n < 0 || k < 0 || batch < 0 {
		panic(fmt.Sprintf("model: Gemm: negative size m=%d n=%d k=%d batch=%d", m, n, k, batch))
	}
	// Rows and columns of A and B as stored.
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	checkMatrix("A", a, ar, ac, lda, strideA, batch)
	checkMatrix("B", b, br, bc, ldb, strideB, batch)
	checkMatrix("C", c, m, n, ldc, strideC, batch)
	if batch > 1 && m > 0 && n > 0 && strideC < (m-1)*ldc+n {
		panic(fmt.Sprintf("model: Gemm: strideC=%d makes the %d×%d outputs of a batch overlap", strideC, m, n))
	}
}

func checkMatrix(name string, x []float32, rows, cols, ld, stride, batch int) {
	if ld < max(cols, 1) {
		panic(fmt.Sprintf("model: Gemm: ld%s=%d < %d columns", name, ld, cols))
	}
	if stride < 0 {
		panic(fmt.Sprintf("model: Gemm: negative stride%s=%d", name, stride))
	}
	if batch > 0 && rows > 0 && cols > 0 {
		if need := (batch-1)*stride + (rows-1)*ld + cols; len(x) < need {
			panic(fmt.Sprintf("model: Gemm: %s has %d elements, want at least %d for %d matrices of %d×%d (stride %d, ld %d)",
				name, len(x), need, batch, rows, cols, stride, ld))
		}
	}
}

func scaleRows(c []float32, m, n, ldc int, beta float32) {
	if beta == 1 {
		return
	}
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row) // BLAS: C is not read, so a NaN in it does not survive
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}

// kernel4x4Go is the pure-Go micro-kernel (MR = NR = 4). Products are
// rounded before they are added (no fused multiply-add), on every platform.
func kernel4x4Go(kc int, a *float32, aRow, aK int, b, c *float32, ldc int, alpha, beta float32, betaZero int) {
	ap := unsafe.Slice(a, 3*aRow+(kc-1)*aK+1)
	bp := unsafe.Slice(b, 4*kc)
	var c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33 float32
	for l := 0; l < kc; l++ {
		bv := bp[4*l : 4*l+4 : 4*l+4]
		al := l * aK
		a0, a1, a2, a3 := ap[al], ap[al+aRow], ap[al+2*aRow], ap[al+3*aRow]
		b0, b1, b2, b3 := bv[0], bv[1], bv[2], bv[3]
		c00, c01, c02, c03 = c00+float32(a0*b0), c01+float32(a0*b1), c02+float32(a0*b2), c03+float32(a0*b3)
		c10, c11, c12, c13 = c10+float32(a1*b0), c11+float32(a1*b1), c12+float32(a1*b2), c13+float32(a1*b3)
		c20, c21, c22, c23 = c20+float32(a2*b0), c21+float32(a2*b1), c22+float32(a2*b2), c23+float32(a2*b3)
		c30, c31, c32, c33 = c30+float32(a3*b0), c31+float32(a3*b1), c32+float32(a3*b2), c33+float32(a3*b3)
	}
	cp := unsafe.Slice(c, 3*ldc+4)
	acc := [16]float32{c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33}
	for i := 0; i < 4; i++ {
		row := cp[i*ldc : i*ldc+4 : i*ldc+4]
		for j := range row {
			u := float32(alpha * acc[4*i+j])
			if betaZero == 0 {
				u = float32(beta*row[j]) + u
			}
			row[j] = u
		}
	}
}
