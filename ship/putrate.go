package ship

import "time"

// tokenBucket paces PUTs: rate tokens a second, at most one saved up. A zero
// rate never limits.
type tokenBucket struct {
	rate   float64
	tokens float64
	last   time.Time
}

// take spends a token and returns the zero time, or returns when the next
// token will be there.
func (b *tokenBucket) take(now time.Time) time.Time {
	if b.rate <= 0 {
		return time.Time{}
	}
	if !b.last.IsZero() {
		b.tokens = min(1, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return time.Time{}
	}
	return now.Add(time.Duration((1 - b.tokens) / b.rate * float64(time.Second)))
}
