package ratelimit

import "sync"

// memStore holds buckets in process: the embedded limiter (no Redis) and the fallback buckets
// while Redis is unreachable. Same decision code as the shared bucket (gcra.go).
type memStore struct {
	now func() float64 // µs, for debts
	// startEmpty: a new bucket starts with no tokens. The fallback buckets do, because the
	// shared bucket they replace was probably being spent when Redis went away.
	startEmpty bool

	mu      sync.Mutex
	buckets map[string]*bucketState
}

func newMemStore(now func() float64, startEmpty bool) *memStore {
	return &memStore{now: now, startEmpty: startEmpty, buckets: map[string]*bucketState{}}
}

// get returns the scope's bucket, creating it from what this replica knew about the scope
// (learned limit, pause, daily count, owed reservations). Called with mu held.
func (m *memStore) get(s *scope, c limits, now float64) *bucketState {
	b := m.buckets[s.name]
	if b == nil {
		seed := s.seed()
		b = &seed
		b.tat = 0
		if m.startEmpty {
			e := c.effective(b.lmax, b.lint)
			b.tat = now + (e.burst+b.owed)*e.T
		}
		m.buckets[s.name] = b
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
func (m *memStore) debts(c limits) map[string]float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	out := make(map[string]float64, len(m.buckets))
	for scope, b := range m.buckets {
		e := c.effective(b.lmax, b.lint)
		out[scope] = max(0, (b.tat-now-e.burst*e.T)/e.T)
	}
	return out
}

// forget drops a bucket (an idle scope).
func (m *memStore) forget(scope string) {
	m.mu.Lock()
	delete(m.buckets, scope)
	m.mu.Unlock()
}

// reset drops every bucket: the fallback starts afresh at the next outage.
func (m *memStore) reset() {
	m.mu.Lock()
	clear(m.buckets)
	m.mu.Unlock()
}
