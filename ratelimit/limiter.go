package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/metrics"
)

// Limiter is the rate limiter of one replica. With a Redis client every decision is made by
// one script on the shared bucket; while Redis is unreachable, on a local bucket holding this
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

// Wait takes n tokens of scope (the credential's ScopeKey, already hashed) for a request of
// priority p, queueing up to MaxWait (or ctx's deadline, if sooner). It returns
// *RejectedError when the tokens cannot be had in time — decided up front from the queue,
// not after waiting — and ctx.Err() when ctx ends first. A reserved token is not returned
// when ctx ends during the wait.
func (l *Limiter) Wait(ctx context.Context, scopeKey string, n int, p Priority) (Grant, error) {
	if n < 1 {
		n = 1
	}
	if p < Interactive || p > Warm {
		p = Background // not a lane: never ahead of the app's requests
	}
	if err := ctx.Err(); err != nil {
		return Grant{}, err
	}
	s := l.scope(scopeKey)
	start := l.cfg.Now()
	cost, refused := l.pace(s, p, start)
	if refused {
		return Grant{}, l.dailyRejection(s)
	}
	w := &wait{l: l, s: s, ctx: ctx, start: start, n: n, cost: cost, p: p, maxWait: l.cfg.MaxWait}
	if dl, ok := ctx.Deadline(); ok {
		w.maxWait = min(w.maxWait, time.Until(dl)) // deadlines are on the real clock
	}
	if d, ok := ctx.Value(maxWaitKey{}).(time.Duration); ok {
		w.maxWait = min(w.maxWait, d)
	}
	defer w.done()
	var g Grant
	var err error
	if p == Interactive {
		g, err = w.reserve(start)
	} else {
		g, err = w.queue()
	}
	if err == nil {
		l.waitHist[p].Observe(g.Waited.Seconds())
	}
	return g, err
}

// wait is one call of Wait.
type wait struct {
	l       *Limiter
	s       *scope
	ctx     context.Context
	start   time.Time
	n       int
	cost    float64 // tokens each of the n costs: 1, more when the day is paced (pacing.go)
	p       Priority
	maxWait time.Duration
	queued  bool
	entry   *queueEntry
}

// markQueued counts the request as waiting (queue depth, in all and in its lane) from its
// first sleep on.
func (w *wait) markQueued() {
	if !w.queued {
		w.queued = true
		w.l.m.QueueDepth.WithLabelValues("ratelimit").Inc()
		w.l.laneDepth[w.p].Inc()
		w.s.waiting[w.p].Add(1)
	}
}

func (w *wait) done() {
	if w.queued {
		w.l.m.QueueDepth.WithLabelValues("ratelimit").Dec()
		w.l.laneDepth[w.p].Dec()
		w.s.waiting[w.p].Add(-1)
	}
	if w.entry != nil {
		w.s.dequeue(w.entry)
	}
}

func (w *wait) args(mode int, maxWait time.Duration) takeArgs {
	return takeArgs{
		n: float64(w.n) * w.cost, mode: mode, maxWait: float64(maxWait.Microseconds()),
		warmReserve: w.l.warmReserve(w.s), dailyReserve: float64(w.l.cfg.DailyReserve),
	}
}

func (w *wait) elapsed() time.Duration { return w.l.cfg.Now().Sub(w.start) }

// reserve is the interactive path: one decision that grants now or reserves a future slot,
// then one sleep. If GHL pauses the scope (429, Remaining 0) while the request sleeps and its
// slot lies inside the pause, the slot was planned on a budget GHL just contradicted: it asks
// the bucket again and lands after the pause, behind what the bucket already promised, one
// emission interval after the previous waiter. Nothing is given back: the pause already
// emptied the bucket up to its end, which swallowed the voided slots (giving them back as
// well let every waiter of the pause take the same slot, its end, and all leave at once).
// A slot after the pause's end still holds.
//
// now is when the request asks (its start, or later after a pause); a reservation made, it
// leaves the local queue (if it was in one) so the next waiter can ask.
func (w *wait) reserve(now time.Time) (Grant, error) {
	for {
		_, paused := w.s.pause()
		d, fb := w.l.take(w.ctx, w.s, w.args(modeReserve, w.maxWait-now.Sub(w.start)), now)
		if !d.granted {
			return Grant{}, w.l.rejection(d, micros(d.wait))
		}
		w.leaveQueue()
		if d.wait <= 0 {
			return Grant{Waited: now.Sub(w.start), Remaining: tokensLeft(d.tokens), Fallback: fb}, nil
		}
		// The slot on the local clock, from before the call: with Redis it is a little later,
		// so a slot near a pause's end counts as inside it.
		slot := now.Add(micros(d.wait))
		again, err := w.sleepReserved(micros(d.wait), slot, paused)
		if err != nil {
			return Grant{}, err
		}
		if !again {
			return Grant{Waited: w.elapsed(), Remaining: tokensLeft(d.tokens), Fallback: fb}, nil
		}
		now = w.l.cfg.Now()
	}
}

var errPaused = errors.New("ratelimit: scope paused")

// sleepReserved sleeps until a reserved slot; again reports that a pause announced meanwhile
// covers the slot.
func (w *wait) sleepReserved(d time.Duration, slot time.Time, paused <-chan struct{}) (again bool, err error) {
	w.markQueued()
	ctx, cancel := context.WithCancelCause(w.ctx)
	defer cancel(nil)
	go func() {
		for {
			select {
			case <-paused:
			case <-ctx.Done():
				return
			}
			var end time.Time
			end, paused = w.s.pause()
			if slot.Before(end.Add(pauseSlack)) {
				cancel(errPaused)
				return
			}
		}
	}()
	if err := w.l.sleep(ctx, d); err != nil {
		if w.ctx.Err() == nil && context.Cause(ctx) == errPaused {
			return true, nil
		}
		return false, err
	}
	return false, nil
}

// queue is the background and warm path: the replica's background and warm requests of the
// scope line up locally (background first, then arrival order), and only the head asks the
// bucket, which grants only tokens that are free now; otherwise the head sleeps for as long
// as the bucket says and asks again. Interactive reservations therefore always go first:
// background work never delays the app's own requests, and under a demand above the budget
// it is refused at its wait bound rather than served before them.
func (w *wait) queue() (Grant, error) {
	if w.p == Warm {
		if dr := w.s.dailyRemaining(); dr >= 0 && dr < float64(w.l.cfg.DailyReserve) {
			return Grant{}, w.l.dailyRejection(w.s)
		}
	}
	w.entry = w.s.enqueue(w.p)
	mode := modeOf(w.p)
	for {
		if err := w.awaitHead(); err != nil {
			return Grant{}, err
		}
		now := w.l.cfg.Now()
		d, fb := w.l.take(w.ctx, w.s, w.args(mode, 0), now)
		if d.dailyRefused {
			return Grant{}, w.l.dailyRejection(w.s)
		}
		if d.granted {
			if d.wait > 0 { // a group larger than the burst reserved its slot
				w.markQueued()
				if err := w.l.sleep(w.ctx, micros(d.wait)); err != nil {
					return Grant{}, err
				}
			}
			return Grant{Waited: w.elapsed(), Remaining: tokensLeft(d.tokens), Fallback: fb}, nil
		}
		retry := micros(d.wait)
		if w.elapsed()+retry > w.maxWait {
			return Grant{}, w.l.rejection(d, retry)
		}
		w.markQueued()
		if err := w.l.sleep(w.ctx, retry); err != nil {
			return Grant{}, err
		}
	}
}

// leaveQueue takes the request out of the scope's local queue (background and warm) once it
// holds a reservation: the next waiter need not wait for its slot to pass.
func (w *wait) leaveQueue() {
	if w.entry != nil {
		w.s.dequeue(w.entry)
		w.entry = nil
	}
}

// awaitHead blocks until the request is first in its scope's local queue.
func (w *wait) awaitHead() error {
	for {
		head, changed := w.s.isHead(w.entry)
		if head {
			return nil
		}
		w.markQueued()
		left := w.maxWait - w.elapsed()
		if left <= 0 {
			return w.l.rejection(decision{eff: w.l.effectiveOf(w.s)}, time.Duration(float64(w.n)*w.l.effectiveOf(w.s).T)*time.Microsecond)
		}
		t := time.NewTimer(left)
		select {
		case <-changed:
			t.Stop()
		case <-t.C:
		case <-w.ctx.Done():
			t.Stop()
			return w.ctx.Err()
		}
	}
}

// pauseSlack: pause ends closer than this are the same pause, seen a round trip apart.
const pauseSlack = 5 * time.Millisecond

func tokensLeft(t float64) int { return max(0, int(math.Floor(t))) }

// micro is t on the buckets' µs scale.
func micro(t time.Time) float64 { return float64(t.UnixNano()) / 1e3 }

func micros(us float64) time.Duration {
	return time.Duration(math.Ceil(us)) * time.Microsecond
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rejection builds the sidecar's 429 from a decision: GHL's learned window when known,
// else what the bucket allows per GHL's default window.
func (l *Limiter) rejection(d decision, retry time.Duration) *RejectedError {
	e := &RejectedError{RetryAfter: retry, Remaining: tokensLeft(d.tokens), Interval: ghlWindow}
	if d.lmax > 0 && d.lint > 0 {
		e.Limit, e.Interval = int(d.lmax), time.Duration(d.lint)*time.Millisecond
	} else if d.eff.T > 0 {
		e.Limit = int(d.eff.burst + float64(ghlWindow.Microseconds())/d.eff.T)
	}
	return e
}

// dailyRetry is the Retry-After of a warm request refused by the daily reserve: GHL does not
// say when its day resets, so the warming loop just tries again later.
const dailyRetry = time.Minute

func (l *Limiter) dailyRejection(s *scope) *RejectedError {
	e := l.rejection(decision{eff: l.effectiveOf(s)}, dailyRetry)
	return e
}

// take makes one decision: on the shared bucket when Redis is healthy, else on the local one.
func (l *Limiter) take(ctx context.Context, s *scope, a takeArgs, now time.Time) (decision, bool) {
	if l.rdb != nil && !l.br.isOpen() {
		leasing := l.cfg.Lease > 0 && a.mode == modeReserve
		if leasing {
			if d, ok := s.spendLease(a.n, now); ok {
				s.demand(now, l.cfg.Lease)
				return d, false
			}
			s.asking.Add(1)
			defer s.asking.Add(-1)
		}
		s.redisMu.Lock()
		var gen uint64
		if leasing {
			// The call this one queued behind may have brought a lease.
			now := l.cfg.Now()
			want := s.demand(now, l.cfg.Lease)
			if d, ok := s.spendLease(a.n, now); ok {
				s.redisMu.Unlock()
				return d, false
			}
			// want counts requests; a lease holds tokens (a paced request costs several).
			a.lease, gen = math.Min(leaseMax, want*a.n), s.leaseGen()
		}
		asked := l.cfg.Now()
		d, err := l.redisCall(ctx, func(ctx context.Context) (decision, error) {
			return redisTake(ctx, l.rdb, s.key, l.base(s), a)
		})
		if err == nil {
			s.update(d, l.cfg.Now(), false)
			if d.leased > 0 {
				// Alive from before the call: never longer than Lease after Redis granted it.
				s.grantLease(d.leased, asked.Add(l.cfg.Lease), gen)
			}
		}
		s.redisMu.Unlock()
		if err == nil {
			return d, false
		}
		l.redisFailed(err)
		a.lease = 0 // nothing keeps a fallback bucket's lease
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

// register adds or refreshes this replica in the replica set and reads the count.
func (l *Limiter) register() error {
	ctx, cancel := context.WithTimeout(context.Background(), l.probeTimeout())
	defer cancel()
	n, err := registerScript.Run(ctx, l.rdb, []string{replicasKey(l.cfg.Prefix)},
		l.cfg.ReplicaID, l.cfg.ReplicaTTL.Milliseconds()).Int64()
	if err != nil {
		return err
	}
	l.replicas.Store(max(1, n))
	return nil
}

// replicaRefresh is how often a healthy replica re-reads the replica count (and refreshes its
// own registration, in the same script): the fallback share is only right if every replica
// knows the count when Redis goes away, and a replica that started first must learn of the
// others within a second, not a third of the TTL (5 s), or it falls back with the whole
// budget. One small script per replica per second.
const replicaRefresh = time.Second

func (l *Limiter) beat() time.Duration { return min(replicaRefresh, l.cfg.ReplicaTTL/3) }

// maintain runs until Close: the replica heartbeat, the probe that closes the breaker when
// Redis answers again, and forgetting idle scopes.
func (l *Limiter) maintain() {
	defer l.wg.Done()
	tick := time.NewTicker(l.cfg.ProbeInterval)
	defer tick.Stop()
	lastBeat, lastPrune := time.Now(), time.Now()
	for {
		select {
		case <-l.done:
			return
		case <-tick.C:
		}
		if l.rdb != nil {
			switch {
			case l.br.isOpen():
				if l.register() == nil && l.handBack() == nil {
					l.br.reset()
					l.leaveDegraded()
					lastBeat = time.Now()
				}
			case time.Since(lastBeat) >= l.beat():
				if err := l.register(); err != nil {
					l.redisFailed(err)
				} else {
					lastBeat = time.Now()
				}
			}
		}
		if time.Since(lastPrune) >= time.Minute {
			l.prune(time.Hour)
			lastPrune = time.Now()
		}
	}
}

// Observe folds one upstream response of scope into the bucket: GHL's X-RateLimit-* headers
// teach the real limit (which can be lower than configured) and how much of the window other
// clients left; a 429 or Remaining 0 pauses the scope for every replica until GHL's window
// allows (X-RateLimit-Interval-Milliseconds, else 10 s). On Redis, a response that tells the
// shared bucket nothing new (scope.news) costs no round trip.
func (l *Limiter) Observe(scopeKey string, status int, h http.Header) {
	o := observation{
		lmax: headerNum(h, "X-RateLimit-Max", 0), lint: headerNum(h, "X-RateLimit-Interval-Milliseconds", 0),
		remaining: headerNum(h, "X-RateLimit-Remaining", -1),
		dr:        headerNum(h, "X-RateLimit-Daily-Remaining", -1), dl: headerNum(h, "X-RateLimit-Limit-Daily", -1),
		pauseDefault: float64(ghlWindow.Milliseconds()),
	}
	o.pause = status == http.StatusTooManyRequests || o.remaining == 0
	if !o.pause && o.lmax <= 0 && o.remaining < 0 && o.dr < 0 && o.dl < 0 {
		return // nothing to learn (no rate-limit headers)
	}
	s := l.scope(scopeKey)
	now := l.cfg.Now()
	s.learn(o, now)
	if l.rdb != nil && !l.br.isOpen() {
		if !s.news(o, now) {
			return
		}
		s.redisMu.Lock()
		d, err := l.redisCall(context.Background(), func(ctx context.Context) (decision, error) {
			return redisObserve(ctx, l.rdb, s.key, l.base(s), o)
		})
		if err == nil {
			s.update(d, l.cfg.Now(), false)
			s.remember(o, now)
		}
		s.redisMu.Unlock()
		if err == nil {
			return
		}
		l.redisFailed(err)
	}
	c, fb := l.base(s), false
	if l.rdb != nil {
		c, fb = l.shareOf(c), true
	}
	now = l.cfg.Now()
	d := l.mem.observe(s, c, o, micro(now))
	s.update(d, now, fb)
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

func headerNum(h http.Header, name string, missing float64) float64 {
	v := h.Get(name)
	if v == "" {
		return missing
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 {
		return missing
	}
	return f
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
