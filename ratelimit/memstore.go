package ratelimit

import "sync"

// memStore holds buckets in process: the embedded limiter (no Redis) and the fallback buckets
// while Redis is unreachable. Same decision code as the shared bucket (gcra.go).
//
// A fallback bucket is not a bucket of its own that refills while the shared one is spent:
// every decision on it first lifts it to at most this replica's share of the shared bucket's
// last known level (scope.sync). So a call that times out now and then, or a Redis that
// flaps, never finds a local bucket that refilled to full meanwhile, and a fallback does not
// start afresh while the shared bucket was in debt. The buckets are kept across outages:
// what they still hold is reservations the shared bucket has not heard of (handBack moves
// them over on recovery; a single timed-out call does not).
type memStore struct {
	now      func() float64 // µs, for debts
	fallback bool

	mu      sync.Mutex
	buckets map[string]*bucketState
}

func newMemStore(now func() float64, fallback bool) *memStore {
	return &memStore{now: now, fallback: fallback, buckets: map[string]*bucketState{}}
}

// get returns the scope's bucket, brought up to date with what this replica knows about the
// scope. Called with mu held.
func (m *memStore) get(s *scope, c limits, now float64) *bucketState {
	b := m.buckets[s.name]
	if b == nil {
		b = newBucketState()
		m.buckets[s.name] = b
	}
	floor, ok := s.sync(b, c)
	if m.fallback {
		if !ok && b.tat == 0 {
			// No shared decision seen (Redis away since start-up): start empty, the shared
			// bucket was probably being spent by the other replicas.
			e := c.effective(b.lmax, b.lint)
			floor = now + e.burst*e.T
		}
		b.tat = max(b.tat, floor)
	}
	return b
}

// take decides at now (the limiter's clock, µs).
func (m *memStore) take(s *scope, c limits, a takeArgs, now float64) decision {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.get(s, c, now).take(now, c, a)
}

func (m *memStore) observe(s *scope, c limits, o observation, now float64) decision {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.get(s, c, now).observe(now, c, o)
}

// debts lists, per scope, the tokens reserved on the bucket that are not valid yet.
func (m *memStore) debts(limitsOf func(lmax, lint float64) limits) map[string]debt {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	out := make(map[string]debt, len(m.buckets))
	for scope, b := range m.buckets {
		e := limitsOf(b.lmax, b.lint).effective(b.lmax, b.lint)
		out[scope] = debt{tokens: max(0, (b.tat-now-e.burst*e.T)/e.T), lmax: b.lmax, lint: b.lint}
	}
	return out
}

// debt is a fallback bucket's outstanding reservations in tokens, with the upstream limit
// its scope had learned (for the limits the tokens are counted in).
type debt struct {
	tokens, lmax, lint float64
}

// forget drops a bucket (an idle scope).
func (m *memStore) forget(scope string) {
	m.mu.Lock()
	delete(m.buckets, scope)
	m.mu.Unlock()
}

// settle removes debt tokens handed back to the shared bucket from the scope's bucket.
func (m *memStore) settle(scope string, limitsOf func(lmax, lint float64) limits, debt float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b := m.buckets[scope]; b != nil {
		b.tat -= debt * limitsOf(b.lmax, b.lint).effective(b.lmax, b.lint).T
	}
}
