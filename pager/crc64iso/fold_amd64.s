#include "textflag.h"

// Folding, as in Intel's "Fast CRC Computation for Generic Polynomials Using
// PCLMULQDQ": four 16-byte lanes, each multiplied forward by 512 bits and
// XORed with the next 64 bytes; then the lanes are folded into the last one,
// and that one forward over the remaining 16-byte blocks. A lane's low
// quadword is the higher-degree half of its polynomial (the bytes come first).

// func fold(reg uint64, p []byte, k *[8]uint64, rem *[16]byte)
TEXT ·fold(SB), NOSPLIT, $0-48
	MOVQ reg+0(FP), AX
	MOVQ p_base+8(FP), SI
	MOVQ p_len+16(FP), CX
	MOVQ k+32(FP), DX
	MOVQ rem+40(FP), DI

	MOVOU 0(SI), X0
	MOVOU 16(SI), X1
	MOVOU 32(SI), X2
	MOVOU 48(SI), X3
	MOVQ  AX, X4
	PXOR  X4, X0
	ADDQ  $64, SI
	SUBQ  $64, CX
	MOVOU 0(DX), X8 // x^575, x^511

loop64:
	CMPQ CX, $64
	JB   reduce
	MOVO X0, X4
	MOVO X1, X5
	MOVO X2, X6
	MOVO X3, X7
	PCLMULQDQ $0x00, X8, X0
	PCLMULQDQ $0x11, X8, X4
	PCLMULQDQ $0x00, X8, X1
	PCLMULQDQ $0x11, X8, X5
	PCLMULQDQ $0x00, X8, X2
	PCLMULQDQ $0x11, X8, X6
	PCLMULQDQ $0x00, X8, X3
	PCLMULQDQ $0x11, X8, X7
	MOVOU 0(SI), X9
	MOVOU 16(SI), X10
	MOVOU 32(SI), X11
	MOVOU 48(SI), X12
	PXOR X4, X0
	PXOR X5, X1
	PXOR X6, X2
	PXOR X7, X3
	PXOR X9, X0
	PXOR X10, X1
	PXOR X11, X2
	PXOR X12, X3
	ADDQ $64, SI
	SUBQ $64, CX
	JMP  loop64

reduce:
	MOVOU 16(DX), X8 // x^447, x^383: lane 0 onto lane 3
	MOVO  X0, X4
	PCLMULQDQ $0x00, X8, X0
	PCLMULQDQ $0x11, X8, X4
	PXOR  X0, X3
	PXOR  X4, X3
	MOVOU 32(DX), X8 // x^319, x^255: lane 1
	MOVO  X1, X4
	PCLMULQDQ $0x00, X8, X1
	PCLMULQDQ $0x11, X8, X4
	PXOR  X1, X3
	PXOR  X4, X3
	MOVOU 48(DX), X8 // x^191, x^127: lane 2, then 16-byte steps
	MOVO  X2, X4
	PCLMULQDQ $0x00, X8, X2
	PCLMULQDQ $0x11, X8, X4
	PXOR  X2, X3
	PXOR  X4, X3

loop16:
	CMPQ CX, $16
	JB   done
	MOVO X3, X4
	PCLMULQDQ $0x00, X8, X3
	PCLMULQDQ $0x11, X8, X4
	MOVOU 0(SI), X9
	PXOR X4, X3
	PXOR X9, X3
	ADDQ $16, SI
	SUBQ $16, CX
	JMP  loop16

done:
	MOVOU X3, 0(DI)
	RET
