package ratelimit

import (
	"math"
	"time"
)

// A lease is a few tokens a replica took from the shared bucket along with an interactive
// request's own, so that the scope's next interactive requests on this replica are granted
// without a Redis round trip (docs/architecture.md, "What a request costs Redis"). The
// tokens leave the shared bucket when leased, so the replicas together never take more than
// the bucket allows; what a lease changes is only when they are spent, at most Config.Lease
// later. Any window of GHL's therefore sees at most rate × Lease more calls than the bucket
// alone would send (0.47 with 280 per minute and the default 100 ms: 97.1 instead of 96.7
// of 100 per 10 s), and only while the bucket is more than half full — a lease is never
// taken from a bucket that anyone may be waiting on (leaseSize), so at the edge of the
// budget every decision is the shared bucket's, as without leases. Tokens a lease does not
// spend within its life are dropped, not handed back: they were taken from a bucket more
// than half full, and handing them back would need a round trip as well.
//
// What GHL says reaches a lease on the replica that hears it at once: a 429 or Remaining 0
// voids the lease (and one on its way), and a Remaining below what the lease holds cuts it
// to that. Another replica's lease learns of it only when it ends, within Config.Lease:
// like a grant already made when a pause is announced, those calls go (a read answered 429
// is retried after the pause; a write is not resent).

// leaseMax is the most tokens one lease holds.
const leaseMax = 16

// leaseState is one scope's lease on this replica, and the demand it is sized from. Held
// under scope.mu.
type leaseState struct {
	tokens float64
	until  time.Time
	// gen counts what voids leases (a pause, GHL reporting fewer remaining than the lease
	// holds): a lease asked for before it is not granted (grantLease).
	gen uint64
	// Interactive requests of the scope in the current lease life (from since), and in the
	// last life that had any: the next lease is sized to what one life asked.
	count, last int
	since       time.Time
}

// spendLease grants n tokens from the scope's lease when it holds them, is still alive and
// the scope is not paused (a pause also drops the lease: extendPause). The decision repeats
// what the shared bucket said last: the leased tokens had already left it.
func (s *scope) spendLease(n float64, now time.Time) (decision, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls := &s.lease
	if ls.tokens < n || !now.Before(ls.until) || now.Before(s.pauseUntil) {
		return decision{}, false
	}
	ls.tokens -= n
	return decision{granted: true, tokens: s.tokens, eff: s.eff, dr: s.dr, dl: s.dl, lmax: s.lmax, lint: s.lint}, true
}

// demand counts one interactive request of the scope and returns how many tokens beyond
// its own the next lease should hold: what the last busy lease life asked, or the requests
// queued behind this one for the shared bucket if more, at most leaseMax. Sized to the last
// busy life rather than the last life, a scope whose requests come in bursts leases a
// burst's worth at its first request; when the bursts stop, one lease goes unspent.
func (s *scope) demand(now time.Time, life time.Duration) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls := &s.lease
	if now.Sub(ls.since) >= life || now.Before(ls.since) {
		if ls.count > 0 {
			ls.last = ls.count
		}
		ls.count, ls.since = 0, now
	}
	ls.count++
	want := max(ls.last, ls.count, int(s.asking.Load())) - 1
	return math.Min(leaseMax, float64(want))
}

// leaseGen is the generation a lease is asked for in (see leaseState.gen).
func (s *scope) leaseGen() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease.gen
}

// grantLease records tokens the shared bucket leased to this replica, alive until until,
// unless something voided leases since the lease was asked for in generation gen: a 429
// learned while the take was on its way to Redis must not leave a lease to spend in the
// pause. Whatever the previous lease still held (fewer than the request needed) is dropped.
func (s *scope) grantLease(tokens float64, until time.Time, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lease.gen != gen {
		return
	}
	s.lease.tokens, s.lease.until = tokens, until
}

// voidLease drops this replica's lease of the scope, and any on its way. Called with mu
// held.
func (s *scope) voidLease() {
	s.lease.tokens = 0
	s.lease.gen++
}
