package crc64iso

import (
	"hash/crc64"
	"math/bits"
	"math/rand/v2"
	"testing"
)

var isoTable = crc64.MakeTable(crc64.ISO)

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestKeys derives the folding constants a second way, by shifting the
// unreflected polynomial bit by bit, and compares.
func TestKeys(t *testing.T) {
	const low = 0x1b // x^4 + x^3 + x + 1: P without x^64
	if bits.Reverse64(low) != poly {
		t.Fatalf("poly %#x is not the reflection of %#x", uint64(poly), low)
	}
	slow := func(n int) uint64 {
		r := uint64(1)
		for range n {
			carry := r >> 63
			r <<= 1
			if carry != 0 {
				r ^= low
			}
		}
		return bits.Reverse64(r)
	}
	for _, n := range []int{0, 1, 63, 64, 65, 127, 191, 255, 319, 383, 447, 511, 575, 4096 * 8} {
		if got, want := xpow(uint64(n)), slow(n); got != want {
			t.Errorf("xpow(%d) = %#x, want %#x", n, got, want)
		}
	}
	want := [8]uint64{slow(575), slow(511), slow(447), slow(383), slow(319), slow(255), slow(191), slow(127)}
	if keys != want {
		t.Errorf("keys = %#x, want %#x", keys, want)
	}
}

// TestUpdateEveryLength checks every length 0..4096 from every alignment
// 0..15 against hash/crc64, starting from zero and from a running checksum.
func TestUpdateEveryLength(t *testing.T) {
	if !haveFold {
		t.Log("no PCLMULQDQ: testing the fallback only")
	}
	r := rand.New(rand.NewPCG(1, 2))
	buf := randBytes(r, 4096+16)
	for off := range 16 {
		for n := 0; n <= 4096; n++ {
			p := buf[off : off+n]
			if got, want := Checksum(p), crc64.Checksum(p, isoTable); got != want {
				t.Fatalf("Checksum(len %d, offset %d) = %#x, want %#x", n, off, got, want)
			}
			seed := r.Uint64()
			if got, want := Update(seed, p), crc64.Update(seed, isoTable, p); got != want {
				t.Fatalf("Update(%#x, len %d, offset %d) = %#x, want %#x", seed, n, off, got, want)
			}
		}
	}
}

func TestUpdateLarge(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1 << 16, 1<<20 + 13, 4<<20 + 4095, 3 << 22} {
		b := randBytes(r, n+7)
		off := r.IntN(8)
		p := b[off : off+n]
		if got, want := Checksum(p), crc64.Checksum(p, isoTable); got != want {
			t.Fatalf("Checksum(len %d) = %#x, want %#x", n, got, want)
		}
	}
	// All zeros and all ones, where a folding bug in a constant hides least.
	for _, v := range []byte{0, 0xff} {
		p := make([]byte, 100003)
		for i := range p {
			p[i] = v
		}
		if got, want := Checksum(p), crc64.Checksum(p, isoTable); got != want {
			t.Fatalf("Checksum(%d bytes of %#x) = %#x, want %#x", len(p), v, got, want)
		}
	}
}

func TestCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	buf := randBytes(r, 10000)
	shifts := map[int]*Shift{}
	for range 2000 {
		a := r.IntN(len(buf))
		b := a + r.IntN(len(buf)-a)
		if r.IntN(4) == 0 {
			b = a + r.IntN(min(20, len(buf)-a))
		}
		want := crc64.Checksum(buf[:b], isoTable)
		crcA, crcB := Checksum(buf[:a]), Checksum(buf[a:b])
		if got := Combine(crcA, crcB, int64(b-a)); got != want {
			t.Fatalf("Combine(len %d, len %d) = %#x, want %#x", a, b-a, got, want)
		}
		if len(shifts) < 50 || shifts[b-a] != nil {
			s := shifts[b-a]
			if s == nil {
				s = NewShift(int64(b - a))
				shifts[b-a] = s
			}
			if got := s.Combine(crcA, crcB); got != want {
				t.Fatalf("Shift(%d).Combine = %#x, want %#x", b-a, got, want)
			}
		}
	}
}

func FuzzUpdate(f *testing.F) {
	f.Add(uint64(0), []byte("hello"), 0)
	f.Add(uint64(1), make([]byte, 200), 7)
	f.Fuzz(func(t *testing.T, seed uint64, p []byte, cut int) {
		if got, want := Update(seed, p), crc64.Update(seed, isoTable, p); got != want {
			t.Fatalf("Update(%#x, %d bytes) = %#x, want %#x", seed, len(p), got, want)
		}
		if len(p) > 0 {
			cut = int(uint(cut) % uint(len(p)+1))
			want := crc64.Checksum(p, isoTable)
			if got := Combine(Checksum(p[:cut]), Checksum(p[cut:]), int64(len(p)-cut)); got != want {
				t.Fatalf("Combine at %d of %d = %#x, want %#x", cut, len(p), got, want)
			}
		}
	})
}

func BenchmarkChecksum(b *testing.B) {
	p := randBytes(rand.New(rand.NewPCG(7, 8)), 1<<20)
	b.Run("crc64iso", func(b *testing.B) {
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			Checksum(p)
		}
	})
	b.Run("hash-crc64", func(b *testing.B) {
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			crc64.Checksum(p, isoTable)
		}
	})
	pg := p[:4096]
	b.Run("crc64iso-4k", func(b *testing.B) {
		b.SetBytes(int64(len(pg)))
		for b.Loop() {
			Checksum(pg)
		}
	})
}
