//go:build !amd64

package crc64iso

const haveFold = false

func fold(reg uint64, p []byte, k *[8]uint64, rem *[16]byte) { panic("crc64iso: no fold") }
