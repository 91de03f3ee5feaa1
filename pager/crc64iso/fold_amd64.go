package crc64iso

import "golang.org/x/sys/cpu"

var haveFold = cpu.X86.HasPCLMULQDQ && cpu.X86.HasSSE41

// fold folds p (a multiple of 16 bytes, at least minFold) into 16 bytes
// congruent to it modulo P, with reg, the CRC register, XORed into its first
// eight bytes, and stores them in rem.
//
//go:noescape
func fold(reg uint64, p []byte, k *[8]uint64, rem *[16]byte)
