package restore

import (
	"container/list"
	"sync"
)

// pageLRU keeps the most recently used decoded pages of one page source,
// up to max pages. Pages in it are never modified: readers copy out of them.
type pageLRU struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recent; values are *lruEntry
	byNo  map[uint32]*list.Element
}

type lruEntry struct {
	pgno uint32
	data []byte
}

func newPageLRU(max int) *pageLRU {
	return &pageLRU{max: max, order: list.New(), byNo: map[uint32]*list.Element{}}
}

func (c *pageLRU) get(pgno uint32) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byNo[pgno]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*lruEntry).data, true
}

func (c *pageLRU) put(pgno uint32, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byNo[pgno]; ok {
		e.Value.(*lruEntry).data = data
		c.order.MoveToFront(e)
		return
	}
	c.byNo[pgno] = c.order.PushFront(&lruEntry{pgno: pgno, data: data})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byNo, last.Value.(*lruEntry).pgno)
	}
}
