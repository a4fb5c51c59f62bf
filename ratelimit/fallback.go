package ratelimit

import (
	"context"
	"time"
)

// Deciding without Redis: the breaker, the local fallback buckets, and handing their
// reservations back when Redis returns.

// redisCall runs f with RedisTimeout on the caller's goroutine. The client must honour
// context deadlines (go-redis with ContextTimeoutEnabled, as the sidecar builds it): a
// goroutine per call to enforce the bound instead cost a hand-off on every rate-limit
// decision, most of what the shared bucket added over a plain GET. The request's own
// cancellation is not passed on: an abandoned call must not count as a Redis failure.
func (l *Limiter) redisCall(ctx context.Context, f func(context.Context) (decision, error)) (decision, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.RedisTimeout)
	defer cancel()
	d, err := f(ctx)
	if err == nil {
		// A good call ends a run of failures: the breaker counts consecutive ones.
		l.br.success()
	}
	return d, err
}

func (l *Limiter) redisFailed(err error) {
	if l.br.failure() {
		l.enterDegraded(err)
	}
}

func (l *Limiter) enterDegraded(err error) {
	l.br.trip()
	if !l.degradedSince.CompareAndSwap(0, time.Now().UnixNano()) {
		return
	}
	l.m.RedisUp.Set(0)
	l.m.Degraded.Set(1)
	sh := l.share().effective(0, 0)
	l.log.Warn("ratelimit: redis unreachable, deciding on local fallback buckets",
		"err", err, "replicas", l.replicas.Load(),
		"share_per_s", 1e6/sh.T, "share_burst", sh.burst)
}

func (l *Limiter) leaveDegraded() {
	since := l.degradedSince.Swap(0)
	if since == 0 {
		return
	}
	// What was told before the outage may be gone (a restarted Redis): tell it again.
	l.mu.Lock()
	for _, s := range l.scopes {
		s.mu.Lock()
		s.toldAt = time.Time{}
		s.mu.Unlock()
	}
	l.mu.Unlock()
	l.m.RedisUp.Set(1)
	l.m.Degraded.Set(0)
	l.log.Info("ratelimit: redis reachable again, back on the shared bucket",
		"degraded_for", time.Since(time.Unix(0, since)).Round(time.Millisecond))
}

// handBack moves the fallback buckets' outstanding reservations onto the shared buckets
// before the limiter returns to them, so that requests already promised a slot by the
// fallback and new requests on the shared bucket do not both go upstream in one window.
// A debt handed back leaves the fallback bucket, so a quick second outage does not hand it
// back again; the buckets themselves stay (see memStore).
func (l *Limiter) handBack() error {
	ctx, cancel := context.WithTimeout(context.Background(), l.probeTimeout())
	defer cancel()
	// Each scope's share of its own base bucket (followed or configured), as its fallback
	// decisions were made.
	share := func(lmax, lint float64) limits { return l.shareOf(l.baseFor(lmax, lint)) }
	for scope, debt := range l.mem.debts(share) {
		if debt.tokens <= 0 {
			continue
		}
		if err := redisAbsorb(ctx, l.rdb, bucketKey(l.cfg.Prefix, scope), l.baseFor(debt.lmax, debt.lint), debt.tokens); err != nil {
			return err
		}
		l.mem.settle(scope, share, debt.tokens)
	}
	return nil
}

func (l *Limiter) probeTimeout() time.Duration { return max(l.cfg.RedisTimeout, 500*time.Millisecond) }
