package pager

import (
	"math/rand/v2"
	"testing"

	"github.com/superfly/ltx"
)

func TestPageChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for ps := 512; ps <= 65536; ps *= 2 {
		for range 5 {
			data := make([]byte, ps)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			pgno := rng.Uint32()
			if got, want := PageChecksum(pgno, data), ltx.ChecksumPage(pgno, data); got != want {
				t.Fatalf("page size %d pgno %d: %016x, want %016x", ps, pgno, got, want)
			}
		}
	}
	for _, pgno := range []uint32{0, 1, 0xffffffff} {
		if got, want := PageChecksum(pgno, nil), ltx.ChecksumPage(pgno, nil); got != want {
			t.Fatalf("pgno %d, no data: %016x, want %016x", pgno, got, want)
		}
	}
}

func TestPageChecksumAllocs(t *testing.T) {
	data := make([]byte, 4096)
	var sink ltx.Checksum
	if n := testing.AllocsPerRun(100, func() { sink ^= PageChecksum(7, data) }); n != 0 {
		t.Fatalf("%v allocations per call", n)
	}
	_ = sink
}

func BenchmarkPageChecksum(b *testing.B) {
	data := make([]byte, 4096)
	b.SetBytes(int64(len(data)))
	for i := 0; b.Loop(); i++ {
		PageChecksum(uint32(i), data)
	}
}
