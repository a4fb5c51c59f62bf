package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/poll"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/warm"
)

// warmTargets is a warm.targets value with one target, "leads", reading its token from the
// environment variable GHL_WARM_TOKEN.
func warmTargets(requests ...string) string {
	return `GHLPROXY_WARM_TARGETS=[{name: leads, token_env: GHL_WARM_TOKEN, requests: [` + strings.Join(requests, ", ") + `]}]`
}

// warmStatus reads GET /_ghlproxy/warm.
func warmStatus(t *testing.T, r *replica) warm.Status {
	t.Helper()
	resp, body := call(t, http.DefaultClient, "GET", r.URL+"/_ghlproxy/warm", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /_ghlproxy/warm = %d %s", resp.StatusCode, body)
	}
	var s warm.Status
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("GET /_ghlproxy/warm: %v: %s", err, body)
	}
	return s
}

// runs returns the runs of target "leads" on r with the given result, newest first.
func runs(t *testing.T, r *replica, result string) []warm.Run {
	t.Helper()
	var out []warm.Run
	for _, ts := range warmStatus(t, r).Targets {
		for _, run := range ts.Runs {
			if result == "" || run.Result == result {
				out = append(out, run)
			}
		}
	}
	return out
}

// until polls cond, which reads the state under test, until it holds or d passes. Polling
// is the synchronisation here: the warming loop runs on its own schedule in another
// goroutine of the sidecar, and its status endpoint is how an operator sees it too.
func until(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, d, what, cond)
}

// seedContacts creates n contacts of location loc straight at the stand-in.
func seedContacts(t *testing.T, standIn, token, loc string, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		resp, body := call(t, http.DefaultClient, "POST", standIn+"/contacts/",
			fmt.Sprintf(`{"locationId":%q,"email":"lead%d@example.com","firstName":"Lead%d","tags":["hot"]}`, loc, i, i), ghlHeaders(token))
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("seeding contact %d: %d %s", i, resp.StatusCode, body)
		}
		var c struct{ Contact struct{ ID string } }
		_ = json.Unmarshal(body, &c)
		ids = append(ids, c.Contact.ID)
	}
	return ids
}

// TestWarmFirstRequestIsHit: with a warm target configured, the sidecar warms it at
// start-up, following pages, and the first client requests for those pages are cache hits
// that cost no upstream call.
func TestWarmFirstRequestIsHit(t *testing.T) {
	fake, srv := startLinkedStandIn(t, fakeghl.Config{})
	token := fakeghl.Token("Location", "loc-warm", "app-1")
	seedContacts(t, srv.URL, token, "loc-warm", 5)
	t.Setenv("GHL_WARM_TOKEN", token)
	search := `{"locationId":"loc-warm","pageLimit":2,"filters":[{"field":"tags","operator":"contains","value":"hot"}]}`
	r := startReplica(t, testConfig(t, srv.URL,
		"GHLPROXY_WARM_INTERVAL=1h", "GHLPROXY_WARM_MAX_PAGES=3",
		warmTargets(
			`{method: POST, path: /contacts/search, body: '`+search+`'}`,
			`{path: "/contacts/?locationId=loc-warm&limit=2"}`)))

	until(t, 10*time.Second, "the start-up warming run", func() bool { return len(runs(t, r, "")) > 0 })
	run := runs(t, r, "")[0]
	// 5 contacts at 2 a page: 3 pages of each request.
	if run.Result != warm.ResultOK || run.Pages != 6 || run.Entries != 6 || run.Trigger != "schedule" {
		t.Fatalf("start-up run = %+v, want ok with 6 pages and 6 entries", run)
	}
	before := fake.Stats().Calls

	hdr := ghlHeaders(token)
	resp, body := call(t, http.DefaultClient, "POST", r.URL+"/contacts/search", search, hdr)
	if cs := resp.Header.Get("Cache-Status"); resp.StatusCode != 200 || !strings.Contains(cs, "hit") {
		t.Fatalf("first search: %d, Cache-Status %q: %s", resp.StatusCode, cs, body)
	}
	// The second page of the list, by the link the first page carries: hit too.
	resp, body = call(t, http.DefaultClient, "GET", r.URL+"/contacts/?locationId=loc-warm&limit=2", "", hdr)
	if cs := resp.Header.Get("Cache-Status"); !strings.Contains(cs, "hit") {
		t.Fatalf("first list page: Cache-Status %q", cs)
	}
	var page struct{ Meta struct{ NextPageURL string } }
	if err := json.Unmarshal(body, &page); err != nil || !strings.HasPrefix(page.Meta.NextPageURL, r.URL+"/contacts/") {
		t.Fatalf("next page link %q (%v): want one to the sidecar", page.Meta.NextPageURL, err)
	}
	resp, _ = call(t, http.DefaultClient, "GET", page.Meta.NextPageURL, "", hdr)
	if cs := resp.Header.Get("Cache-Status"); !strings.Contains(cs, "hit") {
		t.Fatalf("second list page: Cache-Status %q", cs)
	}
	if n := fake.Stats().Calls - before; n != 0 {
		t.Fatalf("%d upstream calls for warmed reads, want 0", n)
	}

	// POST /_ghlproxy/warm runs again now, and refreshes even the fresh entries.
	resp, body = call(t, http.DefaultClient, "POST", r.URL+"/_ghlproxy/warm", "", nil)
	var manual []warm.Run
	if resp.StatusCode != 200 || json.Unmarshal(body, &manual) != nil || len(manual) != 1 || manual[0].Result != warm.ResultOK || manual[0].Pages != 6 {
		t.Fatalf("POST /_ghlproxy/warm = %d %s", resp.StatusCode, body)
	}
	if n := fake.Stats().Calls - before; n != 6 {
		t.Fatalf("manual run made %d upstream calls, want 6", n)
	}
	metrics := scrape(t, r)
	for _, want := range []string{`ghlproxy_warm_runs_total{result="ok"} 2`, `ghlproxy_warm_entries_total 12`, `ghlproxy_warm_last_success_timestamp_seconds 1.`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// startLinkedStandIn runs a stand-in whose next-page links point at itself, as GHL's point
// at GHL, so that the sidecar in front rewrites them to its own address.
func startLinkedStandIn(t *testing.T, cfg fakeghl.Config) (*fakeghl.Server, *httptest.Server) {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	cfg.BaseURL = "http://" + srv.Listener.Addr().String()
	fake := fakeghl.New(cfg)
	srv.Config.Handler = fake
	srv.Start()
	t.Cleanup(func() { srv.Close(); fake.Close() })
	return fake, srv
}

func scrape(t *testing.T, r *replica) string {
	t.Helper()
	_, body := call(t, http.DefaultClient, "GET", r.OpsURL+"/metrics", "", nil)
	return string(body)
}

// TestWarmOnceAcrossReplicas: three replicas on one Redis warm a target once per interval
// between them, not three times.
func TestWarmOnceAcrossReplicas(t *testing.T) {
	rds := redistest.Start(t)
	fake, srv := startStandIn(t, fakeghl.Config{})
	token := fakeghl.Token("Location", "loc-replicas", "app-1")
	t.Setenv("GHL_WARM_TOKEN", token)
	const interval = time.Second
	cfg := testConfig(t, srv.URL, "GHLPROXY_REDIS_URL="+rds.URL(),
		"GHLPROXY_WARM_INTERVAL="+interval.String(), "GHLPROXY_WARM_JITTER=0s",
		warmTargets(`{path: "/contacts/?locationId=loc-replicas"}`))

	start := time.Now()
	var reps []*replica
	for range 3 {
		reps = append(reps, startReplica(t, cfg))
	}
	okRuns := func() int {
		n := 0
		for _, r := range reps {
			n += len(runs(t, r, warm.ResultOK))
		}
		return n
	}
	skipped := func() int {
		n := 0
		for _, r := range reps {
			n += len(runs(t, r, warm.ResultSkipped))
		}
		return n
	}
	until(t, 20*time.Second, "four warming runs", func() bool { return okRuns() >= 4 })
	// The stand-in counts what the whole deployment sent: one call per run, each started
	// before now.
	elapsed := time.Since(start)
	calls := fake.Stats().RouteCalls("GET /contacts/")
	if skipped() == 0 {
		t.Errorf("no replica found the lease held")
	}
	t.Logf("%s: %d warming calls upstream", elapsed.Round(time.Millisecond), calls)
	if calls < 4 {
		t.Errorf("%d upstream calls, want at least the 4 runs seen", calls)
	}
	// One run at start-up, then at most one per interval.
	if limit := int64(elapsed/interval) + 1; calls > limit {
		t.Errorf("%d warming calls in %s: more than one per %s across the replicas (at most %d)", calls, elapsed, interval, limit)
	}
}

// TestWarmYieldsToInteractive: while interactive traffic holds a scope at its limit,
// warming gets no token — so it adds no queue time to interactive requests — and its run
// is counted as skipped; once the load stops, warming goes through. And warming stops at
// the daily reserve.
func TestWarmYieldsToInteractive(t *testing.T) {
	// GHL's limit is 20 a second; the sidecar's bucket (10 a second, burst 9) sends at most
	// 19 in any second, and the load below keeps it there.
	fake, srv := startStandIn(t, fakeghl.Config{Limit: 20, Window: time.Second})
	token := fakeghl.Token("Location", "loc-busy", "app-1")
	ids := seedContacts(t, srv.URL, token, "loc-busy", 4)
	t.Setenv("GHL_WARM_TOKEN", token)
	r := startReplica(t, testConfig(t, srv.URL,
		"GHLPROXY_RATELIMIT_RATE=10", "GHLPROXY_RATELIMIT_PER=1s", "GHLPROXY_RATELIMIT_BURST=9",
		"GHLPROXY_RATELIMIT_WARM_RESERVE=3", "GHLPROXY_RATELIMIT_MAX_WAIT=2s",
		"GHLPROXY_WARM_INTERVAL=1h",
		warmTargets(`{path: "/contacts/?locationId=loc-busy"}`)))
	until(t, 10*time.Second, "the start-up warming run", func() bool { return len(runs(t, r, "")) > 0 })
	fake.Reset() // forget the seeding and the start-up run: count only what follows

	// Interactive load: 8 users re-reading contacts (no-cache, so every read costs a
	// token), more than 10 a second can serve, so the bucket never holds a spare token.
	hdr := ghlHeaders(token)
	hdr.Set("Cache-Control", "no-cache")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served, rejected atomic.Int64
	var queueMs sync.Map // phase -> *[]int
	var phase atomic.Value
	phase.Store("alone")
	for u := range 8 {
		wg.Go(func() {
			c := &http.Client{}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, _ := call(t, c, "GET", r.URL+"/contacts/"+ids[(u+i)%len(ids)], "", hdr)
				if resp.StatusCode == http.StatusTooManyRequests {
					rejected.Add(1)
					continue
				}
				served.Add(1)
				ms, _ := strconv.Atoi(resp.Header.Get("X-Ghlproxy-Queue-Ms"))
				queueMsAppend(&queueMs, phase.Load().(string), ms)
			}
		})
	}
	// Let the load empty the bucket and fill the queue.
	until(t, 10*time.Second, "interactive load at the limit", func() bool { return served.Load() >= 20 })
	phase.Store("warming")
	resp, body := call(t, http.DefaultClient, "POST", r.URL+"/_ghlproxy/warm", "", nil)
	phase.Store("after")
	until(t, 10*time.Second, "more interactive requests", func() bool { return served.Load() >= 50 })
	close(stop)
	wg.Wait()

	var during []warm.Run
	if resp.StatusCode != 200 || json.Unmarshal(body, &during) != nil || len(during) != 1 {
		t.Fatalf("POST /_ghlproxy/warm = %d %s", resp.StatusCode, body)
	}
	if during[0].Result != warm.ResultSkipped || during[0].Pages != 0 {
		t.Errorf("warming under interactive load at the limit: %+v, want skipped with no page", during[0])
	}
	if n := fake.Stats().RouteCalls("GET /contacts/"); n != 0 {
		t.Errorf("warming sent %d calls upstream while interactive traffic held the scope at its limit", n)
	}
	if st := fake.Stats(); st.TooMany != 0 || rejected.Load() != 0 {
		t.Errorf("%d 429s upstream, %d sidecar rejections: the load should queue within the bucket", st.TooMany, rejected.Load())
	}
	t.Logf("interactive queue ms: alone %v; while warming %v; after %v",
		summary(&queueMs, "alone"), summary(&queueMs, "warming"), summary(&queueMs, "after"))

	// The load is gone: warming runs.
	resp, body = call(t, http.DefaultClient, "POST", r.URL+"/_ghlproxy/warm", "", nil)
	var idle []warm.Run
	if resp.StatusCode != 200 || json.Unmarshal(body, &idle) != nil || len(idle) != 1 || idle[0].Result != warm.ResultOK || idle[0].Pages != 1 {
		t.Fatalf("warming without load: %d %s", resp.StatusCode, body)
	}
	if !strings.Contains(scrape(t, r), `ghlproxy_warm_runs_total{result="skipped"} 1`) {
		t.Errorf("the refused run is not counted as skipped")
	}
}

// TestWarmStopsAtDailyReserve: once GHL reports fewer requests left today than
// ratelimit.daily_reserve, warming runs are skipped and send nothing.
func TestWarmStopsAtDailyReserve(t *testing.T) {
	fake, srv := startStandIn(t, fakeghl.Config{Daily: 100})
	token := fakeghl.Token("Location", "loc-daily", "app-1")
	t.Setenv("GHL_WARM_TOKEN", token)
	r := startReplica(t, testConfig(t, srv.URL,
		"GHLPROXY_RATELIMIT_DAILY_RESERVE=95", "GHLPROXY_WARM_INTERVAL=1h",
		warmTargets(`{path: "/contacts/?locationId=loc-daily"}`)))
	until(t, 10*time.Second, "the start-up warming run", func() bool { return len(runs(t, r, "")) > 0 })
	if got := runs(t, r, "")[0]; got.Result != warm.ResultOK {
		t.Fatalf("start-up run with the whole day left: %+v", got)
	}
	// Interactive traffic spends the day down to 94 left.
	hdr := ghlHeaders(token)
	for i := range 5 {
		if resp, body := call(t, http.DefaultClient, "GET", r.URL+"/contacts/?locationId=loc-daily&query=x"+strconv.Itoa(i), "", hdr); resp.StatusCode != 200 {
			t.Fatalf("interactive read: %d %s", resp.StatusCode, body)
		}
	}
	before := fake.Stats().Calls
	resp, body := call(t, http.DefaultClient, "POST", r.URL+"/_ghlproxy/warm", "", nil)
	var got []warm.Run
	if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil || len(got) != 1 || got[0].Result != warm.ResultSkipped {
		t.Fatalf("warming below the daily reserve: %d %s", resp.StatusCode, body)
	}
	if n := fake.Stats().Calls - before; n != 0 {
		t.Errorf("warming below the daily reserve sent %d calls", n)
	}
}

func queueMsAppend(m *sync.Map, phase string, ms int) {
	v, _ := m.LoadOrStore(phase, &queueList{})
	q := v.(*queueList)
	q.mu.Lock()
	q.ms = append(q.ms, ms)
	q.mu.Unlock()
}

type queueList struct {
	mu sync.Mutex
	ms []int
}

func summary(m *sync.Map, phase string) string {
	v, ok := m.Load(phase)
	if !ok {
		return "none"
	}
	q := v.(*queueList)
	q.mu.Lock()
	defer q.mu.Unlock()
	sum, hi := 0, 0
	for _, x := range q.ms {
		sum += x
		hi = max(hi, x)
	}
	return fmt.Sprintf("n=%d mean=%d max=%d", len(q.ms), sum/max(1, len(q.ms)), hi)
}

// TestWarmStatusHoldsNoGHLBody is item 9 of the write-safety issue: a warming request GHL
// refuses shows in GET /_ghlproxy/warm with its status only; GHL's answer — a customer's
// data, here a marked error message — never reaches whoever reads the endpoint.
func TestWarmStatusHoldsNoGHLBody(t *testing.T) {
	const marker = "Customer Secret Zq81"
	ghl := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"statusCode":400,"message":"contact %s is invalid"}`, marker)
	}))
	t.Cleanup(ghl.Close)
	t.Setenv("GHL_WARM_TOKEN", "pit-warm-status")
	r := startReplica(t, testConfig(t, ghl.URL, "GHLPROXY_WARM_INTERVAL=1h",
		warmTargets(`{path: "/contacts/?locationId=loc-w&limit=2"}`)))
	until(t, 10*time.Second, "the start-up warming run", func() bool { return len(runs(t, r, "")) > 0 })
	run := runs(t, r, "")[0]
	if run.Result != warm.ResultError || len(run.Errors) != 1 || !strings.Contains(run.Errors[0], "status 400") {
		t.Fatalf("run %+v; want one error naming the status", run)
	}
	_, body := call(t, http.DefaultClient, "GET", r.URL+"/_ghlproxy/warm", "", nil)
	if strings.Contains(string(body), marker) {
		t.Errorf("GET /_ghlproxy/warm holds GHL's answer: %s", body)
	}
}
