package ratelimit

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// windowServer is GHL's burst limit as a real HTTP server: at most limit requests in any
// window (sliding, which is stricter than GHL's), 429 past it, X-RateLimit-* on every answer.
type windowServer struct {
	limit  int
	window time.Duration

	mu       sync.Mutex
	recent   []time.Time // accepted within the last window
	accepted []time.Time
	maxSeen  int
	rejected int
	last429  time.Time
	first429 time.Time
}

func (s *windowServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	s.mu.Lock()
	i := 0
	for i < len(s.recent) && !s.recent[i].After(now.Add(-s.window)) {
		i++
	}
	s.recent = s.recent[i:]
	status := http.StatusOK
	if len(s.recent) >= s.limit {
		s.rejected++
		status = http.StatusTooManyRequests
		if s.first429.IsZero() {
			s.first429 = now
		}
		s.last429 = now
	} else {
		s.recent = append(s.recent, now)
		s.accepted = append(s.accepted, now)
		s.maxSeen = max(s.maxSeen, len(s.recent))
	}
	remaining := s.limit - len(s.recent)
	s.mu.Unlock()
	h := w.Header()
	h.Set("X-RateLimit-Max", strconv.Itoa(s.limit))
	h.Set("X-RateLimit-Interval-Milliseconds", strconv.FormatInt(s.window.Milliseconds(), 10))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
	w.WriteHeader(status)
}

func (s *windowServer) acceptedBy(t time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, a := range s.accepted {
		if !a.After(t) {
			n++
		}
	}
	return n
}

// loadScale shortens the replica runs: every duration (Per, GHL's window, MaxWait, the run)
// is multiplied by it and the counts stay GHL's (280 per Per, burst 50, 100 per window), so
// the arithmetic under test is the real one. GHLPROXY_LONG=1 runs the full 60 s.
func loadScale() float64 {
	if os.Getenv("GHLPROXY_LONG") == "1" {
		return 1
	}
	return 1.0 / 6
}

// Three replicas on one Redis, each offered the whole budget (three times the budget in
// all) for one Per: GHL's window is never exceeded, never answers 429, and the replicas use
// at least 97% of what the bucket allows over the run (burst + rate*run).
func TestReplicasAtThreeTimesBudget(t *testing.T) {
	_, rdb := startRedis(t)
	r := replicaLoad(t, loadRun{rdb: rdb, scale: loadScale()})
	r.check(t, 0.97)
}

func TestReplicasAtThreeTimesBudgetOnCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	r := replicaLoad(t, loadRun{rdb: rdb, scale: loadScale()})
	r.check(t, 0.97)
}

// Redis killed for the middle third of the run: no request fails for it, GHL's window still
// holds (the replicas spend their shares, then hand their reservations back), and every
// replica is back on the shared bucket within 5 s of Redis returning.
func TestReplicasSurviveRedisRestart(t *testing.T) {
	srv, rdb := startRedis(t)
	r := replicaLoad(t, loadRun{rdb: rdb, scale: loadScale(), outage: srv})
	r.check(t, 0) // utilisation is reported, not required: the fallback shares are conservative
	if r.fallback == 0 {
		t.Error("no grant was made on the fallback bucket during the outage")
	}
	if r.recovered > 5*time.Second {
		t.Errorf("back on the shared bucket %s after Redis returned, want <= 5s", r.recovered)
	}
}

// GHL enforces 40 per window, the sidecar is configured for GHL's default (50 burst + 46.7
// per window) and each replica opens with 20 requests at once: the replicas learn the limit
// from the headers, and any 429s stop within one window.
func TestReplicasLearnLowerLimit(t *testing.T) {
	_, rdb := startRedis(t)
	r := replicaLoad(t, loadRun{rdb: rdb, scale: loadScale(), ghlLimit: 40, opening: 20})
	if span := r.ws.last429.Sub(r.ws.first429); span > r.ws.window {
		t.Errorf("429s went on for %s, longer than one window (%s)", span, r.ws.window)
	}
	if r.ws.maxSeen > 40 {
		t.Errorf("upstream saw %d in one window, limit 40", r.ws.maxSeen)
	}
	for i, l := range r.limiters {
		if st, _ := l.Scope("loc-1"); st.LimitMax != 40 || float64(st.Burst)+st.Rate*r.ws.window.Seconds() > 40 {
			t.Errorf("replica %d did not learn the limit: %+v", i, st)
		}
	}
}

// Three replicas offered 90% of the budget in all, in bursts of 5: leases serve most
// grants without a round trip, and GHL's window still holds with no 429.
func TestReplicasLeaseBelowBudget(t *testing.T) {
	_, rdb := startRedis(t)
	r := replicaLoad(t, loadRun{rdb: rdb, scale: loadScale(), demand: 0.3, burstOf: 5})
	r.check(t, 0) // below the budget: nothing to use to the last token
	if r.takes*3 > r.granted {
		t.Errorf("%d grants took %d shared-bucket decisions, want at most 1 in 3 with leases", r.granted, r.takes)
	}
	// The same run without leases is one decision per grant: what the counter counts is real.
	_, rdb = startRedis(t)
	r = replicaLoad(t, loadRun{rdb: rdb, scale: loadScale(), demand: 0.3, burstOf: 5, noLease: true})
	r.check(t, 0)
	if r.takes < r.granted {
		t.Errorf("without leases, %d grants took only %d decisions", r.granted, r.takes)
	}
}

type loadRun struct {
	rdb      redis.UniversalClient
	scale    float64
	ghlLimit int               // default 100
	outage   *redistest.Server // stopped for the middle third of the run
	opening  int               // requests each replica sends at once at the start
	// demand is what each replica is offered, as a share of the whole budget (default 1:
	// three times the budget in all), in bursts of burstOf requests (default 1).
	demand  float64
	burstOf int
	noLease bool // run without leases (the default lease life otherwise)
}

type loadResult struct {
	ws                 *windowServer
	used               int
	allowed, ratio     float64
	rejected, fallback int64
	unexpected         int64
	recovered          time.Duration
	limit              int
	limiters           []*Limiter
	granted, takes     int64 // grants, and decisions the shared bucket made (take scripts run)
}

func (r loadResult) check(t *testing.T, minRatio float64) {
	t.Helper()
	if r.ws.rejected != 0 {
		t.Errorf("upstream answered 429 %d times", r.ws.rejected)
	}
	if r.ws.maxSeen > r.limit {
		t.Errorf("upstream saw %d in one window, limit %d", r.ws.maxSeen, r.limit)
	}
	if r.ratio < minRatio {
		t.Errorf("used %.1f%% of the budget, want >= %.0f%%", r.ratio*100, minRatio*100)
	}
	if r.unexpected != 0 {
		t.Errorf("%d requests failed with something else than a rate-limit rejection", r.unexpected)
	}
}

func replicaLoad(t *testing.T, lr loadRun) loadResult {
	if testing.Short() {
		t.Skip("a 10 s load run (60 s with GHLPROXY_LONG=1); skipped with -short")
	}
	scaled := func(d time.Duration) time.Duration { return time.Duration(float64(d) * lr.scale) }
	const (
		replicas = 3
		rate     = 280
		burst    = 50
	)
	limit := lr.ghlLimit
	if limit == 0 {
		limit = 100
	}
	ws := &windowServer{limit: limit, window: scaled(10 * time.Second)}
	srv := httptest.NewServer(ws)
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	defer client.CloseIdleConnections()

	cfg := Config{Rate: rate, Per: scaled(time.Minute), Burst: burst, MaxWait: scaled(20 * time.Second),
		ProbeInterval: scaled(500 * time.Millisecond), Lease: scaled(100 * time.Millisecond)}
	if lr.noLease {
		cfg.Lease = 0
	}
	takes := &scriptCounter{hash: takeScript.Hash()}
	lr.rdb.AddHook(takes)
	var ls []*Limiter
	for range replicas {
		l, _ := newLimiter(t, cfg, lr.rdb)
		ls = append(ls, l)
	}
	for _, l := range ls {
		if err := l.register(); err != nil || l.Replicas() != replicas {
			t.Fatalf("replicas %d (%v)", l.Replicas(), err)
		}
	}
	run := cfg.Per
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var granted, rejected, fallback, unexpected atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	if lr.demand == 0 {
		lr.demand = 1 // each replica is offered the whole budget: three times in all
	}
	lr.burstOf = max(1, lr.burstOf)
	every := time.Duration(float64(cfg.Per) / rate / lr.demand * float64(lr.burstOf))
	for _, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			send := func() {
				wg.Add(1)
				go func() {
					defer wg.Done()
					g, err := l.Wait(ctx, "loc-1", 1, Interactive)
					var rej *RejectedError
					switch {
					case errors.As(err, &rej):
						rejected.Add(1)
						return
					case errors.Is(err, context.DeadlineExceeded):
						return // the run ended while it waited
					case err != nil:
						unexpected.Add(1)
						return
					}
					granted.Add(1)
					if g.Fallback {
						fallback.Add(1)
					}
					resp, err := client.Get(srv.URL + "/contacts/")
					if err != nil {
						t.Errorf("upstream: %v", err)
						return
					}
					resp.Body.Close()
					l.Observe("loc-1", resp.StatusCode, resp.Header)
				}()
			}
			for range lr.opening {
				send()
			}
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				for range lr.burstOf {
					send()
				}
			}
		}()
	}
	var recovered time.Duration
	if lr.outage != nil {
		sleepUntil(ctx, start.Add(run/3))
		lr.outage.Stop()
		sleepUntil(ctx, start.Add(2*run/3))
		for _, l := range ls {
			if !l.Degraded() {
				t.Error("a replica was not degraded during the outage")
			}
		}
		lr.outage.Restart()
		back := time.Now()
		for _, l := range ls {
			for l.Degraded() && time.Since(back) < 10*time.Second {
				time.Sleep(5 * time.Millisecond) // polling a state, bounded
			}
		}
		recovered = time.Since(back)
	}
	wg.Wait()
	used := ws.acceptedBy(start.Add(run))
	allowed := float64(burst) + rate*float64(run)/float64(cfg.Per)
	r := loadResult{ws: ws, used: used, allowed: allowed, ratio: float64(used) / allowed, limit: limit,
		rejected: rejected.Load(), fallback: fallback.Load(), unexpected: unexpected.Load(), recovered: recovered,
		limiters: ls, granted: granted.Load(), takes: takes.n.Load()}
	t.Logf("run %s, 3 replicas at %.1fx the budget: %d upstream calls in the run, budget allows %.0f (ratio %.3f); most in any %s window %d of %d; upstream 429s %d; sidecar rejections %d; fallback grants %d; recovered in %s; %d grants on %d shared-bucket decisions",
		run, 3*lr.demand, used, allowed, r.ratio, ws.window, ws.maxSeen, limit, ws.rejected, r.rejected, r.fallback, recovered, r.granted, r.takes)
	return r
}

// scriptCounter counts the runs of one script a Redis client sends by SHA (a NOSCRIPT
// fallback's EVAL is not counted; these scripts are loaded by the first decision).
type scriptCounter struct {
	hash string
	n    atomic.Int64
}

func (c *scriptCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *scriptCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); len(a) > 1 && cmd.Name() == "evalsha" && a[1] == c.hash {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (c *scriptCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// sleepUntil is the load's own schedule (when to kill Redis), not synchronisation.
func sleepUntil(ctx context.Context, t time.Time) {
	_ = sleepCtx(context.WithoutCancel(ctx), time.Until(t))
}
