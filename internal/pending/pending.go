// Package pending keeps what a replica asked Redis to do that Redis has not confirmed — an
// invalidation whose reply timed out, an entry whose store may have run — each until a time
// past which it no longer matters, for a loop that retries it. A reply that timed out does
// not mean the command did not run, so such work is retried, not dropped.
package pending

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Set is a set of pending keys, each with the time to give it up. Safe for concurrent use.
type Set struct {
	mu    sync.Mutex
	until map[string]time.Time
	n     atomic.Int64     // len(until), for the lock-free Any of the common case
	gauge prometheus.Gauge // follows the size; may be nil
}

// Item is a key as Due handed it out: Done removes it only if it was not added again since.
type Item struct {
	Key   string
	until time.Time
}

// New returns an empty Set whose size gauge follows, when gauge is not nil.
func New(gauge prometheus.Gauge) *Set {
	return &Set{until: make(map[string]time.Time), gauge: gauge}
}

// Add makes keys pending until until; a key already pending takes the new time.
func (s *Set) Add(until time.Time, keys ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		s.until[k] = until
	}
	s.sized()
}

// Any says whether any of keys is pending. It takes no lock while nothing is.
func (s *Set) Any(keys []string) bool {
	if s.n.Load() == 0 || len(keys) == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		if _, ok := s.until[k]; ok {
			return true
		}
	}
	return false
}

// Len is how many keys are pending.
func (s *Set) Len() int { return int(s.n.Load()) }

// Due gives up the keys whose time is past at now and returns the others, to retry.
func (s *Set) Due(now time.Time) []Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	items := make([]Item, 0, len(s.until))
	for k, until := range s.until {
		if now.After(until) {
			delete(s.until, k)
			continue
		}
		items = append(items, Item{Key: k, until: until})
	}
	s.sized()
	return items
}

// Done removes items whose retry Redis confirmed, unless they were added again meanwhile
// (a newer failure of the same key must still be retried).
func (s *Set) Done(items ...Item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range items {
		if u, ok := s.until[it.Key]; ok && u.Equal(it.until) {
			delete(s.until, it.Key)
		}
	}
	s.sized()
}

// Keys lists the keys of items.
func Keys(items []Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.Key
	}
	return out
}

// sized records the size. Caller holds s.mu.
func (s *Set) sized() {
	s.n.Store(int64(len(s.until)))
	if s.gauge != nil {
		s.gauge.Set(float64(len(s.until)))
	}
}

// Loop runs retry when woken through wake, then again every `every` for as long as retry
// reports work left, until stop is closed. With nothing left it only waits: an idle
// sidecar does not wake up to find nothing to do.
func Loop(stop, wake <-chan struct{}, every time.Duration, retry func() (left bool)) {
	var again <-chan time.Time
	for {
		select {
		case <-stop:
			return
		case <-wake:
		case <-again:
		}
		again = nil
		if retry() {
			again = time.After(every)
		}
	}
}

// Wake asks the Loop listening on wake (a channel of capacity 1) to run, without blocking:
// a wake already pending covers this one.
func Wake(wake chan<- struct{}) {
	select {
	case wake <- struct{}{}:
	default:
	}
}
