package cache

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/identity"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

var resolver = identity.NewResolver("cache test secret")

func credOf(token string) *identity.Credential { return resolver.Resolve("Bearer " + token) }

// clock is a fake clock that starts at the real time, so that Redis TTLs derived from it are
// sane.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func answer(body string, at time.Time) *upstream.Response {
	return &upstream.Response{
		Status: 200,
		Header: http.Header{"Content-Type": {"application/json"}},
		Body:   []byte(body),
		Date:   at,
	}
}

// watcher records the listener's events so a test can wait for one with a deadline.
type watcher struct {
	mu     sync.Mutex
	events []event
	notify chan struct{}
}

func newWatcher() *watcher { return &watcher{notify: make(chan struct{}, 1)} }

func (w *watcher) observe(ev event) {
	w.mu.Lock()
	w.events = append(w.events, ev)
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *watcher) mark() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.events)
}

// waitFor waits until an event after mark satisfies pred, failing the test after within.
func (w *watcher) waitFor(t testing.TB, from int, within time.Duration, what string, pred func(event) bool) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		for _, ev := range w.events[from:] {
			if pred(ev) {
				w.mu.Unlock()
				return
			}
		}
		from = len(w.events)
		w.mu.Unlock()
		select {
		case <-w.notify:
		case <-deadline.C:
			t.Fatalf("%s: not seen within %s", what, within)
		}
	}
}

type replica struct {
	*Cache
	w *watcher
	m *metrics.Metrics
}

func newReplica(t testing.TB, rdb redis.UniversalClient, cfg Config) *replica {
	t.Helper()
	w := newWatcher()
	cfg.observe = w.observe
	m := metrics.New()
	c, err := New(cfg, rdb, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	r := &replica{Cache: c, w: w, m: m}
	if rdb != nil {
		r.waitCoherent(t)
	}
	return r
}

// waitCoherent waits until the replica's heartbeat has come back, so in-process entries are
// served.
func (r *replica) waitCoherent(t testing.TB) {
	t.Helper()
	from := 0
	for !r.coherent(r.now().UnixNano()) {
		r.w.waitFor(t, from, 5*time.Second, "heartbeat", func(e event) bool { return e.kind == "ping" })
		from = r.w.mark()
	}
}

func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

func mustGet(t testing.TB, c *replica, key string, cred *identity.Credential) *Entry {
	t.Helper()
	e, err := c.Get(context.Background(), key, cred)
	if err != nil {
		t.Fatalf("get %s: %v", key[:8], err)
	}
	return e
}

func mustSet(t testing.TB, c *replica, key string, cred *identity.Credential, resp *upstream.Response, p Policy) {
	t.Helper()
	if err := c.Set(context.Background(), key, cred, resp, p); err != nil {
		t.Fatalf("set %s: %v", key[:8], err)
	}
}

func body(e *Entry) string {
	if e == nil {
		return "<miss>"
	}
	return string(e.Resp.Body)
}

// fp is a stand-in fingerprint: 64 hex characters, like fingerprint.Of.
func fp(s string) string { return tagID("fp", s) + tagID("fp2", s) }
