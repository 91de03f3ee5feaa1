package restore

import (
	"encoding/binary"
	"math/bits"

	"github.com/superfly/ltx"
)

// zeroPageSums gives ltx.ChecksumPage(pgno, page of zeros) for any pgno with
// a few XORs instead of hashing a page. A restored database has zeros where
// no file wrote a page (the lock page, and pages a truncation dropped that no
// later commit rewrote); a large sparse database has millions of them.
//
// Why it works: CRC-64 is affine over GF(2), so for messages of equal length
// crc(a^b) = crc(a) ^ crc(b) ^ crc(0). The message hashed for a page is the
// 4-byte big-endian pgno followed by the page; for a zero page it is the XOR
// of one single-bit message per set bit of pgno.
type zeroPageSums struct {
	zero uint64     // crc of pgno 0 followed by a zero page
	bit  [32]uint64 // crc of the message with only bit i of pgno set, XOR zero
}

func newZeroPageSums(pageSize uint32) *zeroPageSums {
	h := ltx.NewHasher()
	page := make([]byte, pageSize)
	crc := func(pgno uint32) uint64 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], pgno)
		h.Reset()
		h.Write(b[:])
		h.Write(page)
		return h.Sum64()
	}
	z := &zeroPageSums{zero: crc(0)}
	for i := range z.bit {
		z.bit[i] = crc(1<<i) ^ z.zero
	}
	return z
}

// sum returns the page checksum of page pgno filled with zeros.
func (z *zeroPageSums) sum(pgno uint32) ltx.Checksum {
	c := z.zero
	for ; pgno != 0; pgno &= pgno - 1 {
		c ^= z.bit[bits.TrailingZeros32(pgno)]
	}
	return ltx.ChecksumFlag | ltx.Checksum(c)
}
