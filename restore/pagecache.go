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
	page cachedPage
}

// cachedPage is one decoded page and the CRC-64 of its bytes.
type cachedPage struct {
	data []byte
	crc  uint64
}

func newPageLRU(max int) *pageLRU {
	return &pageLRU{max: max, order: list.New(), byNo: map[uint32]*list.Element{}}
}

func (c *pageLRU) get(pgno uint32) (cachedPage, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byNo[pgno]
	if !ok {
		return cachedPage{}, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*lruEntry).page, true
}

func (c *pageLRU) put(pgno uint32, page cachedPage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byNo[pgno]; ok {
		e.Value.(*lruEntry).page = page
		c.order.MoveToFront(e)
		return
	}
	c.byNo[pgno] = c.order.PushFront(&lruEntry{pgno: pgno, page: page})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byNo, last.Value.(*lruEntry).pgno)
	}
}
