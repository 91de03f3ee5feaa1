package pager

import (
	"encoding/binary"
	"hash/crc64"

	"github.com/superfly/ltx"
)

// crc64ISO is the CRC-64 ISO table LTX page checksums use. MakeTable returns
// the shared, precomputed ISO table, which crc64.Update recognizes and runs
// with slicing-by-8.
var crc64ISO = crc64.MakeTable(crc64.ISO)

// PageChecksum equals ltx.ChecksumPage(pgno, data) (CRC-64 ISO over the
// big-endian page number then the data, with ltx.ChecksumFlag set) but
// allocates nothing. It is valid for any data length; LTX uses it on whole
// pages.
func PageChecksum(pgno uint32, data []byte) ltx.Checksum {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], pgno)
	crc := crc64.Update(0, crc64ISO, b[:])
	crc = crc64.Update(crc, crc64ISO, data)
	return ltx.ChecksumFlag | ltx.Checksum(crc)
}
