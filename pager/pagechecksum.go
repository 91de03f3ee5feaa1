package pager

import (
	"encoding/binary"

	"github.com/superfly/ltx"

	"github.com/sqlfs/sqlfs/pager/crc64iso"
)

// PageChecksum equals ltx.ChecksumPage(pgno, data) (CRC-64 ISO over the
// big-endian page number then the data, with ltx.ChecksumFlag set) but
// allocates nothing. It is valid for any data length; LTX uses it on whole
// pages.
func PageChecksum(pgno uint32, data []byte) ltx.Checksum {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], pgno)
	crc := crc64iso.Update(crc64iso.Update(0, b[:]), data)
	return ltx.ChecksumFlag | ltx.Checksum(crc)
}
