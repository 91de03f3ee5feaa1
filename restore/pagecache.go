package restore

import (
	"sync/atomic"
)

// slab is the pages decoded from one ranged read, in one buffer: page i
// (pgnos[i]) at buf[i*pageSize:], with its CRC-64 in crcs[i]. Pages in it
// are never modified while anyone holds it: readers copy out of them.
//
// A slab is reference counted so its buffer can be reused: the LRU holds one
// reference while the slab is in it, and every page handed out by get (or
// by a fetch) holds one until released. The last release returns a
// full-size buffer to the free list. A holder that never releases (an error
// path) only costs the reuse: the buffer then goes to the garbage
// collector. Releasing more often than holding would hand a buffer in use
// to another fetch, so every cachedPage is released at most once.
type slab struct {
	buf   []byte
	pgnos []uint32 // ascending
	crcs  []uint64
	refs  atomic.Int32

	prev, next *slab // LRU links, towards the most and the least recently used
	inLRU      bool  // added to the LRU (it may have left it since)
}

// cachedPage is one decoded page, the CRC-64 of its bytes, and the slab it
// lies in (nil: a page that is not reference counted, such as zeros).
type cachedPage struct {
	data []byte
	crc  uint64
	slab *slab
}

// release drops the reference p holds on its slab.
func (p cachedPage) release() {
	if p.slab != nil {
		p.slab.release()
	}
}

func (b *slab) release() {
	switch n := b.refs.Add(-1); {
	case n < 0:
		panic("restore: slab released more often than held")
	case n == 0:
		putSlab(b.buf)
	}
}

// page returns page i of the slab, without taking a reference.
func (b *slab) page(i int, pageSize int) cachedPage {
	return cachedPage{data: b.buf[i*pageSize : (i+1)*pageSize : (i+1)*pageSize], crc: b.crcs[i], slab: b}
}

// index returns where pgno is in b.
func (b *slab) index(pgno uint32) int {
	if i := int(pgno - b.pgnos[0]); i < len(b.pgnos) && b.pgnos[i] == pgno {
		return i // consecutive pages, the common case
	}
	lo, hi := 0, len(b.pgnos)
	for lo < hi {
		m := (lo + hi) / 2
		if b.pgnos[m] < pgno {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Buffers of slabBytes are reused; smaller slabs (a point query's few
// pages) are allocated to size. At most slabKeep buffers wait for reuse.
const (
	slabBytes = maxSpan
	slabKeep  = fetchParallel
)

var freeSlabs = make(chan []byte, slabKeep)

// slabCounts counts the full-size slabs a page source used, and how many
// of their buffers it had to make (the others were reused).
type slabCounts struct{ used, made atomic.Int64 }

// newSlab returns a slab for the pages pgnos of pageSize bytes, holding
// one reference for each of its pages.
func newSlab(pgnos []uint32, pageSize int, counts *slabCounts) *slab {
	n := len(pgnos) * pageSize
	var buf []byte
	if n > slabBytes/2 && n <= slabBytes {
		counts.used.Add(1)
		select {
		case buf = <-freeSlabs:
		default:
			counts.made.Add(1)
			buf = make([]byte, slabBytes)
		}
		buf = buf[:n]
	} else {
		buf = make([]byte, n)
	}
	b := &slab{buf: buf, pgnos: pgnos, crcs: make([]uint64, len(pgnos))}
	b.refs.Store(int32(len(pgnos)))
	return b
}

// poisonFreed makes tests overwrite a buffer as it is freed, so that a
// page read after its slab was released reads as garbage.
var poisonFreed bool

func putSlab(buf []byte) {
	if poisonFreed {
		buf = buf[:cap(buf)]
		for i := range buf {
			buf[i] = 0xa5
		}
	}
	if cap(buf) != slabBytes {
		return
	}
	select {
	case freeSlabs <- buf[:slabBytes]:
	default:
	}
}

// pageLRU keeps the most recently used slabs of one page source, up to max
// bytes (but always the newest slab). A slab leaves it whole. It is not
// safe for concurrent use: the page source calls it under its mu.
type pageLRU struct {
	max, used  int64
	where      []*slab // by pgno-1: the slab holding the page, nil: none
	head, tail *slab   // most and least recently used
}

// newPageLRU returns an LRU of at most max bytes of a database of pages pages.
func newPageLRU(max int64, pages uint32) *pageLRU {
	return &pageLRU{max: max, where: make([]*slab, pages)}
}

// get returns page pgno, holding a reference the caller must release.
func (c *pageLRU) get(pgno uint32, pageSize int) (cachedPage, bool) {
	b := c.where[pgno-1]
	if b == nil {
		return cachedPage{}, false
	}
	c.toFront(b)
	b.refs.Add(1)
	return b.page(b.index(pgno), pageSize), true
}

// add puts b in the LRU, unless it was added before, and evicts the least
// recently used slabs past the bound. The LRU takes a reference.
func (c *pageLRU) add(b *slab) {
	if b.inLRU {
		return // pages of one slab need not be next to each other in a fetch
	}
	b.inLRU = true
	b.refs.Add(1)
	c.linkFront(b)
	c.used += int64(cap(b.buf))
	for _, pgno := range b.pgnos {
		c.where[pgno-1] = b
	}
	for c.used > c.max && c.tail != b {
		c.remove(c.tail)
	}
}

// remove takes b, which is in the LRU, out of it.
func (c *pageLRU) remove(b *slab) {
	c.unlink(b)
	c.used -= int64(cap(b.buf))
	for _, pgno := range b.pgnos {
		if c.where[pgno-1] == b {
			c.where[pgno-1] = nil
		}
	}
	b.release()
}

// dropBehind takes out of the LRU the slabs holding pages first..last that
// hold no page after last: a sequential reader has read past them.
func (c *pageLRU) dropBehind(first, last uint32) {
	for pgno := first; pgno <= last; pgno++ {
		if b := c.where[pgno-1]; b != nil && b.pgnos[len(b.pgnos)-1] <= last {
			c.remove(b)
		}
	}
}

func (c *pageLRU) toFront(b *slab) {
	if c.head != b {
		c.unlink(b)
		c.linkFront(b)
	}
}

func (c *pageLRU) unlink(b *slab) {
	if b.prev != nil {
		b.prev.next = b.next
	} else {
		c.head = b.next
	}
	if b.next != nil {
		b.next.prev = b.prev
	} else {
		c.tail = b.prev
	}
	b.prev, b.next = nil, nil
}

func (c *pageLRU) linkFront(b *slab) {
	b.prev, b.next = nil, c.head
	if c.head != nil {
		c.head.prev = b
	}
	c.head = b
	if c.tail == nil {
		c.tail = b
	}
}
