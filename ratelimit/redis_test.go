package ratelimit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/poll"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// sharedReplicas checks that limiters on one Redis (or Cluster) spend one bucket per scope
// and learn what the others observed.
func sharedReplicas(t *testing.T, rdb redis.UniversalClient, scopes int) {
	cfg := Config{Rate: 10, Per: time.Second, Burst: 5, DailyReserve: 100, RedisTimeout: time.Second}
	a, _ := newLimiter(t, cfg, rdb)
	b, _ := newLimiter(t, cfg, rdb)
	sleeps := recordSleeps(b)
	ctx := context.Background()
	for i := range scopes {
		scope := fmt.Sprintf("scope-%d", i)
		mustWait(t, a, ctx, scope, 5, Interactive)
		g := mustWait(t, b, ctx, scope, 1, Interactive)
		if g.Fallback {
			t.Fatalf("%s: decided on the fallback bucket", scope)
		}
		if n := len(*sleeps); n != i+1 || !near((*sleeps)[i], 100*time.Millisecond, 40*time.Millisecond) {
			t.Fatalf("%s: replica b slept %v, want 100ms after a took the burst", scope, *sleeps)
		}
	}
	// The daily count a observed stops b's warming: b learns it from the script's reply.
	h := http.Header{}
	h.Set("X-RateLimit-Daily-Remaining", "42")
	a.Observe("scope-0", 200, h)
	_, err := b.Wait(ctx, "scope-0", 1, Warm)
	asRejected(t, err)
	if st, _ := b.Scope("scope-0"); st.DailyRemaining != 42 {
		t.Fatalf("b's stats: %+v", st)
	}
	if err := a.register(); err != nil || a.Replicas() != 2 {
		t.Fatalf("replicas %d (%v), want 2", a.Replicas(), err)
	}
	if a.Degraded() || b.Degraded() {
		t.Fatal("degraded on a healthy Redis")
	}
}

func TestSharedBucketAcrossReplicas(t *testing.T) {
	_, rdb := startRedis(t)
	sharedReplicas(t, rdb, 3)
}

// Every key of a scope carries the hash tag {rl:<scope>}, so each script touches one slot.
func TestSharedBucketOnCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	sharedReplicas(t, rdb, 24) // 24 scopes land on all three masters
	nodes := map[string]bool{}
	for i := range 24 {
		key := bucketKey("ghlproxy", fmt.Sprintf("scope-%d", i))
		cl, err := rdb.MasterForKey(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := cl.Exists(context.Background(), key).Result(); err != nil || n != 1 {
			t.Fatalf("%s not on its slot's master: %d %v", key, n, err)
		}
		nodes[cl.Options().Addr] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("scopes used %d of 3 masters", len(nodes))
	}
}

// logLines counts log records by message.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

// Redis killed: every decision still succeeds, at once, on the replica's share of the bucket;
// the limiter reports degraded with one log line, and is back on the shared bucket within
// 5 s of Redis returning.
func TestRedisDownFallsBackAndRecovers(t *testing.T) {
	srv, rdb := startRedis(t)
	cfg := Config{Rate: 10, Per: time.Second, Burst: 5, MaxWait: 5 * time.Second, ProbeInterval: 100 * time.Millisecond, RedisTimeout: 100 * time.Millisecond}
	other, _ := newLimiter(t, cfg, rdb) // a second replica: the share is half
	_ = other
	var logs logLines
	m := metrics.New()
	l, err := New(cfg, rdb, m, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	if l.Replicas() != 2 {
		t.Fatalf("replicas %d, want 2", l.Replicas())
	}
	var slots []time.Time // when each reservation becomes valid
	l.sleep = func(ctx context.Context, d time.Duration) error {
		slots = append(slots, time.Now().Add(d))
		return nil
	}
	ctx := context.Background()
	mustWait(t, l, ctx, "s", 1, Interactive)

	srv.Stop()
	stopped := time.Now()
	const calls = 6
	for i := range calls {
		start := time.Now()
		g := mustWait(t, l, ctx, "s", 1, Interactive)
		if d := time.Since(start); d > 300*time.Millisecond {
			t.Fatalf("decision %d took %s with Redis down", i, d)
		}
		if !g.Fallback {
			t.Fatalf("decision %d not on the fallback bucket", i)
		}
	}
	if !l.Degraded() || gaugeValue(t, m.Degraded) != 1 || gaugeValue(t, m.RedisUp) != 0 {
		t.Fatal("not reported degraded")
	}
	if n := gaugeValue(t, m.RateLimitFallback); n != calls {
		t.Fatalf("fallback decisions counted %v, want %d", n, calls)
	}
	// The share: 5 per second, burst 2, starting from half the 4 tokens the shared bucket
	// had left: 2 grants at once (and what the share refilled while the calls ran), then
	// reservations 200ms apart.
	immediate, refill := calls-len(slots), int(time.Since(stopped).Seconds()*5)+1
	if immediate < 2 || immediate > 2+refill || len(slots) == 0 {
		t.Fatalf("%d of %d fallback decisions granted at once, want 2 (+%d refilled)", immediate, calls, refill)
	}
	for i := 1; i < len(slots); i++ {
		if d := slots[i].Sub(slots[i-1]); !near(d, 200*time.Millisecond, 5*time.Millisecond) {
			t.Fatalf("fallback slot %d came %s after the previous one, want 200ms", i, d)
		}
	}

	srv.Restart()
	back := time.Now()
	for l.Degraded() {
		if time.Since(back) > 5*time.Second {
			t.Fatal("still degraded 5 s after Redis came back")
		}
		time.Sleep(10 * time.Millisecond) // polling a state with a deadline, not a guess at timing
	}
	t.Logf("back on the shared bucket %s after Redis restarted", time.Since(back).Round(time.Millisecond))
	if g := mustWait(t, l, ctx, "s", 1, Interactive); g.Fallback {
		t.Fatal("still on the fallback bucket after recovery")
	}
	if gaugeValue(t, m.Degraded) != 0 || gaugeValue(t, m.RedisUp) != 1 {
		t.Fatal("metrics still degraded")
	}
	if logs.count("redis unreachable") != 1 || logs.count("redis reachable again") != 1 {
		t.Fatalf("want one log line each way, got:\n%s", logs.buf.String())
	}
}

// Redis unreachable from the start: New still succeeds and the limiter serves from fallback.
func TestNewWithRedisDown(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	l, _ := newLimiter(t, Config{}, rdb)
	if !l.Degraded() {
		t.Fatal("not degraded")
	}
	if g := mustWait(t, l, context.Background(), "s", 1, Interactive); !g.Fallback {
		t.Fatal("not on fallback")
	}
}

// A replica that started first learns of the replicas that start after it within about a
// second: its fallback share must not be the whole budget for the first seconds (it was
// re-read only every ReplicaTTL/3 = 5 s, and a replica that fell back early sent 107% of
// the budget).
func TestReplicaCountFollowsPromptly(t *testing.T) {
	_, rdb := startRedis(t)
	cfg := Config{ProbeInterval: 50 * time.Millisecond, RedisTimeout: time.Second}
	first, _ := newLimiter(t, cfg, rdb)
	if first.Replicas() != 1 {
		t.Fatalf("first replica counts %d", first.Replicas())
	}
	second, _ := newLimiter(t, cfg, rdb)
	if second.Replicas() != 2 {
		t.Fatalf("a replica that starts counts %d at once, want 2 (its registration reads the count)", second.Replicas())
	}
	// The refresh is once a second, well inside the bound; before the fix it came after 5 s.
	took, ok := poll.Within(3*time.Second, func() bool { return first.Replicas() == 2 })
	if !ok {
		t.Fatalf("the first replica still counts %d replicas %s after the second started", first.Replicas(), took.Round(time.Millisecond))
	}
	t.Logf("the first replica counted 2 replicas %s after the second started", took.Round(time.Millisecond))
}

// A flapping Redis: each fallback decision starts from what the shared bucket last said
// (its token level, this replica's share of it, refilled since), not from a local bucket
// that refilled to full while the shared one was being spent, nor from a fresh one that
// ignores the shared bucket's debt (the finding: 42 upstream 429s in a run where Redis kept
// timing out). The local clock is fake; Redis's own clock barely moves during the test.
func TestFlappingRedisFallbackStartsFromSharedLevel(t *testing.T) {
	_, rdb := startRedis(t)
	clock := newFakeClock()
	cfg := Config{Rate: 10, Per: time.Second, Burst: 10, MaxWait: 10 * time.Second,
		RedisTimeout: time.Second, ProbeInterval: time.Hour, Now: clock.Now}
	l, _ := newLimiter(t, cfg, rdb)
	sleeps := recordSleeps(l)
	ctx := context.Background()
	// fallback makes one decision on the fallback bucket, as a timed-out call does, and
	// returns how long it had to wait (0: granted at once).
	fallback := func() time.Duration {
		l.br.trip()
		defer l.br.reset()
		before := len(*sleeps)
		if g := mustWait(t, l, ctx, "s", 1, Interactive); !g.Fallback {
			t.Fatal("not decided on the fallback bucket")
		}
		if len(*sleeps) == before {
			return 0
		}
		return (*sleeps)[len(*sleeps)-1]
	}

	// A first timeout creates the scope's fallback bucket.
	fallback()
	// Ten seconds later (local clock) the shared bucket is spent; then another timeout.
	clock.Advance(10 * time.Second)
	if g := mustWait(t, l, ctx, "s", 10, Interactive); g.Fallback {
		t.Fatal("shared decision made on the fallback bucket")
	}
	// The shared bucket is empty: the fallback must reserve about one token's interval, not
	// grant at once from a local bucket that refilled to full in the 10 s.
	if got := fallback(); !near(got, 100*time.Millisecond, 20*time.Millisecond) {
		t.Fatalf("fallback after the shared bucket was emptied waited %v, want ~100ms", got)
	}

	// A real outage and recovery (breaker opens, reservations handed back, closes), then the
	// shared bucket is taken 20 tokens into debt, then Redis goes away again: the fallback
	// bucket starts in that debt instead of afresh.
	l.enterDegraded(errors.New("test outage"))
	if err := l.handBack(); err != nil {
		t.Fatal(err)
	}
	l.br.reset()
	l.leaveDegraded()
	clock.Advance(10 * time.Second)
	mustWait(t, l, ctx, "s", 30, Interactive) // Redis's clock: what is left of 10, then debt
	if got := fallback(); got < 2*time.Second {
		t.Fatalf("fallback after the shared bucket went 20 tokens into debt waited %v, want >= 2s", got)
	}
}

// TestBreakerCountsConsecutiveFailures: a good Redis call between failures starts the count
// again, so isolated timeouts hours apart never add up to an open breaker (and a replica
// flapping into degraded mode).
func TestBreakerCountsConsecutiveFailures(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rdb.Close() })
	l, _ := newLimiter(t, Config{Rate: 100, Per: time.Second, Burst: 10, RedisTimeout: time.Second}, rdb)
	l.br.minSpan = 0 // the span rule is not under test here
	timeout := errors.New("i/o timeout")
	l.redisFailed(timeout)
	l.redisFailed(timeout)
	if g := mustWait(t, l, context.Background(), "s", 1, Interactive); g.Fallback {
		t.Fatal("decided on the fallback bucket with Redis up")
	}
	l.redisFailed(timeout)
	if l.br.isOpen() || l.Degraded() {
		t.Fatal("two failures, a good call, one failure: the breaker opened")
	}
	l.redisFailed(timeout)
	l.redisFailed(timeout)
	if !l.br.isOpen() {
		t.Fatal("three consecutive failures did not open the breaker")
	}
}
