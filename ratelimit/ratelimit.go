// Package ratelimit is the token bucket every replica of an app shares, one per GHL
// rate-limit scope (location or company, per app). Callers queue for tokens instead of
// failing; past ratelimit.max_wait they get a RejectedError before anything went upstream.
package ratelimit

import (
	"fmt"
	"time"
)

// Priority orders waiters of one scope: interactive requests go before batched writes,
// both before warming.
type Priority int

const (
	Interactive Priority = iota
	Batch
	Warm
)

func (p Priority) String() string {
	switch p {
	case Interactive:
		return "interactive"
	case Batch:
		return "batch"
	case Warm:
		return "warm"
	}
	return fmt.Sprintf("priority(%d)", int(p))
}

// Grant is a successful Wait.
type Grant struct {
	// Waited is how long the caller queued; the proxy reports it as X-Ghlproxy-Queue-Ms.
	Waited time.Duration
	// Remaining is the scope's tokens left after this grant, as far as the limiter knows.
	Remaining int
	// Fallback is true when the decision was made on the local fallback bucket.
	Fallback bool
}

// RejectedError means no token could be had within the wait bound. Nothing was sent
// upstream; the proxy answers 429 with Retry-After and X-RateLimit-* from these fields.
type RejectedError struct {
	RetryAfter time.Duration
	Limit      int           // X-RateLimit-Max
	Interval   time.Duration // X-RateLimit-Interval-Milliseconds
	Remaining  int           // X-RateLimit-Remaining
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("rate limited: no token within the wait bound, retry after %s", e.RetryAfter.Round(time.Millisecond))
}
