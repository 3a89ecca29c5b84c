#include "textflag.h"

// func foldAVX512(crc uint32, p []byte, out *[16]byte, keys *[12]uint64)
//
// Z0..Z3 hold sixteen 128-bit accumulators over p's 256-byte blocks. Each
// step multiplies every lane's two 64-bit halves by the constants for 2048
// bits (keys[0:2]) and xors both products with the next block's lane.
TEXT ·foldAVX512(SB), NOSPLIT, $0-48
	MOVL crc+0(FP), AX
	MOVQ p_base+8(FP), SI
	MOVQ p_len+16(FP), CX
	MOVQ out+32(FP), DI
	MOVQ keys+40(FP), DX

	VMOVDQU64 0(SI), Z0
	VMOVDQU64 64(SI), Z1
	VMOVDQU64 128(SI), Z2
	VMOVDQU64 192(SI), Z3
	VMOVD AX, X4
	VPXORQ Z4, Z0, Z0
	VBROADCASTI32X4 0(DX), Z8
	ADDQ $256, SI
	SUBQ $256, CX

loop:
	CMPQ CX, $256
	JB   reduce
	VPCLMULQDQ $0x00, Z8, Z0, Z4
	VPCLMULQDQ $0x11, Z8, Z0, Z0
	VPCLMULQDQ $0x00, Z8, Z1, Z5
	VPCLMULQDQ $0x11, Z8, Z1, Z1
	VPCLMULQDQ $0x00, Z8, Z2, Z6
	VPCLMULQDQ $0x11, Z8, Z2, Z2
	VPCLMULQDQ $0x00, Z8, Z3, Z7
	VPCLMULQDQ $0x11, Z8, Z3, Z3
	VMOVDQU64 0(SI), Z9
	VMOVDQU64 64(SI), Z10
	VMOVDQU64 128(SI), Z11
	VMOVDQU64 192(SI), Z12
	VPTERNLOGQ $0x96, Z9, Z4, Z0
	VPTERNLOGQ $0x96, Z10, Z5, Z1
	VPTERNLOGQ $0x96, Z11, Z6, Z2
	VPTERNLOGQ $0x96, Z12, Z7, Z3
	ADDQ $256, SI
	SUBQ $256, CX
	JMP  loop

reduce:
	// Fold Z0 into Z1, Z1 into Z2, Z2 into Z3: each 512 bits on.
	VBROADCASTI32X4 16(DX), Z8
	VPCLMULQDQ $0x00, Z8, Z0, Z4
	VPCLMULQDQ $0x11, Z8, Z0, Z0
	VPTERNLOGQ $0x96, Z4, Z0, Z1
	VPCLMULQDQ $0x00, Z8, Z1, Z4
	VPCLMULQDQ $0x11, Z8, Z1, Z1
	VPTERNLOGQ $0x96, Z4, Z1, Z2
	VPCLMULQDQ $0x00, Z8, Z2, Z4
	VPCLMULQDQ $0x11, Z8, Z2, Z2
	VPTERNLOGQ $0x96, Z4, Z2, Z3

	// Z3's lanes lie 384, 256, 128 and 0 bits before the end: move the
	// first three there (keys[4:12], the last pair zero) and xor all four.
	VMOVDQU64 32(DX), Z8
	VPCLMULQDQ $0x00, Z8, Z3, Z4
	VPCLMULQDQ $0x11, Z8, Z3, Z5
	VEXTRACTI64X2 $3, Z3, X6
	VPTERNLOGQ $0x96, Z6, Z5, Z4
	VEXTRACTI64X4 $1, Z4, Y5
	VPXORQ Y5, Y4, Y4
	VEXTRACTI128 $1, Y4, X5
	VPXOR X5, X4, X4
	VMOVDQU X4, 0(DI)
	VZEROUPPER
	RET
