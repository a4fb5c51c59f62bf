package ratelimit

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// fakeClock drives the in-process buckets and the waiters' sleeps: a test advances time and
// sees exactly which sleepers wake.
type fakeClock struct {
	mu       sync.Mutex
	now      time.Time
	sleepers []*sleeper
	total    int           // sleeps begun
	added    chan struct{} // closed and replaced when a sleeper registers or leaves
}

type sleeper struct {
	until time.Time
	d     time.Duration
	wake  chan struct{}
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1_700_000_000, 0), added: make(chan struct{})}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	s := &sleeper{until: c.now.Add(d), d: d, wake: make(chan struct{})}
	c.sleepers = append(c.sleepers, s)
	c.total++
	close(c.added)
	c.added = make(chan struct{})
	c.mu.Unlock()
	select {
	case <-s.wake:
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		for i, x := range c.sleepers {
			if x == s {
				c.sleepers = append(c.sleepers[:i], c.sleepers[i+1:]...)
				break
			}
		}
		close(c.added)
		c.added = make(chan struct{})
		c.mu.Unlock()
		return ctx.Err()
	}
}

// Advance moves time forward and wakes the sleepers now due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.sleepers[:0]
	for _, s := range c.sleepers {
		if !s.until.After(c.now) {
			close(s.wake)
		} else {
			keep = append(keep, s)
		}
	}
	c.sleepers = keep
}

// awaitSleepers blocks until n sleepers are pending and returns their durations, sorted.
func (c *fakeClock) awaitSleepers(t *testing.T, n int) []time.Duration {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		c.mu.Lock()
		if len(c.sleepers) >= n {
			ds := make([]time.Duration, len(c.sleepers))
			for i, s := range c.sleepers {
				ds[i] = s.d
			}
			c.mu.Unlock()
			sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
			return ds
		}
		added := c.added
		c.mu.Unlock()
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("%d sleepers never registered", n)
		}
	}
}

// awaitSleeps blocks until n sleeps have begun since the clock was made.
func (c *fakeClock) awaitSleeps(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		c.mu.Lock()
		total, added := c.total, c.added
		c.mu.Unlock()
		if total >= n {
			return
		}
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("%d sleeps began, want %d", total, n)
		}
	}
}

// sleeps is the number of sleeps begun.
func (c *fakeClock) sleeps() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

func newLimiter(t testing.TB, cfg Config, rdb redis.UniversalClient) (*Limiter, *metrics.Metrics) {
	t.Helper()
	m := metrics.New()
	l, err := New(cfg, rdb, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l, m
}

// embedded returns an in-process limiter on a fake clock whose sleeps the clock controls.
func embedded(t testing.TB, cfg Config) (*Limiter, *fakeClock, *metrics.Metrics) {
	t.Helper()
	c := newFakeClock()
	cfg.Now = c.Now
	l, m := newLimiter(t, cfg, nil)
	l.sleep = c.Sleep
	return l, c, m
}

func newRedisClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// recordSleeps replaces the limiter's sleep with one that records and returns at once: with
// Redis's real clock, a test then sees the waits the bucket handed out without waiting them.
func recordSleeps(l *Limiter) *[]time.Duration {
	var mu sync.Mutex
	var ds []time.Duration
	l.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		ds = append(ds, d)
		mu.Unlock()
		return ctx.Err()
	}
	return &ds
}

func startRedis(t testing.TB) (*redistest.Server, *redis.Client) {
	t.Helper()
	s := redistest.Start(t)
	return s, newRedisClient(t, s.Addr())
}

func mustWait(t *testing.T, l *Limiter, ctx context.Context, scope string, n int, p Priority) Grant {
	t.Helper()
	g, err := l.Wait(ctx, scope, n, p)
	if err != nil {
		t.Fatalf("Wait(%s, %d, %s): %v", scope, n, p, err)
	}
	return g
}

func asRejected(t *testing.T, err error) *RejectedError {
	t.Helper()
	var rej *RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("want *RejectedError, got %v", err)
	}
	return rej
}

func near(got, want, tol time.Duration) bool { return got >= want-tol && got <= want+tol }

// gaugeValue reads a gauge or counter.
func gaugeValue(t testing.TB, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Gauge != nil {
		return m.Gauge.GetValue()
	}
	return m.Counter.GetValue()
}
