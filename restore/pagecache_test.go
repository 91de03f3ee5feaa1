package restore

import (
	"bytes"
	"testing"
)

// A page handed out keeps its bytes while held, even after its slab left
// the LRU; the slab's buffer is freed (and reused) only once the LRU and
// every holder let go.
func TestSlabRefs(t *testing.T) {
	poisonFreed = true
	t.Cleanup(func() { poisonFreed = false })
	for len(freeSlabs) > 0 { // what earlier tests freed
		<-freeSlabs
	}
	const ps = 4096
	pgnos := func(first uint32) []uint32 {
		p := make([]uint32, slabBytes/ps)
		for i := range p {
			p[i] = first + uint32(i)
		}
		return p
	}
	var counts slabCounts
	fill := func(b *slab, v byte) {
		for i := range b.buf {
			b.buf[i] = v
		}
	}
	release := func(pages []cachedPage) {
		for _, p := range pages {
			p.release()
		}
	}
	lru := newPageLRU(2*slabBytes, 4*slabBytes/ps)
	n := slabBytes / ps

	a := newSlab(pgnos(1), ps, &counts) // held by the n pages a fetch returns
	fill(a, 1)
	fetched := make([]cachedPage, n)
	for i := range fetched {
		fetched[i] = a.page(i, ps)
	}
	lru.add(a)
	lru.add(a) // a second add of the same slab changes nothing
	got, ok := lru.get(7, ps)
	if !ok || got.slab != a || !bytes.Equal(got.data, bytes.Repeat([]byte{1}, ps)) {
		t.Fatal("page 7 not served from slab a")
	}
	release(fetched)

	// Two more slabs push a out of the LRU; page 7 is still held.
	for k, first := range []uint32{uint32(n) + 1, 2*uint32(n) + 1} {
		b := newSlab(pgnos(first), ps, &counts)
		fill(b, byte(k+2))
		lru.add(b)
		release(func() []cachedPage {
			p := make([]cachedPage, n)
			for i := range p {
				p[i] = b.page(i, ps)
			}
			return p
		}())
	}
	if _, ok := lru.get(8, ps); ok {
		t.Fatal("slab a is still in the LRU past its bound")
	}
	if !bytes.Equal(got.data, bytes.Repeat([]byte{1}, ps)) {
		t.Fatal("a held page changed after its slab left the LRU")
	}
	if a.refs.Load() != 1 {
		t.Fatalf("slab a has %d references, want 1 (the held page)", a.refs.Load())
	}
	got.release()
	if got.data[0] != 0xa5 {
		t.Fatal("slab a was not freed after its last holder let go")
	}
	c := newSlab(pgnos(1), ps, &counts)
	if counts.made.Load() != 3 || &c.buf[0] != &a.buf[0] {
		t.Fatalf("%d buffers made; a's buffer was not reused", counts.made.Load())
	}
}
