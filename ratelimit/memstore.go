package ratelimit

import "sync"

// memStore holds buckets in process: the embedded limiter (no Redis) and the fallback buckets
// while Redis is unreachable. Same decision code as the shared bucket (gcra.go).
type memStore struct {
	now func() float64 // µs
	// startEmpty: a new bucket starts with no tokens. The fallback buckets do, because the
	// shared bucket they replace was probably being spent when Redis went away.
	startEmpty bool

	mu      sync.Mutex
	buckets map[string]*bucketState
}

func newMemStore(now func() float64, startEmpty bool) *memStore {
	return &memStore{now: now, startEmpty: startEmpty, buckets: map[string]*bucketState{}}
}

// get returns the scope's bucket, creating it from seed (what this replica knew about the
// scope: learned limit, pause, daily count). Called with mu held.
func (m *memStore) get(scope string, c limits, seed bucketState, now float64) *bucketState {
	b := m.buckets[scope]
	if b == nil {
		b = &seed
		b.tat = 0
		if m.startEmpty {
			e := c.effective(b.lmax, b.lint)
			b.tat = now + (e.burst+b.owed)*e.T
		}
		m.buckets[scope] = b
	}
	return b
}

func (m *memStore) take(scope string, c limits, seed bucketState, a takeArgs) decision {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	return m.get(scope, c, seed, now).take(now, c, a)
}

func (m *memStore) observe(scope string, c limits, seed bucketState, o observation) decision {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	return m.get(scope, c, seed, now).observe(now, c, o)
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
