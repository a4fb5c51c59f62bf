package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/poll"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// budget is one shape of GHL's limit and the sidecar's bucket, and how long to drive it.
//
// The issue asks for 60 s at GHL's numbers (100 per 10 s window; the sidecar's 280 per
// minute with a burst of 50). CI runs the same shape five times faster: every duration is
// divided by 5 and every count kept, so each ratio the limiter's arithmetic depends on is
// unchanged — burst / GHL limit (50/100), refill per GHL window / GHL limit (46.7/100),
// run / window (6 windows), max_wait / window (2), offered load / budget (3). What the
// short run cannot show, drift over a longer time, is what GHLPROXY_LONG=1 is for.
type budget struct {
	window  time.Duration // GHL's window; its limit is always fakeghl.DefaultLimit (100)
	rate    int           // sidecar ratelimit.rate per ratelimit.per
	per     time.Duration
	burst   int
	maxWait time.Duration
	run     time.Duration
}

func scaledBudget() budget {
	const f = 5
	return budget{window: 10 * time.Second / f, rate: 280, per: time.Minute / f, burst: 50,
		maxWait: 20 * time.Second / f, run: 60 * time.Second / f}
}

func realBudget() budget {
	return budget{window: 10 * time.Second, rate: 280, per: time.Minute, burst: 50,
		maxWait: 20 * time.Second, run: 60 * time.Second}
}

func (b budget) env() []string {
	return []string{
		"GHLPROXY_RATELIMIT_RATE=" + strconv.Itoa(b.rate),
		"GHLPROXY_RATELIMIT_PER=" + b.per.String(),
		"GHLPROXY_RATELIMIT_BURST=" + strconv.Itoa(b.burst),
		"GHLPROXY_RATELIMIT_MAX_WAIT=" + b.maxWait.String(),
	}
}

// interval is the time between two tokens of the sidecar's bucket.
func (b budget) interval() time.Duration { return b.per / time.Duration(b.rate) }

// allows is how many requests the bucket lets through in d from a full start.
func (b budget) allows(d time.Duration) float64 {
	return float64(b.burst) + float64(b.rate)*float64(d)/float64(b.per)
}

// drive is the outcome of an open-loop load.
type loadResult struct {
	sent, ok, rejected atomic.Int64
	failed             atomic.Int64
	mu                 sync.Mutex
	failures           []string
}

func (d *loadResult) fail(s string) {
	d.failed.Add(1)
	d.mu.Lock()
	if len(d.failures) < 10 {
		d.failures = append(d.failures, s)
	}
	d.mu.Unlock()
}

// driveReads sends one read every gap, round-robin over replicas, for span (or until stop
// closes), and returns once every answer is in. Each read has a query of its own, so no
// two fold or hit a cache: every one needs a token. Answers must be GHL's 200 or the
// sidecar's 429 (queued past max_wait, nothing sent); anything else is a failure.
func driveReads(t *testing.T, replicas []*replica, token, loc string, gap, span time.Duration, stop <-chan struct{}) *loadResult {
	return driveReadsBurst(t, replicas, token, loc, 0, gap, span, stop)
}

// driveReadsBurst is driveReads starting with burst requests at once.
func driveReadsBurst(t *testing.T, replicas []*replica, token, loc string, burst int, gap, span time.Duration, stop <-chan struct{}) *loadResult {
	t.Helper()
	d := &loadResult{}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512}, Timeout: time.Minute}
	defer client.CloseIdleConnections()
	auth := "Bearer " + token
	var wg sync.WaitGroup
	tick := time.NewTicker(gap)
	defer tick.Stop()
	end := time.After(span)
	for i := 0; ; i++ {
		next := tick.C
		if i < burst {
			next = closedTick
		}
		select {
		case <-end:
		case <-stop:
		case <-next:
			r := replicas[i%len(replicas)]
			wg.Add(1)
			d.sent.Add(1)
			go func() {
				defer wg.Done()
				url := fmt.Sprintf("%s/contacts/?locationId=%s&query=q%d", r.URL, loc, i)
				req, _ := http.NewRequestWithContext(context.Background(), "GET", url, nil)
				req.Header = ghlHeaders(token)
				resp, err := client.Do(req)
				if err != nil {
					d.fail(err.Error())
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusOK:
					if m := callerMismatch(auth, resp.StatusCode, resp.Header, b); m != "" {
						d.fail(m)
						return
					}
					d.ok.Add(1)
				case resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("X-Ghlproxy-Error") != "":
					d.rejected.Add(1)
				default:
					d.fail(fmt.Sprintf("%d %s %s", resp.StatusCode, resp.Header.Get("X-Ghlproxy-Error"), b))
				}
			}()
			continue
		}
		break
	}
	wg.Wait()
	return d
}

// closedTick is always ready: the requests of an initial burst do not wait for the ticker.
var closedTick = func() <-chan time.Time {
	c := make(chan time.Time)
	close(c)
	return c
}()

// startBudgetReplicas starts n replicas sharing redisEnv, with b's bucket.
func startBudgetReplicas(t *testing.T, n int, upstream string, b budget, env ...string) []*replica {
	t.Helper()
	var rs []*replica
	for range n {
		rs = append(rs, startReplica(t, testConfig(t, upstream, append(b.env(), env...)...)))
	}
	return rs
}

// waitReplicas waits until every replica counts n replicas in Redis: the fallback share
// (rate / replicas) is only right once they do. Replicas re-read the count every second.
func waitReplicas(t *testing.T, rs []*replica, n int) {
	t.Helper()
	for _, r := range rs {
		if _, ok := poll.Within(8*time.Second, func() bool { return statsReplicas(r) >= n }); !ok {
			t.Fatalf("replica %s counts %d replicas, want %d", r.URL, statsReplicas(r), n)
		}
	}
}

func statsReplicas(r *replica) int {
	resp, err := http.Get(r.URL + "/_ghlproxy/stats")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var v struct {
		RateLimit struct {
			Replicas int `json:"replicas"`
		} `json:"ratelimit"`
	}
	if err := jsonDecode(resp.Body, &v); err != nil {
		return 0
	}
	return v.RateLimit.Replicas
}

// TestSharedBucket is issue 3's first criterion: three replicas sharing one Redis (and
// the same against a three-master Cluster), driven at three times the budget: zero
// upstream 429s, never more than GHL's limit in any window, and at least 97% of what the
// budget allows actually used.
func TestSharedBucket(t *testing.T) {
	b := scaledBudget()
	if longRuns() {
		b = realBudget()
	}
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		sharedBucketRun(t, b, "GHLPROXY_REDIS_URL="+srv.URL())
	})
	t.Run("cluster", func(t *testing.T) {
		c := redistest.StartCluster(t, 3)
		sharedBucketRun(t, b, "GHLPROXY_REDIS_ADDRS="+strings.Join(c.Addrs(), ","))
	})
}

func sharedBucketRun(t *testing.T, b budget, redisEnv string) {
	up := startLoggedStandIn(t, fakeghl.Config{Window: b.window})
	// Redis calls get 1s instead of the default 50ms: this host runs the three replicas,
	// the load and the race detector on two busy cores, and this test is about the shared
	// bucket's arithmetic, not about Redis being slow (TestRedisKilledMidRun is).
	rs := startBudgetReplicas(t, 3, up.URL, b, redisEnv, "GHLPROXY_REDIS_TIMEOUT=1s")
	waitReplicas(t, rs, 3)
	token := fakeghl.Token("Location", "loc-budget", "app-budget")

	// Three times the budget's sustained rate, spread evenly over the replicas.
	gap := b.interval() / 3
	start := time.Now()
	d := driveReads(t, rs, token, "loc-budget", gap, b.run, nil)
	elapsed := time.Since(start)

	as := up.Log.arrivals()
	if len(as) == 0 {
		t.Fatal("nothing reached the stand-in")
	}
	first := as[0].At
	used, _ := countIn(as, first, first.Add(b.run))
	allowed := b.allows(b.run)
	st := up.Fake.Stats()
	maxWin := st.MaxInWindow[fakeghl.ScopeOf("Bearer "+token)]
	t.Logf("%v run (drive took %v): sent %d, 200 %d, sidecar 429 %d, failed %d; upstream %d in the run = %.1f%% of the %.0f the budget allows (%.2f/s), %d in all; upstream 429s %d; most in one %v window %d of %d",
		b.run, elapsed.Round(time.Millisecond), d.sent.Load(), d.ok.Load(), d.rejected.Load(), d.failed.Load(),
		used, 100*float64(used)/allowed, allowed, float64(used)/b.run.Seconds(), len(as), st.TooMany, b.window, maxWin, fakeghl.DefaultLimit)
	if d.failed.Load() > 0 {
		t.Errorf("%d requests failed: %q", d.failed.Load(), d.failures)
	}
	for _, r := range rs {
		if v, _ := metricValue(t, r.OpsURL, "ghlproxy_ratelimit_fallback_decisions_total"); v > 0 {
			t.Errorf("replica %s made %.0f decisions on its fallback bucket: the run did not test the shared bucket", r.URL, v)
		}
	}
	checkSpent(t, b, st.TooMany, maxWin, used, allowed, 1)
}

// checkSpent is what every shared-bucket run must show: no upstream 429, never more than
// GHL's limit in one window, and between 97% of what the bucket allows over the run and
// slack calls more.
func checkSpent(t *testing.T, b budget, tooMany int64, maxWin, used int, allowed, slack float64) {
	t.Helper()
	if tooMany != 0 {
		t.Errorf("the stand-in answered %d 429s; want none", tooMany)
	}
	if maxWin > fakeghl.DefaultLimit {
		t.Errorf("the stand-in counted %d requests in one %v window; limit %d", maxWin, b.window, fakeghl.DefaultLimit)
	}
	if float64(used) < 0.97*allowed {
		t.Errorf("upstream got %d requests in %v; the bucket allows %.0f: %.1f%% used, want at least 97%%", used, b.run, allowed, 100*float64(used)/allowed)
	}
	if float64(used) > allowed+slack {
		t.Errorf("upstream got %d requests in %v; the bucket allows only %.0f", used, b.run, allowed)
	}
}

// TestLearnsLowerUpstreamLimit: GHL grants this app less than the sidecar is configured
// for (a per-app override in the stand-in). The first answers carry the real limit; the
// sidecar adapts, and upstream 429s stop within one window of the first one.
func TestLearnsLowerUpstreamLimit(t *testing.T) {
	b := scaledBudget()
	b.run = 4 * b.window
	token := fakeghl.Token("Location", "loc-lower", "app-lower")
	scope := fakeghl.ScopeOf("Bearer " + token)
	const lower = 40 // under the bucket's burst + refill per window (96.7)
	// GHL's answers take a while (median 100ms), so the first burst is out before the first
	// answer teaches the limit: the 429s the criterion talks about really happen.
	up := startLoggedStandIn(t, fakeghl.Config{Window: b.window, Limits: map[string]int{scope: lower}, Latency: 100 * time.Millisecond})
	srv := redistest.Start(t)
	rs := startBudgetReplicas(t, 3, up.URL, b, "GHLPROXY_REDIS_URL="+srv.URL(), "GHLPROXY_REDIS_TIMEOUT=1s")
	waitReplicas(t, rs, 3)

	// The app starts with a burst the configured bucket lets through at once (its burst),
	// then keeps asking for three times the configured rate.
	d := driveReadsBurst(t, rs, token, "loc-lower", b.burst, b.interval()/3, b.run, nil)

	as := up.Log.arrivals()
	var first429, last429 time.Time
	n429 := 0
	for _, a := range as {
		if a.Status == http.StatusTooManyRequests {
			if first429.IsZero() {
				first429 = a.At
			}
			last429 = a.At
			n429++
		}
	}
	first := as[0].At
	lastWin := as[len(as)-1].At.Add(-b.window)
	inLast, _ := countIn(as, lastWin, lastWin.Add(b.window))
	t.Logf("upstream limit %d per %v, sidecar budget %.1f per window: %d upstream calls, %d answered 429 (first at +%v, last at +%v); %d calls in the last window; clients: 200 %d, sidecar 429 %d, failed %d",
		lower, b.window, b.allows(b.window), len(as), n429, first429.Sub(first).Round(time.Millisecond), last429.Sub(first).Round(time.Millisecond),
		inLast, d.ok.Load(), d.rejected.Load(), d.failed.Load())
	if d.failed.Load() > 0 {
		t.Errorf("%d requests failed: %q", d.failed.Load(), d.failures)
	}
	if testing.Verbose() {
		t.Logf("timeline (per %v: calls/429s): %s", b.window/8, timeline(as, first, b.window/8))
	}
	if n429 > 0 && last429.Sub(first429) > b.window {
		t.Errorf("upstream 429s went on for %v after the first one; want them to stop within one window (%v)", last429.Sub(first429).Round(time.Millisecond), b.window)
	}
	if inLast == 0 {
		t.Errorf("nothing reached upstream in the last window: the sidecar stopped instead of adapting")
	}
}

// TestRedisKilledMidRun: Redis dies while three replicas serve, and comes back. No request
// fails for it, upstream stays within GHL's limit on the fallback shares, the replicas say
// they are degraded (readyz and ghlproxy_degraded) and are back within 5 s of Redis.
func TestRedisKilledMidRun(t *testing.T) {
	b := scaledBudget()
	srv := redistest.Start(t)
	up := startLoggedStandIn(t, fakeghl.Config{Window: b.window})
	rs := startBudgetReplicas(t, 3, up.URL, b, "GHLPROXY_REDIS_URL="+srv.URL())
	waitReplicas(t, rs, 3)
	token := fakeghl.Token("Location", "loc-redis-down", "app-1")

	// Half the budget's rate: everything fits, on the shared bucket and on the shares, so
	// any failed or rejected request is Redis's fault.
	stop := make(chan struct{})
	result := make(chan *loadResult, 1)
	go func() { result <- driveReads(t, rs, token, "loc-redis-down", 2*b.interval(), time.Hour, stop) }()

	phase := b.window
	waitUpstream(t, up, 10)
	srv.Stop()
	killed := time.Now()
	for _, r := range rs {
		if _, ok := poll.Within(10*time.Second, func() bool {
			v, _ := metricValue(t, r.OpsURL, "ghlproxy_degraded")
			return v == 1 && readyState(r.OpsURL) == "degraded"
		}); !ok {
			close(stop)
			<-result
			t.Fatalf("replica %s: not degraded %v after Redis died (readyz %q)", r.URL, time.Since(killed).Round(time.Millisecond), readyState(r.OpsURL))
		}
	}
	t.Logf("all replicas degraded %v after Redis died", time.Since(killed).Round(time.Millisecond))
	time.Sleep(phase) // traffic on the fallback buckets for a window; not synchronisation
	srv.Restart()
	back := time.Now()
	var slowest time.Duration
	for _, r := range rs {
		took, ok := poll.Within(5*time.Second-time.Since(back), func() bool {
			v, ok := metricValue(t, r.OpsURL, "ghlproxy_degraded")
			return ok && v == 0 && readyState(r.OpsURL) == "ready"
		})
		if !ok {
			t.Errorf("replica %s still degraded %v after Redis returned (readyz %q)", r.URL, time.Since(back).Round(time.Millisecond), readyState(r.OpsURL))
		}
		slowest = max(slowest, took)
	}
	t.Logf("all replicas back on the shared bucket within %v of Redis returning (slowest poll %v)", time.Since(back).Round(time.Millisecond), slowest.Round(time.Millisecond))
	time.Sleep(phase) // traffic on the shared bucket again
	close(stop)
	d := <-result

	st := up.Fake.Stats()
	maxWin := st.MaxInWindow[fakeghl.ScopeOf("Bearer "+token)]
	t.Logf("clients: sent %d, 200 %d, sidecar 429 %d, failed %d; upstream %d calls, 429s %d, most in one window %d",
		d.sent.Load(), d.ok.Load(), d.rejected.Load(), d.failed.Load(), st.Calls, st.TooMany, maxWin)
	if d.failed.Load() > 0 || d.rejected.Load() > 0 {
		t.Errorf("%d requests failed and %d were refused while Redis died and came back: %q", d.failed.Load(), d.rejected.Load(), d.failures)
	}
	if st.TooMany != 0 || maxWin > fakeghl.DefaultLimit {
		t.Errorf("upstream: %d 429s, %d in one window (limit %d)", st.TooMany, maxWin, fakeghl.DefaultLimit)
	}
}

// waitUpstream waits until n requests reached the stand-in.
func waitUpstream(t *testing.T, up *standIn, n int) {
	t.Helper()
	if _, ok := poll.Within(30*time.Second, func() bool { return len(up.Log.arrivals()) >= n }); !ok {
		t.Fatalf("only %d requests reached the stand-in, want %d", len(up.Log.arrivals()), n)
	}
}

// timeline renders arrivals per step as "calls/429s" for the log.
func timeline(as []arrival, from time.Time, step time.Duration) string {
	var calls, tooMany []int
	for _, a := range as {
		i := int(a.At.Sub(from) / step)
		for len(calls) <= i {
			calls, tooMany = append(calls, 0), append(tooMany, 0)
		}
		calls[i]++
		if a.Status == http.StatusTooManyRequests {
			tooMany[i]++
		}
	}
	var sb strings.Builder
	for i := range calls {
		fmt.Fprintf(&sb, "%d/%d ", calls[i], tooMany[i])
	}
	return sb.String()
}

// TestSharedBucketFollowsGHL: with ratelimit.follow_ghl, three replicas on one Redis at three
// times the rate they learn from GHL's own headers spend that window less the reserve — 87
// of the stand-in's 100 per window, where 280/min spends 46.7 — with no upstream 429 and
// never more than GHL's 100 in any window.
func TestSharedBucketFollowsGHL(t *testing.T) {
	b := scaledBudget()
	up := startLoggedStandIn(t, fakeghl.Config{Window: b.window})
	srv := redistest.Start(t)
	rs := startBudgetReplicas(t, 3, up.URL, b, "GHLPROXY_REDIS_URL="+srv.URL(), "GHLPROXY_REDIS_TIMEOUT=1s",
		"GHLPROXY_RATELIMIT_FOLLOW_GHL=true")
	waitReplicas(t, rs, 3)
	token := fakeghl.Token("Location", "loc-follow", "app-follow")

	// What following 100 per window with the default reserve of 0.1 plans: a burst of 10
	// and 77 more per window.
	const burst, perWindow = 10, 77
	interval := b.window / perWindow
	d := driveReads(t, rs, token, "loc-follow", interval/3, b.run, nil)
	as := up.Log.arrivals()
	if len(as) == 0 {
		t.Fatal("nothing reached the stand-in")
	}
	first := as[0].At
	used, _ := countIn(as, first, first.Add(b.run))
	allowed := burst + perWindow*float64(b.run)/float64(b.window)
	st := up.Fake.Stats()
	maxWin := st.MaxInWindow[fakeghl.ScopeOf("Bearer "+token)]
	t.Logf("%v run: sent %d, 200 %d, sidecar 429 %d, failed %d; upstream %d in the run, %.1f%% of the %.0f following allows (the configured 280/min allows %.0f); upstream 429s %d; most in one %v window %d of %d",
		b.run, d.sent.Load(), d.ok.Load(), d.rejected.Load(), d.failed.Load(), used, 100*float64(used)/allowed, allowed,
		b.allows(b.run), st.TooMany, b.window, maxWin, fakeghl.DefaultLimit)
	if d.failed.Load() > 0 {
		t.Errorf("%d requests failed: %q", d.failed.Load(), d.failures)
	}
	// The first calls, before GHL's first answer, may still come from the configured burst.
	checkSpent(t, b, st.TooMany, maxWin, used, allowed, float64(b.burst))
}
