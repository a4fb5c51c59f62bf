package ratelimit

import (
	"sync"
	"time"
)

// breaker stops the limiter from calling Redis after consecutive failures, so requests do not
// each pay a timeout while Redis is down. Unlike the usual half-open state (gobreaker), which
// lets live requests test the water and pay the timeout, this one is closed again only by the
// background probe (Limiter.maintain), which is the one caller that may wait on a dead Redis.
// That, and having three states instead of gobreaker's generic counts and callbacks, is why
// it is hand-written: about thirty lines.
//
// It opens after threshold consecutive failures spanning at least minSpan: a burst of
// concurrent calls that all time out together (a cold connection pool, a GC pause) is one
// event, not proof that Redis is gone; each of those decisions still falls back on its own.
type breaker struct {
	threshold int
	minSpan   time.Duration

	mu        sync.Mutex
	failures  int
	firstFail time.Time
	open      bool
}

// success records a good call.
func (b *breaker) success() {
	b.mu.Lock()
	b.failures = 0
	b.mu.Unlock()
}

// failure records a failed call and reports whether it tripped the breaker just now.
func (b *breaker) failure() (tripped bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if b.failures == 0 {
		b.firstFail = now
	}
	b.failures++
	if !b.open && b.failures >= b.threshold && now.Sub(b.firstFail) >= b.minSpan {
		b.open = true
		return true
	}
	return false
}

// trip opens the breaker at once (start-up with Redis unreachable); reports whether it was
// closed before.
func (b *breaker) trip() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	was := b.open
	b.open = true
	return !was
}

// reset closes the breaker after a good probe; reports whether it was open.
func (b *breaker) reset() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	was := b.open
	b.open, b.failures = false, 0
	return was
}

func (b *breaker) isOpen() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open
}
