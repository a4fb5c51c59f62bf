// Package warm keeps chosen reads in the cache before anyone asks for them: the hot data
// of a GHL app (active leads, recent conversations, open opportunities) is predictable, so
// the sidecar fetches it on a schedule with budget nobody else needs.
//
// Every warming request is served by the proxy's own http.Handler, in-process, exactly as
// a client's request would be — same route table, same cache key, same encryption, same
// link rewriting — with two differences: it carries Cache-Control: no-cache, so it
// refreshes an entry that is still fresh (and never folds into a client's call), and it is
// marked with proxy.WithPriority(ctx, ratelimit.Warm), so the limiter only gives it tokens
// above ratelimit.warm_reserve that no interactive request is waiting for, and refuses it
// once the scope's daily remaining falls below ratelimit.daily_reserve. A refused run is
// counted as skipped: the next one tries again.
//
// With Redis, replicas take turns through a lease per target, so each target is warmed once
// per interval by the whole deployment, not once per replica. Without Redis there is one
// replica and it always warms.
package warm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/proxy"
	"github.com/ghlproxy/ghlproxy/ratelimit"
)

// Target is one credential and the reads to keep warm with it.
type Target struct {
	// Name appears in logs, the lease key and /_ghlproxy/warm; never the token.
	Name string
	// Token returns the credential. It is called at every run, so a rotated token file
	// (a mounted Kubernetes secret) is picked up without a restart.
	Token func() (string, error)
	// Version is the Version header; default "2021-07-28".
	Version  string
	Requests []Request
}

// Request is one read to warm: GET, or POST of a read-only search with a JSON body.
type Request struct {
	Method, Path, Body string
}

// Config of the loop. Interval is required.
type Config struct {
	Interval time.Duration
	// Jitter: each run starts up to this much later than Interval after the previous one.
	Jitter time.Duration
	// MaxPages bounds the pages followed per request in one run. Default 1.
	MaxPages int
	Targets  []Target
	// Prefix starts the Redis lease keys. Default "ghlproxy".
	Prefix string
	// ReplicaID names this replica as the holder of a lease. Default random.
	ReplicaID string
	// ManualTTL bounds a run started by POST /_ghlproxy/warm, and is how long its lease
	// keeps other replicas from running the same target at the same time. Default 1m.
	ManualTTL time.Duration
}

// Host is the Host of every warming request. The proxy rewrites absolute next-page links
// to the host the client used, so links in warmed answers point here and the loop follows
// them by path.
const Host = "ghlproxy.warm"

// Results of a run, as in warm_runs_total{result}.
const (
	ResultOK      = "ok"
	ResultError   = "error"
	ResultSkipped = "skipped"
)

// Run is what one run of one target did.
type Run struct {
	Target  string    `json:"target"`
	Trigger string    `json:"trigger"` // "schedule" or "manual"
	Started time.Time `json:"started"`
	// DurationMs is the run's wall time in milliseconds.
	DurationMs int64  `json:"duration_ms"`
	Result     string `json:"result"`
	// Reason says why a run was skipped.
	Reason string `json:"reason,omitempty"`
	// Pages is the number of answers fetched (one per page of every request).
	Pages int `json:"pages"`
	// Entries is the number of answers the cache stored.
	Entries int      `json:"entries"`
	Errors  []string `json:"errors,omitempty"`
}

// Loop is the warming loop. Run it with Run; RunNow and Status serve the admin endpoints.
type Loop struct {
	cfg   Config
	h     http.Handler
	lease leaser
	m     *metrics.Metrics
	log   *slog.Logger

	runMu sync.Mutex // one run at a time on this replica: scheduled and manual runs queue

	mu      sync.Mutex
	last    map[string][]Run // newest first, keepRuns per target
	success map[string]time.Time
	next    time.Time
}

// reasonRefused is the Reason of a run the limiter refused.
const reasonRefused = "the rate limiter refused warming (daily reserve reached, or no spare tokens within ratelimit.max_wait)"

// keepRuns is how many runs per target GET /_ghlproxy/warm shows.
const keepRuns = 5

// leaser coordinates replicas: acquire reports whether this replica may run target now.
type leaser interface {
	acquire(ctx context.Context, target string, ttl time.Duration) (bool, error)
	release(ctx context.Context, target string)
	acquireManual(ctx context.Context, target string, ttl time.Duration) (release func(), ok bool, err error)
}

// New builds the loop. h is the proxy handler the requests are served by; rdb is the
// replicas' shared Redis, or nil for a single replica.
func New(cfg Config, h http.Handler, rdb Redis, m *metrics.Metrics, log *slog.Logger) (*Loop, error) {
	if cfg.Interval <= 0 {
		return nil, errors.New("warm.interval: must be positive to run the warming loop")
	}
	if cfg.Jitter < 0 || cfg.Jitter > cfg.Interval {
		return nil, fmt.Errorf("warm.jitter: must be between 0 and warm.interval (%s)", cfg.Interval)
	}
	if cfg.MaxPages <= 0 {
		cfg.MaxPages = 1
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "ghlproxy"
	}
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = strconv.FormatUint(rand.Uint64(), 36)
	}
	if cfg.ManualTTL <= 0 {
		cfg.ManualTTL = time.Minute
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	seen := map[string]bool{}
	for i, t := range cfg.Targets {
		if t.Name == "" || seen[t.Name] {
			return nil, fmt.Errorf("warm.targets[%d].name: empty or used twice", i)
		}
		seen[t.Name] = true
		if t.Token == nil {
			return nil, fmt.Errorf("warm.targets[%d]: no token source", i)
		}
		if t.Version == "" {
			cfg.Targets[i].Version = "2021-07-28"
		}
	}
	l := &Loop{cfg: cfg, h: h, m: m, log: log, last: map[string][]Run{}, success: map[string]time.Time{}}
	if rdb == nil {
		l.lease = solo{}
	} else {
		l.lease = &redisLease{rdb: rdb, prefix: cfg.Prefix, id: cfg.ReplicaID}
	}
	return l, nil
}

// Run warms every target at once, then every Interval plus up to Jitter, until ctx ends.
func (l *Loop) Run(ctx context.Context) {
	// Held a little past the next run, so the holder renews it before anyone else can take
	// it; if the holder goes away, another replica takes over within this.
	ttl := l.cfg.Interval + l.cfg.Jitter + l.cfg.Interval/2
	for {
		start := time.Now()
		wait := l.cfg.Interval
		if l.cfg.Jitter > 0 {
			wait += rand.N(l.cfg.Jitter)
		}
		l.mu.Lock()
		l.next = start.Add(wait)
		l.mu.Unlock()
		// A run never outlasts the interval, so it never delays the lease's renewal.
		rctx, cancel := context.WithTimeout(ctx, l.cfg.Interval)
		l.runAll(rctx, "schedule", func(ctx context.Context, t Target) (func(), string, error) {
			ok, err := l.lease.acquire(ctx, t.Name, ttl)
			if err != nil || !ok {
				return nil, "another replica holds the lease", err
			}
			return func() {}, "", nil
		})
		cancel()
		t := time.NewTimer(time.Until(start.Add(wait)))
		select {
		case <-ctx.Done():
			t.Stop()
			l.releaseAll()
			return
		case <-t.C:
		}
	}
}

// releaseAll hands the scheduled leases this replica holds over on shutdown.
func (l *Loop) releaseAll() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, t := range l.cfg.Targets {
		l.lease.release(ctx, t.Name)
	}
}

// RunNow runs every target now, for POST /_ghlproxy/warm. It takes a short lease of its own
// per target (Config.ManualTTL, released when the run ends), so two replicas asked at once
// do not both run a target; a scheduled run of another replica may still overlap it, which
// only spends warming budget twice. A target whose lease is held is reported as skipped.
func (l *Loop) RunNow(ctx context.Context) []Run {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.ManualTTL)
	defer cancel()
	return l.runAll(ctx, "manual", func(ctx context.Context, t Target) (func(), string, error) {
		release, ok, err := l.lease.acquireManual(ctx, t.Name, l.cfg.ManualTTL)
		if err != nil || !ok {
			return nil, "another replica is running it now", err
		}
		return release, "", nil
	})
}

// claim decides whether this replica runs a target: a release func when it does, else why
// not.
type claim func(ctx context.Context, t Target) (release func(), reason string, err error)

func (l *Loop) runAll(ctx context.Context, trigger string, take claim) []Run {
	l.runMu.Lock()
	defer l.runMu.Unlock()
	runs := make([]Run, 0, len(l.cfg.Targets))
	for _, t := range l.cfg.Targets {
		if ctx.Err() != nil {
			break // shutting down, or the run's time is up: the next run does the rest
		}
		r := Run{Target: t.Name, Trigger: trigger, Started: time.Now()}
		release, reason, err := take(ctx, t)
		switch {
		case err != nil:
			r.Result = ResultError
			r.Errors = []string{"lease: " + err.Error()}
		case release == nil:
			r.Result, r.Reason = ResultSkipped, reason
		default:
			l.warm(ctx, t, &r)
			release()
		}
		r.DurationMs = time.Since(r.Started).Milliseconds()
		l.record(r)
		runs = append(runs, r)
	}
	return runs
}

func (l *Loop) record(r Run) {
	l.m.WarmRuns.WithLabelValues(r.Result).Inc()
	l.m.WarmEntries.Add(float64(r.Entries))
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.Result == ResultOK {
		now := time.Now()
		l.success[r.Target] = now
		l.m.WarmLastSuccess.Set(float64(now.UnixNano()) / 1e9)
	}
	runs := append([]Run{r}, l.last[r.Target]...)
	l.last[r.Target] = runs[:min(len(runs), keepRuns)]
	switch {
	case r.Result == ResultError:
		l.log.Warn("warming run failed", "target", r.Target, "errors", r.Errors, "pages", r.Pages)
	case r.Reason == reasonRefused:
		l.log.Info("warming run skipped", "target", r.Target, "reason", r.Reason)
	default:
		l.log.Debug("warming run", "target", r.Target, "result", r.Result, "reason", r.Reason,
			"pages", r.Pages, "entries", r.Entries, "duration_ms", r.DurationMs)
	}
}

// Status is GET /_ghlproxy/warm.
type Status struct {
	Interval string `json:"interval"`
	Jitter   string `json:"jitter"`
	MaxPages int    `json:"max_pages"`
	// NextRun is when this replica's next scheduled run starts.
	NextRun time.Time      `json:"next_run,omitzero"`
	Targets []TargetStatus `json:"targets"`
}

// TargetStatus is one target as this replica saw it. With several replicas, the runs are
// on whichever replica held the lease; the others show their skipped turns.
type TargetStatus struct {
	Name        string    `json:"name"`
	Requests    int       `json:"requests"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	Runs        []Run     `json:"runs"`
}

// Status reports the last runs of every target on this replica.
func (l *Loop) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Status{Interval: l.cfg.Interval.String(), Jitter: l.cfg.Jitter.String(), MaxPages: l.cfg.MaxPages, NextRun: l.next}
	for _, t := range l.cfg.Targets {
		s.Targets = append(s.Targets, TargetStatus{
			Name: t.Name, Requests: len(t.Requests), LastSuccess: l.success[t.Name],
			Runs: append([]Run{}, l.last[t.Name]...),
		})
	}
	return s
}

// warm runs one target's requests, following their pages.
func (l *Loop) warm(ctx context.Context, t Target, r *Run) {
	tok, err := t.Token()
	if err != nil {
		r.Result, r.Errors = ResultError, []string{err.Error()}
		return
	}
	auth := "Bearer " + tok
	for _, req := range t.Requests {
		if refused := l.warmRequest(ctx, t, auth, req, r); refused {
			// The limiter refuses warming for the whole scope (daily reserve, or a bucket busy
			// with interactive traffic for longer than ratelimit.max_wait): the rest of this
			// run would be refused too.
			r.Result, r.Reason = ResultSkipped, reasonRefused
			return
		}
	}
	r.Result = ResultOK
	if len(r.Errors) > 0 {
		r.Result = ResultError
	}
}

// warmRequest fetches one request and up to MaxPages-1 following pages. It reports whether
// the limiter refused it.
func (l *Loop) warmRequest(ctx context.Context, t Target, auth string, req Request, r *Run) (refused bool) {
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	path, body := req.Path, []byte(req.Body)
	for page := 1; page <= l.cfg.MaxPages; page++ {
		rec, err := l.serve(ctx, method, path, body, auth, t.Version)
		if err != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("%s %s: %v", method, req.Path, err))
			return false
		}
		if rec.status == http.StatusTooManyRequests && rec.header.Get(ghlerror.Header) == ghlerror.CauseRateLimited {
			return true
		}
		if ctx.Err() != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("%s %s: run timed out (page %d)", method, req.Path, page))
			return false
		}
		r.Pages++
		if rec.status < 200 || rec.status > 299 {
			// The status and, for the sidecar's own errors, their cause: never GHL's body,
			// which is a customer's data and would reach whoever reads /_ghlproxy/warm.
			msg := fmt.Sprintf("%s %s: page %d: status %d", method, req.Path, page, rec.status)
			if cause := rec.header.Get(ghlerror.Header); cause != "" {
				msg += " (" + cause + ")"
			}
			r.Errors = append(r.Errors, msg)
			return false
		}
		if strings.Contains(rec.header.Get("Cache-Status"), "stored") {
			r.Entries++
		}
		var ok bool
		if path, body, ok = nextPage(method, path, body, rec.body.Bytes()); !ok {
			return false
		}
	}
	return false
}

// serve sends one warming request through the proxy handler.
func (l *Loop) serve(ctx context.Context, method, path string, body []byte, auth, version string) (*recorder, error) {
	var rd io.Reader
	if len(body) > 0 {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(proxy.WithPriority(ctx, ratelimit.Warm), method, "http://"+Host+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", auth)
	req.Header.Set("Version", version)
	req.Header.Set("Accept", "application/json")
	// no-cache: fetch even when a fresh entry exists, and store the answer.
	req.Header.Set("Cache-Control", "no-cache")
	if len(body) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	req.RemoteAddr = "127.0.0.1:0"
	rec := &recorder{header: http.Header{}}
	l.h.ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec, nil
}

// recorder is the ResponseWriter of a warming request: the answer went to the cache; the
// loop keeps the status, headers and body to follow paging.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}
