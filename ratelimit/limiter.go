package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
)

// Limiter is the rate limiter of one replica. With a Redis client every decision is made by
// one script on the shared bucket, or from a lease this replica took from it (lease.go); while Redis is unreachable, on a local bucket holding this
// replica's share; without Redis (embedded), on an in-process bucket.
//
// Metrics it keeps: ratelimit_wait_seconds{priority}, ratelimit_queue_depth{priority},
// queue_depth{queue="ratelimit"},
// redis_up, degraded, ratelimit_fallback_decisions_total. The proxy counts the rest where it
// sees them, once: ratelimit_rejected_total when it answers the 429, upstream_429_total and
// upstream_ratelimit_remaining when the upstream response arrives.
type Limiter struct {
	cfg  Config
	lim  limits // configured, µs per token
	rdb  redis.UniversalClient
	m    *metrics.Metrics
	log  *slog.Logger
	br   breaker
	mem  *memStore // embedded buckets, or the fallback buckets with Redis
	done chan struct{}
	wg   sync.WaitGroup

	replicas      atomic.Int64 // last count seen in Redis, at least 1
	degradedSince atomic.Int64 // unix ns; 0 = not degraded

	mu     sync.Mutex
	scopes map[string]*scope

	waitHist  [len(Lanes)]prometheus.Observer
	laneDepth [len(Lanes)]prometheus.Gauge

	// sleep waits d or until ctx ends; a seam so tests can drive time.
	sleep func(ctx context.Context, d time.Duration) error
}

// New builds a limiter. rdb nil runs the bucket in process (one replica). With rdb, New
// registers the replica and starts the heartbeat and health probe; Close stops them. New does
// not fail when Redis is unreachable: the limiter starts on its fallback buckets.
//
// The client must have ContextTimeoutEnabled set: every call is bounded by RedisTimeout
// through its context alone (the sidecar's client has it; see redisCall).
func New(cfg Config, rdb redis.UniversalClient, m *metrics.Metrics, log *slog.Logger) (*Limiter, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.ReplicaID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		cfg.ReplicaID = hex.EncodeToString(b[:])
	}
	if m == nil {
		m = metrics.New()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Limiter{
		cfg:    cfg,
		lim:    limits{T: float64(cfg.Per.Microseconds()) / float64(cfg.Rate), burst: float64(cfg.Burst)},
		rdb:    rdb,
		m:      m,
		log:    log,
		br:     breaker{threshold: 3, minSpan: cfg.RedisTimeout},
		done:   make(chan struct{}),
		scopes: map[string]*scope{},
		sleep:  sleepCtx,
	}
	l.replicas.Store(1)
	l.mem = newMemStore(func() float64 { return micro(cfg.Now()) }, rdb != nil)
	for _, p := range Lanes {
		l.waitHist[p] = m.RateLimitWait.WithLabelValues(p.String())
		l.laneDepth[p] = m.RateLimitQueue.WithLabelValues(p.String())
	}
	if rdb != nil {
		if err := l.register(); err != nil {
			l.enterDegraded(err)
		}
	}
	l.wg.Add(1)
	go l.maintain()
	return l, nil
}

// Close stops the heartbeat and probe and removes this replica from the replica set.
func (l *Limiter) Close() error {
	select {
	case <-l.done:
		return nil
	default:
	}
	close(l.done)
	l.wg.Wait()
	if l.rdb != nil && !l.br.isOpen() {
		ctx, cancel := context.WithTimeout(context.Background(), l.probeTimeout())
		defer cancel()
		_ = l.rdb.ZRem(ctx, replicasKey(l.cfg.Prefix), l.cfg.ReplicaID).Err()
	}
	return nil
}

// Degraded reports whether decisions are being made on the local fallback buckets.
func (l *Limiter) Degraded() bool { return l.degradedSince.Load() != 0 }

// Replicas is the replica count last read from Redis (1 until known).
func (l *Limiter) Replicas() int { return int(l.replicas.Load()) }

// take makes one decision: on the shared bucket when Redis is healthy, else on the local one.
func (l *Limiter) take(ctx context.Context, s *scope, a takeArgs, now time.Time) (decision, bool) {
	if l.rdb != nil && !l.br.isOpen() {
		d, err := l.takeShared(ctx, s, a, now)
		if err == nil {
			return d, false
		}
		l.redisFailed(err)
	}
	if l.rdb == nil {
		d := l.mem.take(s, l.base(s), a, micro(now))
		s.update(d, now, false)
		return d, false
	}
	l.m.RateLimitFallback.Inc()
	now = l.cfg.Now() // the Redis attempt took time
	d := l.mem.take(s, l.shareOf(l.base(s)), a, micro(now))
	s.update(d, now, true)
	return d, true
}

// takeShared decides on the shared bucket, or from this replica's lease of it (lease.go)
// for an interactive request when the lease holds its tokens.
func (l *Limiter) takeShared(ctx context.Context, s *scope, a takeArgs, now time.Time) (decision, error) {
	leasing := l.cfg.Lease > 0 && a.mode == modeReserve
	if leasing {
		if d, ok := s.spendLease(a.n, now); ok {
			s.demand(now, l.cfg.Lease)
			return d, nil
		}
		s.asking.Add(1)
		defer s.asking.Add(-1)
	}
	s.redisMu.Lock()
	defer s.redisMu.Unlock()
	var gen uint64
	if leasing {
		// The call this one queued behind may have brought a lease.
		now := l.cfg.Now()
		want := s.demand(now, l.cfg.Lease)
		if d, ok := s.spendLease(a.n, now); ok {
			return d, nil
		}
		// want counts requests; a lease holds tokens (a paced request costs several).
		a.lease, gen = math.Min(leaseMax, want*a.n), s.leaseGen()
	}
	asked := l.cfg.Now()
	d, err := l.redisCall(ctx, func(ctx context.Context) (decision, error) {
		return redisTake(ctx, l.rdb, s.key, l.base(s), a)
	})
	if err != nil {
		return d, err // the fallback decides with a of its own: no lease
	}
	s.update(d, l.cfg.Now(), false)
	if d.leased > 0 {
		// Alive from before the call: never longer than Lease after Redis granted it.
		s.grantLease(d.leased, asked.Add(l.cfg.Lease), gen)
	}
	return d, nil
}

// share is this replica's part of the configured budget while Redis is unreachable.
func (l *Limiter) share() limits { return l.shareOf(l.lim) }

func (l *Limiter) shareOf(c limits) limits {
	c.share = float64(max(1, l.replicas.Load()))
	return c
}

// base is the bucket scope s plans on before effective lowers it to a learned limit: the
// configured one, or with FollowGHL the window GHL advertised to the scope, once known.
// Both the Go and the Lua arithmetic then treat it as the configured bucket; a lower
// window learned later lowers it on the next decision.
func (l *Limiter) base(s *scope) limits {
	if !l.cfg.FollowGHL {
		return l.lim
	}
	s.mu.Lock()
	lmax, lint := s.lmax, s.lint
	s.mu.Unlock()
	return l.baseFor(lmax, lint)
}

// baseFor is base for a scope that learned lmax per lint (0: none).
func (l *Limiter) baseFor(lmax, lint float64) limits {
	if l.cfg.FollowGHL {
		if f, ok := followed(lmax, lint, l.cfg.FollowReserve); ok {
			return f
		}
	}
	return l.lim
}

// warmReserve is WarmReserve in proportion to scope s's base bucket: the decision scales it
// further to the bucket in force, so a followed bucket keeps the configured fraction for
// the app rather than a reserve as large as its whole (smaller) burst.
func (l *Limiter) warmReserve(s *scope) float64 {
	r := float64(l.cfg.WarmReserve)
	if b := l.base(s); b.burst != l.lim.burst {
		r = math.Floor(r * b.burst / l.lim.burst)
	}
	return r
}

func (l *Limiter) effectiveOf(s *scope) limits {
	b := l.base(s)
	s.mu.Lock()
	defer s.mu.Unlock()
	return b.effective(s.lmax, s.lint)
}

// Charge takes n tokens of scope for calls that already went upstream on another scope's
// budget, without waiting: the bucket goes into debt if it must, and later requests wait
// for it. The proxy charges a token's claims the calls it made before GHL vouched for them
// (identity.Credential.LimitKey), so the claims' window still counts every call.
func (l *Limiter) Charge(scopeKey string, n int) {
	if n < 1 {
		return
	}
	a := takeArgs{n: float64(n), mode: modeReserve, maxWait: math.MaxFloat64}
	l.take(context.Background(), l.scope(scopeKey), a, l.cfg.Now())
}

// Stats lists the scopes this replica has seen, as far as it knows them.
func (l *Limiter) Stats() []ScopeStats {
	l.mu.Lock()
	ss := make([]*scope, 0, len(l.scopes))
	for _, s := range l.scopes {
		ss = append(ss, s)
	}
	l.mu.Unlock()
	now := l.cfg.Now()
	out := make([]ScopeStats, 0, len(ss))
	for _, s := range ss {
		out = append(out, l.statsOf(s, now))
	}
	return out
}

func (l *Limiter) statsOf(s *scope, now time.Time) ScopeStats {
	st := s.stats(now, l.cfg.DailyLimit)
	st.DailyPace, _ = l.pace(s, Interactive, now)
	return st
}

// Scope is one scope's entry of Stats, for /_ghlproxy/explain; false if this replica has not
// seen the scope.
func (l *Limiter) Scope(scopeKey string) (ScopeStats, bool) {
	l.mu.Lock()
	s := l.scopes[scopeKey]
	l.mu.Unlock()
	if s == nil {
		return ScopeStats{}, false
	}
	return l.statsOf(s, l.cfg.Now()), true
}

func (l *Limiter) scope(key string) *scope {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.scopes[key]
	if s == nil {
		s = newScope(key, bucketKey(l.cfg.Prefix, key), l.lim)
		s.touched = l.cfg.Now()
		l.scopes[key] = s
	}
	return s
}

// prune forgets scopes idle for longer than idle with nobody waiting.
func (l *Limiter) prune(idle time.Duration) {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, s := range l.scopes {
		if s.idle(now, idle) {
			delete(l.scopes, k)
			l.mem.forget(k)
		}
	}
}
