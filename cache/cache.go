// Package cache answers reads and read-only searches from a store shared by every replica:
// an in-process layer for hot entries in front of Redis (or an embedded in-memory store
// when there is no Redis). Entries are keyed by request fingerprint — which includes a keyed
// hash of the caller's credential — and their bodies are encrypted at rest with a key
// derived from the caller's own token.
package cache

import (
	"time"

	"github.com/ghlproxy/ghlproxy/upstream"
)

// Entry is a cached answer.
type Entry struct {
	Resp *upstream.Response
	// Stored is when the answer was fetched from upstream; Age counts from it.
	Stored time.Time
	// FreshUntil ends the entry's TTL: before it the entry is a hit.
	FreshUntil time.Time
	// StaleWhileRevalidate and StaleIfError end the windows in which the stale entry may be
	// served while one refresh runs, or instead of an upstream error.
	StaleWhileRevalidate time.Time
	StaleIfError         time.Time
}

// Fresh reports whether the entry is within its TTL at now.
func (e *Entry) Fresh(now time.Time) bool { return now.Before(e.FreshUntil) }

// Policy says how to store one answer.
type Policy struct {
	TTL                  time.Duration
	StaleWhileRevalidate time.Duration
	StaleIfError         time.Duration
	// Tags are the invalidation tags of the answer, already prefixed with the scope key.
	Tags []string
	// Route is the route template, kept with the entry so that purges by route work.
	Route string
}
