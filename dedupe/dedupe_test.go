package dedupe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/poll"

	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// ghl is a stand-in for the contacts endpoint: every POST creates a contact with a new id.
// gate, when set, holds each request until it is closed.
type ghl struct {
	srv     *httptest.Server
	creates atomic.Int64
	gate    chan struct{}
	arrived chan struct{} // one value per request that reached the handler
}

func newGHL(t *testing.T) *ghl {
	t.Helper()
	g := &ghl{arrived: make(chan struct{}, 1024)}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.arrived <- struct{}{}
		if g.gate != nil {
			<-g.gate
		}
		n := g.creates.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-RateLimit-Remaining", "99")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"contact":{"id":"c-%d"}}`, n)
	}))
	t.Cleanup(g.srv.Close)
	return g
}

// create is a fetch that POSTs to the stand-in, marking the write sent right before it
// leaves (as the proxy does with Options.SentByFetch).
func (g *ghl) create(ctx context.Context, at *Attempt) (*upstream.Response, error) {
	if err := at.MarkSent(); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.srv.URL+"/contacts/", strings.NewReader(`{"email":"a@b.c"}`))
	if err != nil {
		return nil, err
	}
	res, err := g.srv.Client().Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	return &upstream.Response{Status: res.StatusCode, Header: res.Header, Body: body, Date: time.Now()}, nil
}

// testKey seals what the tests' calls leave in Redis (a credential's EncKey in production).
var testKey = [32]byte{1, 2, 3}

func testConfig() Config {
	return Config{Window: 30 * time.Second, WaitBound: 10 * time.Second, CallTimeout: 10 * time.Second, LeaseTTL: time.Second}
}

func redisClient(t *testing.T, s *redistest.Server) redis.UniversalClient {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { c.Close() })
	return c
}

func newFold(t testing.TB, cfg Config, rdb redis.UniversalClient) (*Fold, *metrics.Metrics) {
	t.Helper()
	m := metrics.New()
	f, err := New(cfg, rdb, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, m
}

func saved(m *metrics.Metrics) int {
	var d dto.Metric
	if err := m.UpstreamSaved.WithLabelValues(metrics.SavedDedupe).Write(&d); err != nil {
		panic(err)
	}
	return int(d.GetCounter().GetValue())
}

// waitFor waits for a condition that other goroutines or Redis make true; it fails the
// test if it does not hold within 5 s. Test outcomes never depend on how long it took.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 5*time.Second, what, cond)
}

func inFlight(f *Fold, key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[key] != nil
}

// waitLooked waits until f's call of key has looked in Redis.
func waitLooked(t *testing.T, f *Fold, key string) {
	t.Helper()
	f.mu.Lock()
	looked := f.calls[key].looked
	f.mu.Unlock()
	select {
	case <-looked:
	case <-time.After(10 * time.Second):
		t.Fatalf("the call of %s never looked in Redis", key)
	}
}

// waitersOf is how many callers on f wait for its call of key.
func waitersOf(f *Fold, key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.calls[key]; c != nil {
		return c.waiters
	}
	return 0
}

func localReplay(f *Fold, key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.replay.get(key, f.now())
	return ok
}

func exists(t *testing.T, s *redistest.Server, key string) bool {
	t.Helper()
	r, err := s.Do("EXISTS", key)
	if err != nil {
		t.Fatal(err)
	}
	return r == "1"
}

type result struct {
	resp *upstream.Response
	out  Outcome
	err  error
}

func goDo(ctx context.Context, f *Fold, key string, o Options, fetch func(context.Context, *Attempt) (*upstream.Response, error)) <-chan result {
	ch := make(chan result, 1)
	go func() {
		r, out, err := f.Do(ctx, key, o, fetch)
		ch <- result{r, out, err}
	}()
	return ch
}

func TestConcurrentIdenticalWritesAcrossReplicasSendOnce(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	g := newGHL(t)
	g.gate = make(chan struct{})
	var folds [3]*Fold
	var ms [3]*metrics.Metrics
	for i := range folds {
		folds[i], ms[i] = newFold(t, testConfig(), rdb)
	}
	const n = 200
	const key = "post-contacts-fp"
	o := Options{Key: &testKey, Write: true, SentByFetch: true}
	var wg sync.WaitGroup
	results := make([]result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, out, err := folds[i%3].Do(context.Background(), key, o, g.create)
			results[i] = result{r, out, err}
		}()
	}
	// Hold the one upstream call until every replica has the call in flight, so most
	// callers share it rather than replay it.
	<-g.arrived
	for _, f := range folds {
		waitFor(t, "every replica to join the call", func() bool { return inFlight(f, key) })
	}
	close(g.gate)
	wg.Wait()

	if got := g.creates.Load(); got != 1 {
		t.Fatalf("upstream saw %d creates, want 1", got)
	}
	count := map[Outcome]int{}
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("caller %d: %v", i, r.err)
		}
		if r.resp.Status != 201 || string(r.resp.Body) != `{"contact":{"id":"c-1"}}` {
			t.Fatalf("caller %d got %d %s", i, r.resp.Status, r.resp.Body)
		}
		if r.resp.Header.Get("X-RateLimit-Remaining") != "99" {
			t.Fatalf("caller %d lost upstream headers: %v", i, r.resp.Header)
		}
		count[r.out]++
	}
	if count[Leader] != 1 || count[Shared]+count[Replay] != n-1 {
		t.Fatalf("outcomes %v, want 1 leader and %d shared or replay", count, n-1)
	}
	if sum := saved(ms[0]) + saved(ms[1]) + saved(ms[2]); sum != n-1 {
		t.Fatalf("upstream_calls_saved_total{reason=dedupe} = %d, want %d", sum, n-1)
	}
	t.Logf("outcomes: %v", count)

	// A retry through any replica within the window is replayed; upstream sees nothing.
	for _, f := range folds {
		r, out, err := f.Do(context.Background(), key, o, g.create)
		if err != nil || out != Replay || string(r.Body) != `{"contact":{"id":"c-1"}}` {
			t.Fatalf("retry: %v %v %v", out, err, r)
		}
	}
	if got := g.creates.Load(); got != 1 {
		t.Fatalf("upstream saw %d creates after retries, want 1", got)
	}
}

func TestReplayWithinWindowThenUpstreamAgain(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	g := newGHL(t)
	cfg := testConfig()
	a, _ := newFold(t, cfg, rdb)
	b, _ := newFold(t, cfg, rdb)
	const key = "k-window"
	o := Options{Key: &testKey, Write: true, SentByFetch: true, Window: 300 * time.Millisecond}

	_, out, err := a.Do(context.Background(), key, o, g.create)
	if err != nil || out != Leader {
		t.Fatalf("first: %v %v", out, err)
	}
	for _, f := range []*Fold{b, a, b} {
		r, out, err := f.Do(context.Background(), key, o, g.create)
		if err != nil || out != Replay || string(r.Body) != `{"contact":{"id":"c-1"}}` {
			t.Fatalf("within window: %v %v %v", out, err, r)
		}
	}
	// Wait for Redis to expire the stored answer; the in-process copies expire no later.
	waitFor(t, "the stored answer to expire", func() bool { return !exists(t, s, a.keysOf(key).result) })
	r, out, err := b.Do(context.Background(), key, o, g.create)
	if err != nil || out != Leader || string(r.Body) != `{"contact":{"id":"c-2"}}` {
		t.Fatalf("after window: %v %v %v", out, err, r)
	}
	if got := g.creates.Load(); got != 2 {
		t.Fatalf("creates = %d, want 2", got)
	}
}

// clock is a fake clock for the in-process store.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func TestEmbeddedSharedReplayAndWindow(t *testing.T) {
	f, m := newFold(t, testConfig(), nil)
	clk := &clock{now: time.Unix(1e9, 0)}
	f.now = clk.Now
	var calls atomic.Int64
	hold := make(chan struct{})
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		n := calls.Add(1)
		<-hold
		return &upstream.Response{Status: 200, Body: fmt.Appendf(nil, `{"n":%d}`, n)}, nil
	}
	first := goDo(context.Background(), f, "k", Options{Key: &testKey}, fetch)
	waitFor(t, "the leader to start", func() bool { return calls.Load() == 1 })
	second := goDo(context.Background(), f, "k", Options{Key: &testKey}, fetch)
	other := goDo(context.Background(), f, "other-key", Options{Key: &testKey}, fetch) // a different fingerprint never folds
	waitFor(t, "the other key's call", func() bool { return calls.Load() == 2 })
	close(hold)
	r1, r2, r3 := <-first, <-second, <-other
	if r1.out != Leader || r2.out != Shared || r3.out != Leader || r1.resp != r2.resp || r3.resp == r1.resp {
		t.Fatalf("outcomes %v %v %v", r1.out, r2.out, r3.out)
	}
	r, out, _ := f.Do(context.Background(), "k", Options{Key: &testKey}, fetch)
	if out != Replay || r != r1.resp {
		t.Fatalf("replay: %v", out)
	}
	clk.Advance(30 * time.Second)
	if _, out, _ := f.Do(context.Background(), "k", Options{Key: &testKey}, fetch); out != Leader || calls.Load() != 3 {
		t.Fatalf("after window: %v, %d calls", out, calls.Load())
	}
	if got := saved(m); got != 2 {
		t.Fatalf("saved = %d, want 2", got)
	}
}

func TestCallerHangingUpDoesNotCancelTheCall(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), rdb)
	hold := make(chan struct{})
	started := make(chan struct{})
	var fetchErr atomic.Value
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		close(started)
		<-hold
		fetchErr.Store(fmt.Sprint(ctx.Err()))
		return &upstream.Response{Status: 200, Body: []byte("ok")}, nil
	}
	leaderCtx, hangUp := context.WithCancel(context.Background())
	leader := goDo(leaderCtx, a, "k", Options{Key: &testKey}, fetch)
	<-started
	local := goDo(context.Background(), a, "k", Options{Key: &testKey}, fetch)
	remote := goDo(context.Background(), b, "k", Options{Key: &testKey}, fetch)
	impatientCtx, giveUp := context.WithCancel(context.Background())
	impatient := goDo(impatientCtx, b, "k", Options{Key: &testKey}, fetch)
	waitFor(t, "both waiters on the other replica", func() bool { return waitersOf(b, "k") == 2 })
	// The local waiter must have joined before the leader hangs up: a read whose every
	// caller left before it was sent is abandoned, and a caller arriving later starts anew.
	waitFor(t, "the local waiter to join", func() bool { return waitersOf(a, "k") == 2 })

	hangUp()
	if r := <-leader; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("leader who hung up: %v", r.err)
	}
	giveUp()
	if r := <-impatient; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("waiter who gave up: %v", r.err)
	}
	close(hold)
	for _, ch := range []<-chan result{local, remote} {
		r := <-ch
		if r.err != nil || string(r.resp.Body) != "ok" || r.out != Shared {
			t.Fatalf("waiter: %v %v", r.out, r.err)
		}
	}
	if got := fetchErr.Load(); got != "<nil>" {
		t.Fatalf("the fetch's context was cancelled: %v", got)
	}
}

func TestWaiterTimesOutOnItsOwn(t *testing.T) {
	f, _ := newFold(t, testConfig(), nil)
	hold := make(chan struct{})
	defer close(hold)
	started := make(chan struct{})
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		close(started)
		<-hold
		return &upstream.Response{Status: 200}, nil
	}
	leader := goDo(context.Background(), f, "k", Options{Key: &testKey}, fetch)
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, err := f.Do(ctx, "k", Options{Key: &testKey}, fetch); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiter: %v", err)
	}
	select {
	case r := <-leader:
		t.Fatalf("the leader returned early: %v", r.err)
	default:
	}
}

func TestLeaderLost(t *testing.T) {
	for _, tc := range []struct {
		name     string
		write    bool
		sent     bool // the dead leader's request had left for upstream
		takeover bool
	}{
		{name: "read", takeover: true},
		{name: "write never sent", write: true, takeover: true},
		{name: "write sent", write: true, sent: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := redistest.Start(t)
			rdb := redisClient(t, s)
			g := newGHL(t)
			cfg := testConfig()
			cfg.LeaseTTL = 300 * time.Millisecond
			dead, _ := newFold(t, cfg, rdb)
			alive, _ := newFold(t, cfg, rdb)
			o := Options{Key: &testKey, Write: tc.write, SentByFetch: true}
			const key = "k-lost"

			queued := make(chan struct{}) // the dead leader's fetch, before MarkSent
			release := make(chan struct{})
			deadFetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
				if !tc.sent {
					close(queued)
					<-release // as if waiting for the rate limiter
				}
				return g.create(ctx, at)
			}
			if tc.sent {
				g.gate = make(chan struct{})
			}
			leader := goDo(context.Background(), dead, key, o, deadFetch)
			if tc.sent {
				<-g.arrived // the request reached upstream and hangs there
			} else {
				<-queued
			}
			waiter := goDo(context.Background(), alive, key, o, g.create)
			waitFor(t, "the waiter", func() bool { return inFlight(alive, key) })
			dead.kill()

			r := <-waiter
			if tc.takeover {
				if r.err != nil || r.out != Leader || r.resp.Status != 201 {
					t.Fatalf("takeover: %v %v", r.out, r.err)
				}
			} else {
				var lost *LeaderLostError
				if !errors.As(r.err, &lost) || !lost.Sent {
					t.Fatalf("waiter of a sent write: %v %v", r.out, r.err)
				}
				// A retry within the window gets the same clear error, not a second send.
				third, _ := newFold(t, cfg, rdb)
				if _, _, err := third.Do(context.Background(), key, o, g.create); !errors.As(err, &lost) {
					t.Fatalf("retry after a lost sent write: %v", err)
				}
			}
			// Let the dead leader's goroutine end: a killed replica's request never leaves.
			if tc.sent {
				close(g.gate)
			} else {
				close(release)
			}
			<-leader
			want := int64(1)
			if !tc.write {
				want = 2 // a read may be sent twice: the dead leader's, released, and the takeover's
			}
			if got := g.creates.Load(); got != want {
				t.Fatalf("upstream saw %d creates, want %d", got, want)
			}
		})
	}
}

func TestNeverReplayed(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	for _, tc := range []struct {
		name   string
		write  bool
		resp   *upstream.Response
		err    error
		replay bool
	}{
		{name: "401", resp: &upstream.Response{Status: 401}},
		{name: "403", resp: &upstream.Response{Status: 403}},
		{name: "429 write", write: true, resp: &upstream.Response{Status: 429}},
		{name: "set-cookie", resp: &upstream.Response{Status: 200, Header: http.Header{"Set-Cookie": {"a=b"}}}},
		{name: "read 502", resp: &upstream.Response{Status: 502}},
		{name: "fetch error", err: errors.New("connection refused")},
		{name: "too big", resp: &upstream.Response{Status: 200, Body: make([]byte, 2000)}},
		{name: "read 404", resp: &upstream.Response{Status: 404}, replay: true},
		{name: "write 400", write: true, resp: &upstream.Response{Status: 400}, replay: true},
		{name: "write 504", write: true, resp: &upstream.Response{Status: 504}, replay: ReplayWriteServerErrors},
	} {
		for _, mode := range []string{"embedded", "redis"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				var client redis.UniversalClient
				if mode == "redis" {
					client = rdb
				}
				cfg := testConfig()
				cfg.MaxEntryBytes = 1000
				cfg.Prefix = "t" + newToken()
				a, _ := newFold(t, cfg, client)
				b, _ := newFold(t, cfg, client)
				var calls atomic.Int64
				fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
					calls.Add(1)
					return tc.resp, tc.err
				}
				o := Options{Key: &testKey, Write: tc.write}
				a.Do(context.Background(), "k", o, fetch)
				_, out, _ := a.Do(context.Background(), "k", o, fetch)
				if got := out == Replay; got != tc.replay {
					t.Fatalf("same replica: outcome %v, want replay %v", out, tc.replay)
				}
				if mode == "redis" {
					_, out, _ = b.Do(context.Background(), "k", o, fetch)
					if got := out == Replay; got != tc.replay {
						t.Fatalf("other replica: outcome %v, want replay %v", out, tc.replay)
					}
				}
			})
		}
	}
}

func TestSentWriteWithoutAnswerIsNotSentAgain(t *testing.T) {
	for _, mode := range []string{"embedded", "redis"} {
		t.Run(mode, func(t *testing.T) {
			var rdb redis.UniversalClient
			if mode == "redis" {
				rdb = redisClient(t, redistest.Start(t))
			}
			f, _ := newFold(t, testConfig(), rdb)
			var sends atomic.Int64
			fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
				if err := at.MarkSent(); err != nil {
					return nil, err
				}
				sends.Add(1)
				return nil, errors.New("read tcp: i/o timeout")
			}
			o := Options{Key: &testKey, Write: true, SentByFetch: true}
			if _, _, err := f.Do(context.Background(), "k", o, fetch); err == nil || err.Error() != "read tcp: i/o timeout" {
				t.Fatalf("first: %v", err)
			}
			_, out, err := f.Do(context.Background(), "k", o, fetch)
			var unc *UnconfirmedError
			if !errors.As(err, &unc) || out != Replay || sends.Load() != 1 {
				t.Fatalf("retry: %v %v, %d sends", out, err, sends.Load())
			}
		})
	}
}

func TestForgetDropsReplaysOnEveryReplica(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	folds := make([]*Fold, 3)
	for i := range folds {
		folds[i], _ = newFold(t, testConfig(), rdb)
	}
	var calls atomic.Int64
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		return &upstream.Response{Status: 200, Body: fmt.Appendf(nil, "%d", calls.Add(1))}, nil
	}
	read := Options{Key: &testKey, Tags: []string{"scope:contact:1"}}
	if _, out, _ := folds[0].Do(context.Background(), "get-contact-1", read, fetch); out != Leader {
		t.Fatalf("first read: %v", out)
	}
	for _, f := range folds[1:] {
		if _, out, _ := f.Do(context.Background(), "get-contact-1", read, fetch); out != Replay {
			t.Fatalf("replay: %v", out)
		}
		if !localReplay(f, "get-contact-1") {
			t.Fatal("no in-process copy after a replay from redis")
		}
	}
	if err := folds[2].Forget(context.Background(), []string{"scope:contact:1"}, ""); err != nil {
		t.Fatal(err)
	}
	for _, f := range folds {
		poll.Until(t, time.Second, "the in-process copy to be dropped (it may outlive Forget by a second at most)",
			func() bool { return !localReplay(f, "get-contact-1") })
	}
	r, out, _ := folds[1].Do(context.Background(), "get-contact-1", read, fetch)
	if out != Leader || string(r.Body) != "2" {
		t.Fatalf("after forget: %v %s", out, r.Body)
	}
}

func TestForgetWhileReadInFlightIsNotReplayed(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), rdb)
	hold, started := make(chan struct{}), make(chan struct{})
	var calls atomic.Int64
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		n := calls.Add(1)
		if n == 1 {
			close(started)
			<-hold
		}
		return &upstream.Response{Status: 200, Body: fmt.Appendf(nil, "answer %d", n)}, nil
	}
	read := Options{Key: &testKey, Tags: []string{"t1"}}
	first := goDo(context.Background(), a, "k", read, fetch)
	<-started
	waiter := goDo(context.Background(), b, "k", read, fetch)
	// The waiter found the leader before the Forget: it shares the answer. (Had it looked
	// after, it would lead a call of its own: it began after the write.)
	waitFor(t, "the waiter", func() bool { return inFlight(b, "k") })
	waitLooked(t, b, "k")
	if err := b.Forget(context.Background(), []string{"t1"}, ""); err != nil {
		t.Fatal(err)
	}
	close(hold)
	if r := <-first; r.err != nil || r.out != Leader {
		t.Fatalf("leader: %v %v", r.out, r.err)
	}
	if r := <-waiter; r.err != nil || r.out != Shared || string(r.resp.Body) != "answer 1" {
		t.Fatalf("concurrent waiter still shares: %v %v", r.out, r.err)
	}
	// Nobody gets the answer fetched across the write again; the next call fetches anew
	// and its answer is replayed as usual.
	for i, f := range []*Fold{b, a, b} {
		r, out, err := f.Do(context.Background(), "k", read, fetch)
		if err != nil || string(r.Body) != "answer 2" || (i == 0) != (out == Leader) {
			t.Fatalf("call %d after the forget: %v %v %q", i, out, err, r.Body)
		}
	}
}

// A write that lands while a read is in flight, with the record of an earlier forgotten
// read ('N', kept for that call's waiters) still in Redis: the tombstone cannot replace
// that record, and without naming the leader in flight its answer, fetched before the
// write, was replayed for the whole window — across later writes too, since the Forget had
// emptied the tag's index. bench/soak.sh found it: thousands of stale reads on two
// replicas, none on the embedded store.
func TestForgetOverSharedRecordWhileReadInFlight(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	a, _ := newFold(t, testConfig(), rdb)
	var calls atomic.Int64
	holds := []chan struct{}{make(chan struct{}), make(chan struct{})}
	starts := []chan struct{}{make(chan struct{}), make(chan struct{})}
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		n := calls.Add(1)
		if n <= 2 {
			close(starts[n-1])
			<-holds[n-1]
		}
		return &upstream.Response{Status: 200, Body: fmt.Appendf(nil, "answer %d", n)}, nil
	}
	read := Options{Key: &testKey, Tags: []string{"t1"}}
	ctx := context.Background()
	// 1: a read in flight across a write: its answer is stored for its waiters only ('N').
	first := goDo(ctx, a, "k", read, fetch)
	<-starts[0]
	if err := a.Forget(ctx, []string{"t1"}, ""); err != nil {
		t.Fatal(err)
	}
	close(holds[0])
	<-first
	// 2: the next read leads (the 'N' record is not replayable) and a second write lands
	// while it is in flight.
	second := goDo(ctx, a, "k", read, fetch)
	<-starts[1]
	if err := a.Forget(ctx, []string{"t1"}, ""); err != nil {
		t.Fatal(err)
	}
	close(holds[1])
	<-second
	// 3: the answer fetched across the second write must not be replayed.
	r, out, err := a.Do(ctx, "k", read, fetch)
	if err != nil || out == Replay {
		t.Fatalf("after the second write: %v %v %q (fetched across the write)", out, err, r.Body)
	}
	if string(r.Body) != "answer 3" {
		t.Fatalf("after the second write: %q, want a new fetch", r.Body)
	}
	// That new answer is replayed as usual.
	if r, out, err := a.Do(ctx, "k", read, fetch); err != nil || out != Replay || string(r.Body) != "answer 3" {
		t.Fatalf("the next call: %v %v %q", out, err, r.Body)
	}
}

// A replica's own Forget notice comes back to it over pub/sub some time after Forget
// returned. It must not spoil a read begun after the write: that read's answer is fresh.
func TestOwnForgetNoticeDoesNotSpoilLaterRead(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), rdb)
	var calls atomic.Int64
	started, hold := make(chan struct{}), make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release) // before the Folds' Close, which waits for the held fetch
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		if calls.Add(1) == 1 {
			close(started)
			<-hold
		}
		return &upstream.Response{Status: 200, Body: []byte("fresh")}, nil
	}
	ctx := context.Background()
	read := Options{Key: &testKey, Tags: []string{"t1"}}
	if err := a.Forget(ctx, []string{"t1"}, ""); err != nil {
		t.Fatal(err)
	}
	first := goDo(ctx, a, "k", read, fetch)
	<-started
	// Pub/sub keeps one publisher's order per subscriber, and b publishes after a did:
	// once a has heard b's notice, it has handled its own echo too — while the read ran.
	if err := b.Forget(ctx, []string{"unrelated"}, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to hear b's notice", func() bool { return a.forgets.Load() > 0 })
	if n := a.forgets.Load(); n != 1 {
		t.Fatalf("a counted %d notices from other replicas, want 1 (its own echo is skipped)", n)
	}
	release()
	if r := <-first; r.err != nil || r.out != Leader {
		t.Fatalf("the read: %v %v", r.out, r.err)
	}
	if r, out, err := a.Do(ctx, "k", read, fetch); err != nil || out != Replay || string(r.Body) != "fresh" {
		t.Fatalf("the next call: %v %v, want a replay of the read begun after the write", out, err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d upstream calls, want 1", n)
	}
}

func TestForgetNoticeParsesOldAndNewForms(t *testing.T) {
	for _, c := range []struct {
		payload, origin, except string
		tags                    []string
	}{
		{forgetNotice("abc", "", []string{"s:1", "s:2"}), "abc", "", []string{"s:1", "s:2"}},
		{forgetNotice("abc", "fp1", []string{"s:1"}), "abc", "fp1", []string{"s:1"}},
		{"s:1\ns:2", "", "", []string{"s:1", "s:2"}}, // a replica of an older version
		{"@abc\ns:1", "abc", "", []string{"s:1"}},    // a replica of the version before
		{"@abc", "abc", "", nil},
		{"@abc\n", "abc", "", nil},
	} {
		origin, except, tags := parseForgetNotice(c.payload)
		if origin != c.origin || except != c.except || !slices.Equal(tags, c.tags) {
			t.Errorf("parseForgetNotice(%q) = %q %q %q, want %q %q %q", c.payload, origin, except, tags, c.origin, c.except, c.tags)
		}
	}
}

// A retry-heavy workload: 40 distinct creates, each sent once and retried 4 times by
// impatient clients through three replicas, partly while the first is in flight.
func TestRetryHeavyWorkloadSavesUpstreamCalls(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	g := newGHL(t)
	var folds [3]*Fold
	var ms [3]*metrics.Metrics
	for i := range folds {
		folds[i], ms[i] = newFold(t, testConfig(), rdb)
	}
	const distinct, tries = 40, 5
	o := Options{Key: &testKey, Write: true, SentByFetch: true}
	var wg sync.WaitGroup
	for i := range distinct {
		key := fmt.Sprintf("create-%d", i)
		for j := range tries {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, _, err := folds[(i+j)%3].Do(context.Background(), key, o, g.create); err != nil {
					t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	// And every one retried once more after all finished.
	for i := range distinct {
		if _, out, err := folds[i%3].Do(context.Background(), fmt.Sprintf("create-%d", i), o, g.create); err != nil || out != Replay {
			t.Fatalf("late retry: %v %v", out, err)
		}
	}
	total := distinct * (tries + 1)
	sum := saved(ms[0]) + saved(ms[1]) + saved(ms[2])
	if got := g.creates.Load(); got != distinct || sum != total-distinct {
		t.Fatalf("upstream creates %d (want %d), saved %d (want %d)", got, distinct, sum, total-distinct)
	}
	t.Logf("%d requests, %d upstream calls, %d saved (%.0f%%)", total, g.creates.Load(), sum, 100*float64(sum)/float64(total))
}

// A Redis that refuses writes (maxmemory reached under noeviction) refuses the acquire
// before it takes a lock: the call folds within this replica and succeeds, a read and a
// write alike, and leaves no marker in Redis for other replicas to wait on.
func TestFullRedisFoldsLocally(t *testing.T) {
	s := redistest.Start(t, "--maxmemory-policy", "noeviction")
	f, _ := newFold(t, testConfig(), redisClient(t, s))
	if _, err := s.Do("CONFIG", "SET", "maxmemory", "1"); err != nil {
		t.Fatal(err)
	}
	tags := []string{"t1", "t2"}
	read := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		return &upstream.Response{Status: 200, Body: []byte("r")}, nil
	}
	if r, out, err := f.Do(context.Background(), "r", Options{Key: &testKey, Tags: tags}, read); err != nil || out != Leader || r.Status != 200 {
		t.Fatalf("read on a full Redis: %v %v", out, err)
	}
	var sent atomic.Int64
	write := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		if err := at.MarkSent(); err != nil {
			return nil, err
		}
		sent.Add(1)
		return &upstream.Response{Status: 200}, nil
	}
	o := Options{Key: &testKey, Write: true, SentByFetch: true, Tags: tags}
	if r, out, err := f.Do(context.Background(), "w", o, write); err != nil || out != Leader || r.Status != 200 || sent.Load() != 1 {
		t.Fatalf("write on a full Redis: %v %v, sent %d", out, err, sent.Load())
	}
	for _, k := range []string{"r", "w"} {
		if exists(t, s, f.keysOf(k).lock) {
			t.Errorf("a marker of %s left in the full Redis", k)
		}
	}
}

// Calls of several tags each, replayed across replicas and forgotten by two tags at once:
// on a Cluster, where each tag's index is its own slot and every script run takes one; on a
// single Redis, where one run takes all of a call's tags (luapipe.OneScript).
func TestClusterReplayAndForget(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { rdb.Close() })
	testReplayAndForgetTags(t, rdb, false)
}

func TestSingleRedisReplayAndForgetTags(t *testing.T) {
	testReplayAndForgetTags(t, redisClient(t, redistest.Start(t)), true)
}

func testReplayAndForgetTags(t *testing.T, rdb redis.UniversalClient, oneScript bool) {
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), rdb)
	if a.oneScript != oneScript {
		t.Fatalf("oneScript = %v on %T", a.oneScript, rdb)
	}
	var calls atomic.Int64
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		calls.Add(1)
		return &upstream.Response{Status: 200, Body: []byte("x")}, nil
	}
	// Keys and tags spread over slots on different nodes.
	for i := range 8 {
		key := fmt.Sprintf("key-%d", i)
		o := Options{Key: &testKey, Tags: []string{fmt.Sprintf("tag-%d", i), "common"}}
		if _, out, err := a.Do(context.Background(), key, o, fetch); err != nil || out != Leader {
			t.Fatalf("%s: %v %v", key, out, err)
		}
		if _, out, err := b.Do(context.Background(), key, o, fetch); err != nil || out != Replay {
			t.Fatalf("%s on b: %v %v", key, out, err)
		}
	}
	// Two tags, one listing every key (a search tag): all forgotten, on every node.
	if err := a.Forget(context.Background(), []string{"common", "tag-0"}, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to drop its copies", func() bool { return !localReplay(b, "key-0") && !localReplay(b, "key-7") })
	for i := range 8 {
		if _, out, _ := b.Do(context.Background(), fmt.Sprintf("key-%d", i), Options{Key: &testKey}, fetch); out != Leader {
			t.Fatalf("key-%d after forget: %v", i, out)
		}
	}
}

// After Redis comes back empty (restart, failover), a replica may have missed Forget
// notices: it drops its in-process replays once its subscription is back, and folding
// works again.
func TestRedisRestartDropsLocalReplays(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), rdb)
	var calls atomic.Int64
	fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		return &upstream.Response{Status: 200, Body: fmt.Appendf(nil, "%d", calls.Add(1))}, nil
	}
	a.Do(context.Background(), "k", Options{Key: &testKey}, fetch)
	if _, out, _ := b.Do(context.Background(), "k", Options{Key: &testKey}, fetch); out != Replay || !localReplay(b, "k") {
		t.Fatalf("replay before restart: %v", out)
	}
	s.Stop()
	s.Restart()
	waitFor(t, "the resubscribed replica to drop its copies", func() bool { return !localReplay(b, "k") })
	if _, out, err := b.Do(context.Background(), "k", Options{Key: &testKey}, fetch); err != nil || out != Leader {
		t.Fatalf("after restart: %v %v", out, err)
	}
	if _, out, err := a.Do(context.Background(), "k", Options{Key: &testKey}, fetch); err != nil || out != Replay {
		t.Fatalf("replay across replicas after restart: %v %v", out, err)
	}
}

// A live leader of a sent write whose marker expired (the replica stalled past its lease)
// restores it, and the waiters get its answer instead of *LeaderLostError.
func TestStalledLeaderOfSentWriteKeepsItsWaiters(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	g := newGHL(t)
	g.gate = make(chan struct{})
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), rdb)
	o := Options{Key: &testKey, Write: true, SentByFetch: true}
	leader := goDo(context.Background(), a, "k", o, g.create)
	<-g.arrived
	if _, err := s.Do("DEL", a.keysOf("k").lock); err != nil { // the lease ran out
		t.Fatal(err)
	}
	waiter := goDo(context.Background(), b, "k", o, g.create)
	waitFor(t, "the leader to restore its marker", func() bool { return exists(t, s, a.keysOf("k").lock) })
	close(g.gate)
	if r := <-leader; r.err != nil || r.out != Leader {
		t.Fatalf("leader: %v %v", r.out, r.err)
	}
	if r := <-waiter; r.err != nil || r.resp.Status != 201 {
		t.Fatalf("waiter: %v %v", r.out, r.err)
	}
	if got := g.creates.Load(); got != 1 {
		t.Fatalf("creates = %d", got)
	}
}
