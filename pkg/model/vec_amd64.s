//go:build !noasm

#include "textflag.h"

// Vectorised elementwise kernels (AVX-512F). n is a multiple of 16; the Go
// wrappers in vec_amd64.go pad the tail.

// GELU constants, in the order of geluConsts (vec_amd64.go): byte offsets.
#define C_ABS    0
#define C_RSQRT2 4
#define C_P      8
#define C_ONE    12
#define C_A5     16
#define C_A4     20
#define C_A3     24
#define C_A2     28
#define C_A1     32
#define C_LOG2E  36
#define C_LN2HI  40
#define C_LN2LO  44
#define C_E0     48
#define C_E1     52
#define C_E2     56
#define C_E3     60
#define C_E4     64
#define C_E5     68
#define C_HALF   72
#define C_PDF    76
#define C_MINARG 80
#define C_SIGN   84

// GELUCDF computes, for x in Z0, Φ(x) into Z8 and exp(−x²/2) into Z6, with
// the constants' base in SI; it clobbers Z1..Z7 and Z9.
//
//	az = |x|/√2; t = 1/(1 + p·az); tp = t·(a1 + t·(a2 + t·(a3 + t·(a4 + t·a5))))
//	e = exp(−az²) by Cephes: k = round(w·log2e), r = w − k·ln2, e = 2ᵏ·P(r)
//	erf(az) = 1 − tp·e; Φ = ½ + ½·sign(x)·erf(az)
#define GELUCDF \
	VPANDD.BCST  C_ABS(SI), Z0, Z1; \
	VMULPS.BCST  C_RSQRT2(SI), Z1, Z1; \
	VBROADCASTSS C_ONE(SI), Z2; \
	VFMADD231PS.BCST C_P(SI), Z1, Z2; \
	VBROADCASTSS C_ONE(SI), Z9; \
	VDIVPS       Z2, Z9, Z2; \
	VBROADCASTSS C_A5(SI), Z3; \
	VFMADD213PS.BCST C_A4(SI), Z2, Z3; \
	VFMADD213PS.BCST C_A3(SI), Z2, Z3; \
	VFMADD213PS.BCST C_A2(SI), Z2, Z3; \
	VFMADD213PS.BCST C_A1(SI), Z2, Z3; \
	VMULPS       Z2, Z3, Z3; \
	VMULPS       Z1, Z1, Z4; \
	VPXORD.BCST  C_SIGN(SI), Z4, Z4; \
	VMAXPS.BCST  C_MINARG(SI), Z4, Z4; \
	VMULPS.BCST  C_LOG2E(SI), Z4, Z5; \
	VRNDSCALEPS  $0, Z5, Z5; \
	VFNMADD231PS.BCST C_LN2HI(SI), Z5, Z4; \
	VFNMADD231PS.BCST C_LN2LO(SI), Z5, Z4; \
	VBROADCASTSS C_E0(SI), Z6; \
	VFMADD213PS.BCST C_E1(SI), Z4, Z6; \
	VFMADD213PS.BCST C_E2(SI), Z4, Z6; \
	VFMADD213PS.BCST C_E3(SI), Z4, Z6; \
	VFMADD213PS.BCST C_E4(SI), Z4, Z6; \
	VFMADD213PS.BCST C_E5(SI), Z4, Z6; \
	VMULPS       Z4, Z4, Z7; \
	VFMADD213PS  Z4, Z7, Z6; \
	VADDPS.BCST  C_ONE(SI), Z6, Z6; \
	VSCALEFPS    Z5, Z6, Z6; \
	VBROADCASTSS C_ONE(SI), Z8; \
	VFNMADD231PS Z6, Z3, Z8; \
	VPANDD.BCST  C_SIGN(SI), Z0, Z9; \
	VPXORD       Z9, Z8, Z8; \
	VBROADCASTSS C_HALF(SI), Z9; \
	VFMADD213PS  Z9, Z9, Z8

// func geluFwdAVX512(dst, x *float32, n int, consts *float32)
TEXT ·geluFwdAVX512(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ x+8(FP), AX
	MOVQ n+16(FP), CX
	MOVQ consts+24(FP), SI
	SHRQ $4, CX
	JZ   gfdone

gfloop:
	VMOVUPS (AX), Z0
	GELUCDF
	VMULPS  Z8, Z0, Z8
	VMOVUPS Z8, (DI)
	ADDQ    $64, AX
	ADDQ    $64, DI
	DECQ    CX
	JNZ     gfloop

gfdone:
	VZEROUPPER
	RET

// func geluBwdAVX512(dst, dout, x *float32, n int, consts *float32)
//
// dst = dout·(Φ(x) + x·φ(x)), φ(x) = exp(−x²/2)/√(2π).
TEXT ·geluBwdAVX512(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ dout+8(FP), BX
	MOVQ x+16(FP), AX
	MOVQ n+24(FP), CX
	MOVQ consts+32(FP), SI
	SHRQ $4, CX
	JZ   gbdone

gbloop:
	VMOVUPS (AX), Z0
	GELUCDF
	VMULPS.BCST C_PDF(SI), Z6, Z6
	VFMADD231PS Z6, Z0, Z8
	VMULPS      (BX), Z8, Z8
	VMOVUPS     Z8, (DI)
	ADDQ        $64, AX
	ADDQ        $64, BX
	ADDQ        $64, DI
	DECQ        CX
	JNZ         gbloop

gbdone:
	VZEROUPPER
	RET

// EXPZ4 sets Z6 = exp(Z4) for Z4 ≤ 0 (clamped below at −88), with the
// constants' base in SI; it clobbers Z4, Z5 and Z7.
#define EXPZ4 \
	VMAXPS.BCST  C_MINARG(SI), Z4, Z4; \
	VMULPS.BCST  C_LOG2E(SI), Z4, Z5; \
	VRNDSCALEPS  $0, Z5, Z5; \
	VFNMADD231PS.BCST C_LN2HI(SI), Z5, Z4; \
	VFNMADD231PS.BCST C_LN2LO(SI), Z5, Z4; \
	VBROADCASTSS C_E0(SI), Z6; \
	VFMADD213PS.BCST C_E1(SI), Z4, Z6; \
	VFMADD213PS.BCST C_E2(SI), Z4, Z6; \
	VFMADD213PS.BCST C_E3(SI), Z4, Z6; \
	VFMADD213PS.BCST C_E4(SI), Z4, Z6; \
	VFMADD213PS.BCST C_E5(SI), Z4, Z6; \
	VMULPS       Z4, Z4, Z7; \
	VFMADD213PS  Z4, Z7, Z6; \
	VADDPS.BCST  C_ONE(SI), Z6, Z6; \
	VSCALEFPS    Z5, Z6, Z6

// func expSubAVX512(dst, src *float32, n int, shift float32, consts *float32) float32
//
// dst[i] = exp(src[i] − shift) for i < n, and returns their sum: 16 lane
// sums in index order, then the lanes added in a fixed order. Arguments
// must be ≤ 0 (shift is the maximum), as in a softmax.
TEXT ·expSubAVX512(SB), NOSPLIT, $0-44
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), AX
	MOVQ n+16(FP), CX
	MOVQ consts+32(FP), SI
	VBROADCASTSS shift+24(FP), Z1
	VPXORD Z8, Z8, Z8
	MOVQ CX, DX
	SHRQ $4, CX
	JZ   estail

esloop:
	VMOVUPS (AX), Z4
	VSUBPS  Z1, Z4, Z4
	EXPZ4
	VMOVUPS Z6, (DI)
	VADDPS  Z6, Z8, Z8
	ADDQ    $64, AX
	ADDQ    $64, DI
	DECQ    CX
	JNZ     esloop

estail:
	ANDQ $15, DX
	JZ   essum
	// K1 = the low DX lanes.
	MOVQ  $1, BX
	MOVQ  DX, CX
	SHLQ  CX, BX
	DECQ  BX
	KMOVW BX, K1
	VMOVUPS.Z (AX), K1, Z4
	VSUBPS  Z1, Z4, Z4
	EXPZ4
	VMOVUPS Z6, K1, (DI)
	VADDPS  Z6, Z8, K1, Z8

essum:
	// Fold 16 lanes to 1: halves added pairwise, the same order every time.
	VEXTRACTF32X8 $1, Z8, Y9
	VADDPS        Y9, Y8, Y8
	VEXTRACTF128  $1, Y8, X9
	VADDPS        X9, X8, X8
	VPERMILPS     $0x4E, X8, X9
	VADDPS        X9, X8, X8
	VPERMILPS     $0xB1, X8, X9
	VADDSS        X9, X8, X8
	MOVSS         X8, ret+40(FP)
	VZEROUPPER
	RET
