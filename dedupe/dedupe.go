// Package dedupe folds identical requests: concurrent ones share one upstream call, and for
// a window after it finished later ones get its stored answer — across every replica that
// shares the store. GHL has no idempotency keys, so this is what makes client retries of
// writes safe.
package dedupe

import "time"

// Outcome says how a call to Do was answered.
type Outcome uint8

const (
	// Leader made the upstream call itself.
	Leader Outcome = iota
	// Shared joined a call in flight (X-Ghlproxy-Dedupe: shared).
	Shared
	// Replay got the stored answer of a call that finished within the window
	// (X-Ghlproxy-Dedupe: replay).
	Replay
)

func (o Outcome) String() string {
	switch o {
	case Shared:
		return "shared"
	case Replay:
		return "replay"
	}
	return "leader"
}

// Options describe one foldable call.
type Options struct {
	// Window is how long the answer is replayed after the call finished; 0 shares only
	// concurrent calls.
	Window time.Duration
	// Write marks calls that change state upstream: a waiter never takes over a write
	// unless the leader provably never sent it.
	Write bool
	// Tags are the invalidation tags of a read's answer (scope-prefixed), so a write can
	// drop replays it made wrong.
	Tags []string
}
