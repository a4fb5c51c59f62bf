package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ghlproxy/ghlproxy/internal/poll"
	"github.com/ghlproxy/ghlproxy/internal/promtest"
)

// The budget edge (issue 15): the app's requests, writes and read misses alike, share one
// lane in arrival order; background work yields to them; a read miss with an entry at hand
// does not queue for a token far away.

// scopeStats is what the replica's /_ghlproxy/stats says of its rate-limit scopes.
type scopeStats struct {
	Tokens      float64        `json:"tokens"`
	QueueByLane map[string]int `json:"queue_by_lane"`
}

func rateScopes(t *testing.T, r *replica) []scopeStats {
	t.Helper()
	resp, b := call(t, http.DefaultClient, "GET", r.URL+"/_ghlproxy/stats", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stats: %d %s", resp.StatusCode, b)
	}
	var st struct {
		RateLimit struct {
			Scopes []scopeStats `json:"scopes"`
		} `json:"ratelimit"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("stats: %v: %s", err, b)
	}
	return st.RateLimit.Scopes
}

// laneDepth is the replica's count of requests waiting for a token in lane, over its scopes.
func laneDepth(t *testing.T, r *replica, lane string) int {
	t.Helper()
	n := 0
	for _, s := range rateScopes(t, r) {
		n += s.QueueByLane[lane]
	}
	return n
}

// finish records the order in which requests were answered.
type finish struct {
	mu    sync.Mutex
	order []string
	wg    sync.WaitGroup
}

func (f *finish) do(t *testing.T, name string, req func() int) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if code := req(); code/100 != 2 {
			t.Errorf("%s: %d", name, code)
		}
		f.mu.Lock()
		f.order = append(f.order, name)
		f.mu.Unlock()
	}()
}

func (f *finish) wait() []string {
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.order...)
}

func index(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// TestWritesGoInArrivalOrderWithReads: with the bucket empty, read misses queue for the next
// slots; a write that arrives behind them takes the slot after theirs, and read misses that
// arrive after the write wait behind it. Before lanes a batched write yielded to every
// read until it had waited a quarter of ratelimit.max_wait (5 s), so the later reads went
// first.
func TestWritesGoInArrivalOrderWithReads(t *testing.T) {
	fake, up := startStandIn(t, unlimited())
	// 2 tokens a second, no burst to speak of: every request past the first waits for a
	// slot 500 ms after the previous one's.
	r := startReplica(t, testConfig(t, up.URL, "GHLPROXY_RATELIMIT_RATE=120", "GHLPROXY_RATELIMIT_PER=1m",
		"GHLPROXY_RATELIMIT_BURST=1", "GHLPROXY_BATCH_LINGER=5ms", "GHLPROXY_BATCH_MIN=1", "GHLPROXY_BATCH_MAX=1"))
	const loc = "loc-lanes"
	token := twinToken(loc, 0)
	ids := make([]string, 9)
	for i := range ids {
		ids[i] = newContact(t, up.URL, token, map[string]any{"locationId": loc, "firstName": fmt.Sprint("L", i)})
	}
	read := func(id string) func() int {
		return func() int {
			resp, _ := call(t, http.DefaultClient, "GET", r.URL+"/contacts/"+id, "", ghlHeaders(token))
			return resp.StatusCode
		}
	}
	// A request has arrived once it waits in a lane or has reached the stand-in; on a busy
	// machine the first ones may be through before the last arrive, so no exact depth is
	// waited for.
	before := fake.Stats().Calls
	arrived := func() int64 {
		return int64(laneDepth(t, r, "interactive")+laneDepth(t, r, "background")) + fake.Stats().Calls - before
	}
	var f finish
	for i := range 4 {
		f.do(t, fmt.Sprint("early read ", i), read(ids[i]))
	}
	poll.Until(t, 10*time.Second, "the early reads to queue", func() bool { return arrived() >= 4 })
	f.do(t, "write", func() int {
		resp, _ := call(t, http.DefaultClient, "PUT", r.URL+"/contacts/"+ids[8], `{"companyName":"Lanes"}`, ghlHeaders(token))
		return resp.StatusCode
	})
	poll.Until(t, 10*time.Second, "the write to queue behind them", func() bool { return arrived() >= 5 })
	// The later reads must find the write still waiting, or their order after it would
	// prove nothing about lanes.
	if n := fake.Stats().RouteCalls("PUT /contacts/{contactId}"); n != 0 {
		t.Fatalf("the write reached the stand-in before the later reads were sent (%d calls): this run proves nothing", n)
	}
	for i := 4; i < 8; i++ {
		f.do(t, fmt.Sprint("later read ", i), read(ids[i]))
	}
	order := f.wait()
	w := index(order, "write")
	for i := range 4 {
		if e := index(order, fmt.Sprint("early read ", i)); e > w {
			t.Errorf("early read %d answered after the write: %v", i, order)
		}
	}
	for i := 4; i < 8; i++ {
		if l := index(order, fmt.Sprint("later read ", i)); l < w {
			t.Errorf("later read %d answered before the write that arrived first: %v", i, order)
		}
	}
	t.Logf("answered in order %v", order)
}

// TestBackgroundLaneYields: a request marked X-Ghlproxy-Priority: background that queued
// first is answered after the app's requests that came later, and the lane's depth shows
// in /_ghlproxy/stats and the metrics.
func TestBackgroundLaneYields(t *testing.T) {
	_, up := startStandIn(t, unlimited())
	r := startReplica(t, testConfig(t, up.URL, "GHLPROXY_RATELIMIT_RATE=120", "GHLPROXY_RATELIMIT_PER=1m",
		"GHLPROXY_RATELIMIT_BURST=1", "GHLPROXY_BATCH_MIN=1", "GHLPROXY_BATCH_MAX=1"))
	const loc = "loc-background"
	token := twinToken(loc, 0)
	ids := make([]string, 4)
	for i := range ids {
		ids[i] = newContact(t, up.URL, token, map[string]any{"locationId": loc, "firstName": fmt.Sprint("B", i)})
	}
	if resp, _ := getContact(t, r, token, ids[0]); !strings.Contains(cacheStatus(resp), "stored") {
		t.Fatalf("first read took the burst token: Cache-Status %q", cacheStatus(resp))
	}
	var f finish
	f.do(t, "background", func() int {
		h := ghlHeaders(token)
		h.Set("X-Ghlproxy-Priority", "background")
		resp, _ := call(t, http.DefaultClient, "GET", r.URL+"/contacts/"+ids[1], "", h)
		return resp.StatusCode
	})
	poll.Until(t, 10*time.Second, "the background request to queue", func() bool { return laneDepth(t, r, "background") == 1 })
	if d := testutil.ToFloat64(r.S.Metrics.RateLimitQueue.WithLabelValues("background")); d != 1 {
		t.Errorf("ratelimit_queue_depth{priority=background} = %v, want 1", d)
	}
	for i := 2; i < 4; i++ {
		f.do(t, fmt.Sprint("app read ", i), func() int {
			resp, _ := call(t, http.DefaultClient, "GET", r.URL+"/contacts/"+ids[i], "", ghlHeaders(token))
			return resp.StatusCode
		})
	}
	order := f.wait()
	if order[len(order)-1] != "background" {
		t.Fatalf("answered in order %v: the background request went before the app's", order)
	}
}

// TestStaleIfBusy: a read miss whose token is far away (here about a minute, well inside
// ratelimit.max_wait, so without stale-if-busy it would wait for it), holding an entry past
// its TTL, is answered from the entry at once (fwd=stale; detail=busy); nothing goes
// upstream for it and no token is reserved for it. An entry a write invalidated is never
// served so, however busy: that read waits for its token.
func TestStaleIfBusy(t *testing.T) {
	fake, up := startStandIn(t, unlimited())
	// Three tokens, then one a minute: after three calls the next token is a minute away.
	r := startReplica(t, testConfig(t, up.URL, "GHLPROXY_RATELIMIT_RATE=1", "GHLPROXY_RATELIMIT_PER=1m",
		"GHLPROXY_RATELIMIT_BURST=3", "GHLPROXY_RATELIMIT_MAX_WAIT=90s", "GHLPROXY_BATCH_LINGER=5ms",
		"GHLPROXY_BATCH_MIN=1", "GHLPROXY_BATCH_MAX=1",
		`GHLPROXY_CACHE_ROUTES=[{"route":"GET /contacts/{contactId}","ttl":"1s"}]`,
		"GHLPROXY_CACHE_STALE_WHILE_REVALIDATE=0s"))
	const loc = "loc-busy"
	token := twinToken(loc, 0)
	kept := newContact(t, up.URL, token, map[string]any{"locationId": loc, "firstName": "Kept"})
	written := newContact(t, up.URL, token, map[string]any{"locationId": loc, "firstName": "Written"})
	for _, id := range []string{kept, written} { // tokens 1 and 2
		if resp, _ := getContact(t, r, token, id); !strings.Contains(cacheStatus(resp), "stored") {
			t.Fatalf("priming read: Cache-Status %q", cacheStatus(resp))
		}
	}
	for _, id := range []string{kept, written} {
		poll.Until(t, 10*time.Second, "the entry to be past its TTL", func() bool {
			return strings.HasPrefix(explainState(t, r, token, id), "stale (served only if GHL fails)")
		})
	}
	// Token 3: a write that drops its contact's entry.
	if resp, b := call(t, http.DefaultClient, "PUT", r.URL+"/contacts/"+written, `{"firstName":"Rewritten"}`, ghlHeaders(token)); resp.StatusCode != 200 {
		t.Fatalf("PUT: %d %s", resp.StatusCode, b)
	}
	calls := fake.Stats().Calls
	before := scopeTokens(t, r)

	start := time.Now()
	resp, c := getContact(t, r, token, kept)
	if cs := cacheStatus(resp); !strings.Contains(cs, "fwd=stale; detail=busy") || c.Contact.FirstName != "Kept" {
		t.Fatalf("busy read of a stale entry: Cache-Status %q, name %q", cs, c.Contact.FirstName)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("the busy read took %s, with its token a minute away", el)
	}
	if n := testutil.ToFloat64(r.S.Metrics.StaleIfBusy); n != 1 {
		t.Errorf("cache_stale_if_busy_total = %v, want 1", n)
	}
	if st := fake.Stats().Calls; st != calls {
		t.Errorf("%d upstream calls for the busy read, want none", st-calls)
	}
	if after := scopeTokens(t, r); after < before-0.5 {
		t.Errorf("tokens %.2f before the busy read, %.2f after: a token was reserved for it", before, after)
	}

	// The written contact's entry is gone: no stale answer, however busy. Its read waits
	// for the token a minute away; the client gives up long before.
	req, err := http.NewRequest("GET", r.URL+"/contacts/"+written, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = ghlHeaders(token)
	impatient := &http.Client{Timeout: 1500 * time.Millisecond}
	if resp, err := impatient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("read of the written contact with no token near: answered %d (Cache-Status %q), want it to wait for its token",
			resp.StatusCode, cacheStatus(resp))
	}
}

// scopeTokens is the fewest tokens any of the replica's scopes holds: the location's bucket,
// which the token spends once GHL vouched for it.
func scopeTokens(t *testing.T, r *replica) float64 {
	t.Helper()
	scopes := rateScopes(t, r)
	if len(scopes) == 0 {
		t.Fatal("stats: no rate-limit scope")
	}
	least := scopes[0].Tokens
	for _, s := range scopes {
		least = min(least, s.Tokens)
	}
	return least
}

// TestRevalidationIsBackground: the refresh of an entry served stale-while-revalidate takes
// its token in the background lane; the app already has its answer.
func TestRevalidationIsBackground(t *testing.T) {
	_, up := startStandIn(t, unlimited())
	r := startReplica(t, testConfig(t, up.URL,
		`GHLPROXY_CACHE_ROUTES=[{"route":"GET /contacts/{contactId}","ttl":"1s"}]`,
		"GHLPROXY_CACHE_STALE_WHILE_REVALIDATE=1m"))
	const loc = "loc-revalidate"
	token := twinToken(loc, 0)
	id := newContact(t, up.URL, token, map[string]any{"locationId": loc, "firstName": "Re"})
	getContact(t, r, token, id)
	granted := func(lane string) uint64 { return promtest.Samples(t, r.S.Metrics.RateLimitWait.WithLabelValues(lane)) }
	app := granted("interactive")
	poll.Until(t, 10*time.Second, "the entry to go stale", func() bool {
		return strings.HasPrefix(explainState(t, r, token, id), "stale (served while")
	})
	if resp, _ := getContact(t, r, token, id); !strings.Contains(cacheStatus(resp), "fwd=stale") {
		t.Fatalf("stale read: Cache-Status %q", cacheStatus(resp))
	}
	poll.Until(t, 10*time.Second, "the refresh to take a token", func() bool { return granted("background") == 1 })
	if n := granted("interactive"); n != app {
		t.Errorf("%d grants in the app's lane for the refresh, want none", n-app)
	}
}
