//go:build !noasm

#include "textflag.h"

// The GEMM micro-kernels (see gemm.go). Each multiplies an MR×kc panel of
// op(A) by a packed kc×NR panel of op(B) (kc rows of NR values),
// accumulating every element of the MR×NR product in a register with one
// fused multiply-add per k, in k order. Element (r, l) of the A panel is at
// a + r·aRow + l·aK (in elements): a packed panel has aRow = 1, aK = MR; a
// row-major A read in place has aRow = lda, aK = 1. The kernel then writes
//
//	C = alpha·acc                 if betaZero != 0 (C is not read)
//	C = fma(beta, C, alpha·acc)   otherwise
//
// to the MR rows of NR values at c, ldc elements apart. The arithmetic of an
// element never depends on where the tile lies, who computes it, or how A is
// laid out, which is what keeps the GEMM deterministic.
//
// Registers: AX and R12 walk rows 0 and 4 of A, R10 = aRow and R11 = 3·aRow
// in bytes (rows r = 0..3 at (AX)(·), 4..7 at (R12)(·)), R13 = aK in bytes,
// BX walks B, CX counts k, DX walks C, R8 = ldc in bytes, R9 = betaZero.

#define SETUP_A \
	MOVQ a+8(FP), AX; \
	MOVQ aRow+16(FP), R10; \
	SHLQ $2, R10; \
	LEAQ (R10)(R10*2), R11; \
	LEAQ (AX)(R10*4), R12; \
	MOVQ aK+24(FP), R13; \
	SHLQ $2, R13; \
	MOVQ kc+0(FP), CX; \
	MOVQ b+32(FP), BX; \
	MOVQ c+40(FP), DX; \
	MOVQ ldc+48(FP), R8; \
	SHLQ $2, R8; \
	MOVQ betaZero+64(FP), R9

// ---- AVX-512: MR = 8, NR = 32; accumulators Z16..Z31 ----

// ROW512 multiplies row r of the A panel (at addr) into the accumulators of
// that row.
#define ROW512(addr, bz, acc0, acc1) \
	VBROADCASTSS addr, bz; \
	VFMADD231PS  Z0, bz, acc0; \
	VFMADD231PS  Z1, bz, acc1

#define STORE512(acc0, acc1) \
	VMULPS      Z2, acc0, acc0; \
	VMULPS      Z2, acc1, acc1; \
	TESTQ       R9, R9; \
	JNZ         3(PC); \
	VFMADD231PS (DX), Z3, acc0; \
	VFMADD231PS 64(DX), Z3, acc1; \
	VMOVUPS     acc0, (DX); \
	VMOVUPS     acc1, 64(DX); \
	ADDQ        R8, DX

// func kernel8x32AVX512(kc int, a *float32, aRow, aK int, b, c *float32, ldc int, alpha, beta float32, betaZero int)
TEXT ·kernel8x32AVX512(SB), NOSPLIT, $0-72
	SETUP_A

	VPXORD Z16, Z16, Z16
	VPXORD Z17, Z17, Z17
	VPXORD Z18, Z18, Z18
	VPXORD Z19, Z19, Z19
	VPXORD Z20, Z20, Z20
	VPXORD Z21, Z21, Z21
	VPXORD Z22, Z22, Z22
	VPXORD Z23, Z23, Z23
	VPXORD Z24, Z24, Z24
	VPXORD Z25, Z25, Z25
	VPXORD Z26, Z26, Z26
	VPXORD Z27, Z27, Z27
	VPXORD Z28, Z28, Z28
	VPXORD Z29, Z29, Z29
	VPXORD Z30, Z30, Z30
	VPXORD Z31, Z31, Z31

	TESTQ CX, CX
	JZ    store512

loop512:
	VMOVUPS (BX), Z0
	VMOVUPS 64(BX), Z1
	ROW512((AX), Z4, Z16, Z17)
	ROW512((AX)(R10*1), Z5, Z18, Z19)
	ROW512((AX)(R10*2), Z6, Z20, Z21)
	ROW512((AX)(R11*1), Z7, Z22, Z23)
	ROW512((R12), Z8, Z24, Z25)
	ROW512((R12)(R10*1), Z9, Z26, Z27)
	ROW512((R12)(R10*2), Z10, Z28, Z29)
	ROW512((R12)(R11*1), Z11, Z30, Z31)
	ADDQ R13, AX
	ADDQ R13, R12
	ADDQ $128, BX
	DECQ CX
	JNZ  loop512

store512:
	VBROADCASTSS alpha+56(FP), Z2
	VBROADCASTSS beta+60(FP), Z3
	STORE512(Z16, Z17)
	STORE512(Z18, Z19)
	STORE512(Z20, Z21)
	STORE512(Z22, Z23)
	STORE512(Z24, Z25)
	STORE512(Z26, Z27)
	STORE512(Z28, Z29)
	STORE512(Z30, Z31)
	VZEROUPPER
	RET

// ---- AVX2 + FMA: MR = 6, NR = 16; accumulators Y4..Y15 ----

#define ROW256(addr, acc0, acc1) \
	VBROADCASTSS addr, Y2; \
	VFMADD231PS  Y0, Y2, acc0; \
	VFMADD231PS  Y1, Y2, acc1

#define STORE256(acc0, acc1) \
	VMULPS      Y2, acc0, acc0; \
	VMULPS      Y2, acc1, acc1; \
	TESTQ       R9, R9; \
	JNZ         3(PC); \
	VFMADD231PS (DX), Y3, acc0; \
	VFMADD231PS 32(DX), Y3, acc1; \
	VMOVUPS     acc0, (DX); \
	VMOVUPS     acc1, 32(DX); \
	ADDQ        R8, DX

// func kernel6x16AVX2(kc int, a *float32, aRow, aK int, b, c *float32, ldc int, alpha, beta float32, betaZero int)
TEXT ·kernel6x16AVX2(SB), NOSPLIT, $0-72
	SETUP_A

	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	VXORPS Y12, Y12, Y12
	VXORPS Y13, Y13, Y13
	VXORPS Y14, Y14, Y14
	VXORPS Y15, Y15, Y15

	TESTQ CX, CX
	JZ    store256

loop256:
	VMOVUPS (BX), Y0
	VMOVUPS 32(BX), Y1
	ROW256((AX), Y4, Y5)
	ROW256((AX)(R10*1), Y6, Y7)
	ROW256((AX)(R10*2), Y8, Y9)
	ROW256((AX)(R11*1), Y10, Y11)
	ROW256((R12), Y12, Y13)
	ROW256((R12)(R10*1), Y14, Y15)
	ADDQ R13, AX
	ADDQ R13, R12
	ADDQ $64, BX
	DECQ CX
	JNZ  loop256

store256:
	VBROADCASTSS alpha+56(FP), Y2
	VBROADCASTSS beta+60(FP), Y3
	STORE256(Y4, Y5)
	STORE256(Y6, Y7)
	STORE256(Y8, Y9)
	STORE256(Y10, Y11)
	STORE256(Y12, Y13)
	STORE256(Y14, Y15)
	VZEROUPPER
	RET

// ---- packing: 8×8 transposes ----

// func transpose8x8(dst *float32, dstStride int, src *float32, srcStride int, blocks int)
//
// For b in [0, blocks): the 8×8 block of src at columns [8b, 8b+8) of its 8
// rows (srcStride elements apart) is written transposed to rows [8b, 8b+8)
// of dst (dstStride elements apart), 8 values each. Needs AVX.
TEXT ·transpose8x8(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ dstStride+8(FP), R11
	SHLQ $2, R11
	MOVQ src+16(FP), SI
	MOVQ srcStride+24(FP), R8
	SHLQ $2, R8
	MOVQ blocks+32(FP), CX
	LEAQ (R8)(R8*2), R9  // 3 rows of src
	LEAQ (R11)(R11*2), R12 // 3 rows of dst
	LEAQ (SI)(R8*4), R10 // src row 4
	TESTQ CX, CX
	JZ    tdone

tloop:
	VMOVUPS (SI), Y0
	VMOVUPS (SI)(R8*1), Y1
	VMOVUPS (SI)(R8*2), Y2
	VMOVUPS (SI)(R9*1), Y3
	VMOVUPS (R10), Y4
	VMOVUPS (R10)(R8*1), Y5
	VMOVUPS (R10)(R8*2), Y6
	VMOVUPS (R10)(R9*1), Y7

	VUNPCKLPS Y1, Y0, Y8
	VUNPCKHPS Y1, Y0, Y9
	VUNPCKLPS Y3, Y2, Y10
	VUNPCKHPS Y3, Y2, Y11
	VUNPCKLPS Y5, Y4, Y12
	VUNPCKHPS Y5, Y4, Y13
	VUNPCKLPS Y7, Y6, Y14
	VUNPCKHPS Y7, Y6, Y15

	VSHUFPS $0x44, Y10, Y8, Y0
	VSHUFPS $0xEE, Y10, Y8, Y1
	VSHUFPS $0x44, Y11, Y9, Y2
	VSHUFPS $0xEE, Y11, Y9, Y3
	VSHUFPS $0x44, Y14, Y12, Y4
	VSHUFPS $0xEE, Y14, Y12, Y5
	VSHUFPS $0x44, Y15, Y13, Y6
	VSHUFPS $0xEE, Y15, Y13, Y7

	VPERM2F128 $0x20, Y4, Y0, Y8
	VPERM2F128 $0x20, Y5, Y1, Y9
	VPERM2F128 $0x20, Y6, Y2, Y10
	VPERM2F128 $0x20, Y7, Y3, Y11
	VPERM2F128 $0x31, Y4, Y0, Y12
	VPERM2F128 $0x31, Y5, Y1, Y13
	VPERM2F128 $0x31, Y6, Y2, Y14
	VPERM2F128 $0x31, Y7, Y3, Y15

	LEAQ    (DI)(R11*4), DX
	VMOVUPS Y8, (DI)
	VMOVUPS Y9, (DI)(R11*1)
	VMOVUPS Y10, (DI)(R11*2)
	VMOVUPS Y11, (DI)(R12*1)
	VMOVUPS Y12, (DX)
	VMOVUPS Y13, (DX)(R11*1)
	VMOVUPS Y14, (DX)(R11*2)
	VMOVUPS Y15, (DX)(R12*1)

	ADDQ $32, SI
	ADDQ $32, R10
	LEAQ (DX)(R11*4), DI
	DECQ CX
	JNZ  tloop

tdone:
	VZEROUPPER
	RET

// func copyBlocks8(dst *float32, dstStride int, src *float32, srcStride int, rows, width int)
//
// Copies rows of width·8 floats from src to dst, the rows srcStride and
// dstStride elements apart. width is 1, 2 or 4. Needs AVX.
TEXT ·copyBlocks8(SB), NOSPLIT, $0-48
	MOVQ dst+0(FP), DI
	MOVQ dstStride+8(FP), R11
	SHLQ $2, R11
	MOVQ src+16(FP), SI
	MOVQ srcStride+24(FP), R8
	SHLQ $2, R8
	MOVQ rows+32(FP), CX
	MOVQ width+40(FP), DX
	TESTQ CX, CX
	JZ    cdone
	CMPQ  DX, $2
	JEQ   c2
	JGT   c4

c1:
	VMOVUPS (SI), Y0
	VMOVUPS Y0, (DI)
	ADDQ    R8, SI
	ADDQ    R11, DI
	DECQ    CX
	JNZ     c1
	JMP     cdone

c2:
	VMOVUPS (SI), Y0
	VMOVUPS 32(SI), Y1
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	ADDQ    R8, SI
	ADDQ    R11, DI
	DECQ    CX
	JNZ     c2
	JMP     cdone

c4:
	VMOVUPS (SI), Y0
	VMOVUPS 32(SI), Y1
	VMOVUPS 64(SI), Y2
	VMOVUPS 96(SI), Y3
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	ADDQ    R8, SI
	ADDQ    R11, DI
	DECQ    CX
	JNZ     c4

cdone:
	VZEROUPPER
	RET

// func fmaPeakAVX512(n int)
//
// n iterations of 12 independent 512-bit FMAs (24 accumulator-register
// chains would not be faster: 12 cover the FMA latency on two pipes): the
// machine's peak single-precision rate, for BenchmarkPeak.
TEXT ·fmaPeakAVX512(SB), NOSPLIT, $0-8
	MOVQ   n+0(FP), CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	VPXORD Z8, Z8, Z8
	VPXORD Z9, Z9, Z9
	VPXORD Z10, Z10, Z10
	VPXORD Z11, Z11, Z11
	TESTQ  CX, CX
	JZ     pdone

ploop:
	VFMADD231PS Z30, Z31, Z0
	VFMADD231PS Z30, Z31, Z1
	VFMADD231PS Z30, Z31, Z2
	VFMADD231PS Z30, Z31, Z3
	VFMADD231PS Z30, Z31, Z4
	VFMADD231PS Z30, Z31, Z5
	VFMADD231PS Z30, Z31, Z6
	VFMADD231PS Z30, Z31, Z7
	VFMADD231PS Z30, Z31, Z8
	VFMADD231PS Z30, Z31, Z9
	VFMADD231PS Z30, Z31, Z10
	VFMADD231PS Z30, Z31, Z11
	DECQ        CX
	JNZ         ploop

pdone:
	VZEROUPPER
	RET
