package fakeghl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
)

// clock is a settable time for crossing rate-limit windows without sleeping.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func start(t *testing.T, cfg fakeghl.Config) (*fakeghl.Server, *httptest.Server) {
	t.Helper()
	fake := fakeghl.New(cfg)
	ts := httptest.NewServer(fake)
	t.Cleanup(func() { fake.Close(); ts.Close() })
	return fake, ts
}

type client struct {
	t    *testing.T
	base string
	auth string
}

func newClient(t *testing.T, ts *httptest.Server, token string) client {
	auth := ""
	if token != "" {
		auth = "Bearer " + token
	}
	return client{t: t, base: ts.URL, auth: auth}
}

// do sends one request and decodes the JSON answer (nil when there is none).
func (c client) do(method, path string, body any) (*http.Response, map[string]any) {
	c.t.Helper()
	resp, raw := c.raw(method, path, body)
	var m map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			c.t.Fatalf("%s %s: body %q: %v", method, path, raw, err)
		}
	}
	return resp, m
}

func (c client) raw(method, path string, body any) (*http.Response, []byte) {
	c.t.Helper()
	return c.send(method, path, body, "2021-07-28")
}

func (c client) rawVersion(method, path, version string) (*http.Response, []byte) {
	c.t.Helper()
	return c.send(method, path, nil, version)
}

func (c client) send(method, path string, body any, version string) (*http.Response, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.auth != "" {
		req.Header.Set("Authorization", c.auth)
	}
	req.Header.Set("Version", version)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp, raw
}

func (c client) expect(status int, method, path string, body any) map[string]any {
	c.t.Helper()
	resp, m := c.do(method, path, body)
	if resp.StatusCode != status {
		c.t.Fatalf("%s %s: status %d, want %d; body %v", method, path, resp.StatusCode, status, m)
	}
	return m
}

func TestRateLimitHeadersAndRollingWindow(t *testing.T) {
	clk := newClock()
	fake, ts := start(t, fakeghl.Config{Limit: 3, Window: 10 * time.Second, Now: clk.Now})
	tok := fakeghl.Token("Location", "loc1", "app1")
	c := newClient(t, ts, tok)
	path := "/contacts/?locationId=loc1"

	for i, want := range []string{"2", "1", "0"} {
		if i == 2 {
			clk.Advance(5 * time.Second) // t=5s
		}
		resp, _ := c.do("GET", path, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
		h := resp.Header
		for k, v := range map[string]string{
			"X-RateLimit-Max": "3", "X-RateLimit-Interval-Milliseconds": "10000",
			"X-RateLimit-Remaining": want, "X-RateLimit-Limit-Daily": "200000",
		} {
			if got := h.Get(k); got != v {
				t.Errorf("request %d: %s = %q, want %q", i, k, got, v)
			}
		}
	}
	clk.Advance(4900 * time.Millisecond) // t=9.9s: the two at t=0 are still in the window
	resp, raw := c.raw("GET", path, nil)
	if resp.StatusCode != 429 {
		t.Fatalf("4th request in window: status %d", resp.StatusCode)
	}
	if string(raw) != string(ghlerror.Body(429, "Too Many Requests")) {
		t.Errorf("429 body %s", raw)
	}
	if resp.Header.Get(ghlerror.Header) != "" {
		t.Errorf("stand-in set %s", ghlerror.Header)
	}
	if resp.Header.Get("X-RateLimit-Remaining") != "0" {
		t.Errorf("429 remaining %q", resp.Header.Get("X-RateLimit-Remaining"))
	}
	clk.Advance(100 * time.Millisecond) // t=10s: the two at t=0 leave the window
	c.expect(200, "GET", path, nil)
	c.expect(200, "GET", path, nil)
	c.expect(429, "GET", path, nil)

	st := fake.Stats()
	scope := fakeghl.ScopeOf("Bearer " + tok)
	if scope != "Location:loc1 app:app1" {
		t.Errorf("scope %q", scope)
	}
	// Arrivals in (0.0s, 10.0s]: t=5, 9.9, 10, 10, 10 → 5.
	if got := st.MaxInWindow[scope]; got != 5 {
		t.Errorf("MaxInWindow = %d, want 5", got)
	}
	if st.TooMany != 2 || st.Count("GET /contacts/", 429) != 2 || st.Count("GET /contacts/", 200) != 5 {
		t.Errorf("stats: tooMany %d, routes %v", st.TooMany, st.Routes)
	}
}

func TestLimitOverridesAndDaily(t *testing.T) {
	clk := newClock()
	_, ts := start(t, fakeghl.Config{
		Daily: 3, Now: clk.Now,
		Limits: map[string]int{"Location:slow": 1},
	})
	slow := newClient(t, ts, fakeghl.Token("Location", "slow", "any-app"))
	resp, _ := slow.do("GET", "/contacts/", nil)
	if resp.Header.Get("X-RateLimit-Max") != "1" {
		t.Errorf("override: max %q", resp.Header.Get("X-RateLimit-Max"))
	}
	slow.expect(429, "GET", "/contacts/", nil)

	c := newClient(t, ts, "pit-opaque-token")
	for range 3 {
		c.expect(200, "GET", "/contacts/?locationId=L", nil)
	}
	resp, _ = c.do("GET", "/contacts/?locationId=L", nil)
	if resp.StatusCode != 429 || resp.Header.Get("X-RateLimit-Daily-Remaining") != "0" {
		t.Fatalf("daily: status %d, daily remaining %q", resp.StatusCode, resp.Header.Get("X-RateLimit-Daily-Remaining"))
	}
	clk.Advance(24 * time.Hour)
	c.expect(200, "GET", "/contacts/?locationId=L", nil)
}

func TestUnauthorized(t *testing.T) {
	_, ts := start(t, fakeghl.Config{})
	resp, raw := newClient(t, ts, "").raw("GET", "/contacts/abc", nil)
	if resp.StatusCode != 401 || string(raw) != string(ghlerror.Body(401, "Invalid JWT")) {
		t.Fatalf("status %d body %s", resp.StatusCode, raw)
	}
	if resp.Header.Get("X-RateLimit-Max") != "" {
		t.Error("401 carries rate-limit headers")
	}
}

func TestContactCRUDAndWriteOrder(t *testing.T) {
	fake, ts := start(t, fakeghl.Config{Seed: 7})
	tok := fakeghl.Token("Location", "loc1", "")
	c := newClient(t, ts, tok)
	marker := fakeghl.CallerOf("Bearer " + tok)

	m := c.expect(201, "POST", "/contacts/", map[string]any{"firstName": "Ada", "email": "ada@example.com", "tags": []string{"a"}})
	if m["_caller"] != marker {
		t.Errorf("_caller %v, want %s", m["_caller"], marker)
	}
	contact := m["contact"].(map[string]any)
	id := contact["id"].(string)
	if len(id) != 20 || contact["locationId"] != "loc1" {
		t.Fatalf("created %v", contact)
	}

	dup := c.expect(400, "POST", "/contacts/", map[string]any{"email": "ADA@example.com"})
	if dup["message"] != "This location does not allow duplicated contacts." {
		t.Errorf("duplicate message %v", dup["message"])
	}
	if meta := dup["meta"].(map[string]any); meta["contactId"] != id || meta["matchingField"] != "email" {
		t.Errorf("duplicate meta %v", meta)
	}
	// The same email in another location is not a duplicate.
	other := newClient(t, ts, fakeghl.Token("Location", "loc2", ""))
	otherID := other.expect(201, "POST", "/contacts/", map[string]any{"email": "ada@example.com", "phone": "+1555"})["contact"].(map[string]any)["id"].(string)

	c.expect(200, "PUT", "/contacts/"+id, map[string]any{"lastName": "Lovelace"})
	upd := c.expect(200, "PUT", "/contacts/"+id, map[string]any{"lastName": "King", "phone": "+1999"})
	if upd["succeded"] != true {
		t.Errorf("update answer %v", upd)
	}
	got := c.expect(200, "GET", "/contacts/"+id, nil)["contact"].(map[string]any)
	if got["firstName"] != "Ada" || got["lastName"] != "King" || got["phone"] != "+1999" {
		t.Errorf("after updates %v", got)
	}
	tags := c.expect(201, "POST", "/contacts/"+id+"/tags", map[string]any{"tags": []string{"b", "c"}})["tags"]
	if !equalJSON(tags, []string{"a", "b", "c"}) {
		t.Errorf("tags after add %v", tags)
	}
	tags = c.expect(200, "DELETE", "/contacts/"+id+"/tags", map[string]any{"tags": []string{"a"}})["tags"]
	if !equalJSON(tags, []string{"b", "c"}) {
		t.Errorf("tags after remove %v", tags)
	}

	// Another location's token cannot read the contact.
	other.expect(403, "GET", "/contacts/"+id, nil)
	c.expect(403, "GET", "/contacts/"+otherID, nil)

	up := c.expect(200, "POST", "/contacts/upsert", map[string]any{"email": "ada@example.com", "city": "London"})
	if up["new"] != false || up["contact"].(map[string]any)["id"] != id {
		t.Errorf("upsert existing %v", up)
	}
	up = c.expect(200, "POST", "/contacts/upsert", map[string]any{"email": "grace@example.com"})
	if up["new"] != true {
		t.Errorf("upsert new %v", up)
	}

	c.expect(200, "DELETE", "/contacts/"+id, nil)
	c.expect(400, "GET", "/contacts/"+id, nil)

	st := fake.Stats()
	if st.Creates["contacts"] != 3 {
		t.Errorf("creates %v", st.Creates)
	}
	var methods []string
	for _, w := range st.Writes[id] {
		methods = append(methods, w.Method+" "+w.Path[strings.LastIndex(w.Path, "/"):])
	}
	want := []string{"POST /", "PUT /" + id, "PUT /" + id, "POST /tags", "DELETE /tags", "POST /upsert", "DELETE /" + id}
	if strings.Join(methods, ",") != strings.Join(want, ",") {
		t.Errorf("writes %v, want %v", methods, want)
	}
	if w := st.Writes[id]; w[1].BodyHash == w[2].BodyHash {
		t.Error("different bodies, same hash")
	}
}

func TestContactListPagingWithAbsoluteNextPageURL(t *testing.T) {
	_, ts := start(t, fakeghl.Config{})
	c := newClient(t, ts, "pit-token")
	var ids []string
	for i := range 5 {
		m := c.expect(201, "POST", "/contacts/", map[string]any{"locationId": "L", "email": string(rune('a'+i)) + "@x.io"})
		ids = append(ids, m["contact"].(map[string]any)["id"].(string))
	}
	c.expect(201, "POST", "/contacts/", map[string]any{"locationId": "other", "email": "z@x.io"})

	var seen []string
	path := "/contacts/?locationId=L&limit=2"
	for pages := 0; path != ""; pages++ {
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		m := c.expect(200, "GET", path, nil)
		for _, x := range m["contacts"].([]any) {
			seen = append(seen, x.(map[string]any)["id"].(string))
		}
		meta := m["meta"].(map[string]any)
		if meta["total"] != 5.0 {
			t.Errorf("total %v", meta["total"])
		}
		next, _ := meta["nextPageUrl"].(string)
		if next == "" {
			break
		}
		if !strings.HasPrefix(next, fakeghl.DefaultBaseURL+"/contacts/?") {
			t.Fatalf("nextPageUrl %q", next)
		}
		path = strings.TrimPrefix(next, fakeghl.DefaultBaseURL)
	}
	if strings.Join(seen, ",") != strings.Join(ids, ",") {
		t.Errorf("paged %v, want %v", seen, ids)
	}
}

func TestContactSearch(t *testing.T) {
	_, ts := start(t, fakeghl.Config{})
	c := newClient(t, ts, fakeghl.Token("Location", "L", ""))
	for i, p := range []map[string]any{
		{"firstName": "Ann", "email": "ann@x.io", "tags": []string{"vip"}},
		{"firstName": "Bob", "email": "bob@x.io", "tags": []string{"vip", "new"}},
		{"firstName": "Cat", "email": "cat@y.io"},
		{"firstName": "Annabel", "email": "annabel@y.io", "tags": []string{"new"}},
	} {
		p["phone"] = "+100" + string(rune('0'+i))
		c.expect(201, "POST", "/contacts/", p)
	}
	names := func(m map[string]any) string {
		var out []string
		for _, x := range m["contacts"].([]any) {
			out = append(out, x.(map[string]any)["firstName"].(string))
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name string
		body map[string]any
		want string
		tot  float64
	}{
		{"query", map[string]any{"query": "ann", "pageLimit": 10}, "Ann,Annabel", 2},
		{"email", map[string]any{"pageLimit": 10, "filters": []any{map[string]any{"field": "email", "operator": "eq", "value": "BOB@x.io"}}}, "Bob", 1},
		{"tags", map[string]any{"pageLimit": 10, "filters": []any{map[string]any{"field": "tags", "operator": "contains", "value": []string{"vip"}}}}, "Ann,Bob", 2},
		{"or group", map[string]any{"pageLimit": 10, "filters": []any{map[string]any{"group": "OR", "filters": []any{
			map[string]any{"field": "tags", "operator": "eq", "value": "new"},
			map[string]any{"field": "email", "operator": "contains", "value": "cat@"}}}}}, "Bob,Cat,Annabel", 3},
		{"page 2", map[string]any{"pageLimit": 3, "page": 2}, "Annabel", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := c.expect(200, "POST", "/contacts/search", tc.body)
			if got := names(m); got != tc.want || m["total"] != tc.tot {
				t.Errorf("got %s total %v, want %s total %v", got, m["total"], tc.want, tc.tot)
			}
		})
	}
	// searchAfter paging walks every contact once.
	var all []string
	var after any
	for range 5 {
		body := map[string]any{"pageLimit": 3}
		if after != nil {
			body["searchAfter"] = after
		}
		m := c.expect(200, "POST", "/contacts/search", body)
		list := m["contacts"].([]any)
		if len(list) == 0 {
			break
		}
		all = append(all, names(m))
		after = list[len(list)-1].(map[string]any)["searchAfter"]
	}
	if strings.Join(all, "|") != "Ann,Bob,Cat|Annabel" {
		t.Errorf("searchAfter pages %v", all)
	}
}

func TestOpportunitiesAndConversations(t *testing.T) {
	_, ts := start(t, fakeghl.Config{})
	c := newClient(t, ts, fakeghl.Token("Location", "L", ""))
	var ids []string
	for _, name := range []string{"Deal one", "Deal two", "Other"} {
		m := c.expect(201, "POST", "/opportunities/", map[string]any{"name": name, "pipelineId": "p", "contactId": "c1"})
		ids = append(ids, m["opportunity"].(map[string]any)["id"].(string))
	}
	c.expect(200, "PUT", "/opportunities/"+ids[0], map[string]any{"monetaryValue": 10})
	o := c.expect(200, "GET", "/opportunities/"+ids[0], nil)["opportunity"].(map[string]any)
	if o["monetaryValue"] != 10.0 || o["name"] != "Deal one" || o["status"] != "open" {
		t.Errorf("opportunity %v", o)
	}
	m := c.expect(200, "GET", "/opportunities/search?location_id=L&q=deal&limit=1", nil)
	meta := m["meta"].(map[string]any)
	if meta["total"] != 2.0 || !strings.HasPrefix(meta["nextPageUrl"].(string), fakeghl.DefaultBaseURL+"/opportunities/search?") {
		t.Errorf("search meta %v", meta)
	}
	next := strings.TrimPrefix(meta["nextPageUrl"].(string), fakeghl.DefaultBaseURL)
	m = c.expect(200, "GET", next, nil)
	if got := m["opportunities"].([]any)[0].(map[string]any)["id"]; got != ids[1] {
		t.Errorf("second page %v", got)
	}
	if m := c.expect(200, "POST", "/opportunities/search", map[string]any{"locationId": "L", "query": "other"}); m["total"] != 1.0 {
		t.Errorf("POST search %v", m)
	}

	conv := c.expect(201, "POST", "/conversations/", map[string]any{"locationId": "L", "contactId": "c1"})["conversation"].(map[string]any)
	c.expect(201, "POST", "/conversations/", map[string]any{"locationId": "L", "contactId": "c2"})
	s := c.expect(200, "GET", "/conversations/search?locationId=L&contactId=c1", nil)
	if s["total"] != 1.0 || s["conversations"].([]any)[0].(map[string]any)["id"] != conv["id"] {
		t.Errorf("conversation search %v", s)
	}
	if g := c.expect(200, "GET", "/conversations/"+conv["id"].(string), nil); g["contactId"] != "c1" {
		t.Errorf("conversation %v", g)
	}
}

func TestFaultsErrorRateIsDeterministic(t *testing.T) {
	run := func() (string, *fakeghl.Server) {
		fake, ts := start(t, fakeghl.Config{Seed: 42, Limit: 1000})
		fake.SetErrorRate(0.3, 502)
		c := newClient(t, ts, "pit-x")
		var b strings.Builder
		for range 100 {
			resp, _ := c.do("GET", "/contacts/?locationId=L", nil)
			if resp.StatusCode == 502 {
				b.WriteByte('x')
			} else {
				b.WriteByte('.')
			}
		}
		return b.String(), fake
	}
	a, fake := run()
	b, _ := run()
	if a != b {
		t.Errorf("same seed, different failures:\n%s\n%s", a, b)
	}
	n := strings.Count(a, "x")
	if n < 15 || n > 45 {
		t.Errorf("%d failures of 100 at rate 0.3", n)
	}
	if got := fake.Stats().Count("GET /contacts/", 502); got != int64(n) {
		t.Errorf("stats counted %d 502s, saw %d", got, n)
	}
}

func TestOutageAndResetsThroughControlAPI(t *testing.T) {
	clk := newClock()
	fake, ts := start(t, fakeghl.Config{Now: clk.Now})
	c := newClient(t, ts, "pit-x")
	post := func(body string) {
		t.Helper()
		resp, err := http.Post(ts.URL+"/_fake/faults", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST /_fake/faults %s: %d", body, resp.StatusCode)
		}
	}

	post(`{"outage":"30s","outageMode":"503"}`)
	resp, raw := c.raw("GET", "/contacts/?locationId=L", nil)
	if resp.StatusCode != 503 || string(raw) != string(ghlerror.Body(503, "Service Unavailable")) {
		t.Fatalf("outage: %d %s", resp.StatusCode, raw)
	}
	clk.Advance(30 * time.Second)
	c.expect(200, "GET", "/contacts/?locationId=L", nil)

	post(`{"outage":"1m","outageMode":"reset"}`)
	if _, err := http.Get(ts.URL + "/contacts/?locationId=L"); err == nil {
		t.Error("outage reset: request succeeded")
	}
	post(`{"outage":"0s","resetRate":1}`)
	req, _ := http.NewRequest("GET", ts.URL+"/contacts/?locationId=L", nil)
	req.Header.Set("Authorization", "pit-x")
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Error("reset rate 1: request succeeded")
	}
	if f := fake.Faults(); f.ResetRate != 1 || f.OutageMode != fakeghl.OutageReset {
		t.Errorf("faults %+v", f)
	}

	resp, err := http.Get(ts.URL + "/_fake/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st fakeghl.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if st.Count("GET /contacts/", 503) != 1 || st.Count("GET /contacts/", 0) != 2 || st.Count("GET /contacts/", 200) != 1 {
		t.Errorf("stats routes %v", st.Routes)
	}

	resp, err = http.Post(ts.URL+"/_fake/reset", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if st := fake.Stats(); st.Calls != 0 || fake.Faults().ResetRate != 0 {
		t.Errorf("after reset: %d calls, faults %+v", st.Calls, fake.Faults())
	}
	c.expect(200, "GET", "/contacts/?locationId=L", nil)

	resp, err = http.Post(ts.URL+"/_fake/faults", "application/json", strings.NewReader(`{"errorRate":2}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("invalid fault accepted: %d", resp.StatusCode)
	}
}

func TestLatencyWaitsAndCloseReleases(t *testing.T) {
	fake, ts := start(t, fakeghl.Config{})
	c := newClient(t, ts, "pit-x")
	fake.SetExtraDelay(time.Hour)
	done := make(chan int)
	go func() {
		resp, err := http.Get(ts.URL + "/oauth/nothing")
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	_ = c
	select {
	case <-done:
		t.Fatal("answered before the delay or Close")
	case <-time.After(50 * time.Millisecond):
	}
	fake.Close()
	if got := <-done; got != 404 {
		t.Errorf("after Close: %d", got)
	}
}

func TestServeStopsWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- fakeghl.Serve(ctx, ln, fakeghl.Config{}, nil) }()
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/contacts/?locationId=L", nil)
	req.Header.Set("Authorization", "Bearer pit-x")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("status %d", resp.StatusCode)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// TestBulkTagsEqualSingles: the bulk tag route does to each contact what the single add and
// remove routes do, answers one entry per contact (errors for unknown contacts and those of
// another location), and is counted as one call under its own route.
func TestBulkTagsEqualSingles(t *testing.T) {
	fake, ts := start(t, fakeghl.Config{Seed: 3})
	c := newClient(t, ts, fakeghl.Token("Location", "loc1", ""))
	other := newClient(t, ts, fakeghl.Token("Location", "loc2", ""))
	mk := func(c client, email string, tags []string) string {
		return c.expect(201, "POST", "/contacts/", map[string]any{"email": email, "tags": tags})["contact"].(map[string]any)["id"].(string)
	}
	starts := [][]string{{"a"}, {"b", "x"}, {}}
	var single, bulk []string
	for i, tags := range starts {
		single = append(single, mk(c, fmt.Sprintf("s%d@x.io", i), tags))
		bulk = append(bulk, mk(c, fmt.Sprintf("b%d@x.io", i), tags))
	}
	foreign := mk(other, "f@x.io", []string{})
	ops := []struct {
		method, op string
		tags       []string
	}{{"POST", "add", []string{"x", "y"}}, {"DELETE", "remove", []string{"a", "y"}}}
	for _, o := range ops {
		for _, id := range single {
			c.expect(map[string]int{"POST": 201, "DELETE": 200}[o.method], o.method, "/contacts/"+id+"/tags", map[string]any{"tags": o.tags})
		}
		ans := c.expect(201, "POST", "/contacts/bulk/tags/update/"+o.op, map[string]any{
			"contacts": append(slices.Clone(bulk), "nope", foreign), "tags": o.tags, "locationId": "loc1"})
		if ans["succeded"] != true || ans["errorCount"] != float64(2) {
			t.Errorf("%s: answer %v", o.op, ans)
		}
		rs := ans["responses"].([]any)
		if len(rs) != len(bulk)+2 || rs[len(bulk)].(map[string]any)["type"] != "error" || rs[len(bulk)+1].(map[string]any)["message"] != "contact does not belong to location" {
			t.Errorf("%s: entries %v", o.op, rs)
		}
		if e := rs[1].(map[string]any); e["contactId"] != bulk[1] || e["type"] != "success" || e["oldTags"] == nil {
			t.Errorf("%s: entry %v", o.op, e)
		}
	}
	for i := range starts {
		s := c.expect(200, "GET", "/contacts/"+single[i], nil)["contact"].(map[string]any)["tags"]
		b := c.expect(200, "GET", "/contacts/"+bulk[i], nil)["contact"].(map[string]any)["tags"]
		if !equalJSON(s, b) {
			t.Errorf("contact %d: tags %v via singles, %v via bulk", i, s, b)
		}
	}
	if got := other.expect(200, "GET", "/contacts/"+foreign, nil)["contact"].(map[string]any)["tags"]; !equalJSON(got, []string{}) {
		t.Errorf("another location's contact changed: %v", got)
	}
	st := fake.Stats()
	if n := st.Count("POST /contacts/bulk/tags/update/{type}", 201); n != 2 {
		t.Errorf("%d bulk calls counted, want 2", n)
	}
	if n := len(st.Writes[bulk[0]]); n != 3 {
		t.Errorf("%d writes logged for a bulk-tagged contact, want create + 2 bulk", n)
	}
	c.expect(422, "POST", "/contacts/bulk/tags/update/replace", map[string]any{"contacts": bulk, "tags": []string{"a"}, "locationId": "loc1"})
}

// TestVerifyTokens: with VerifyTokens, a JWT is accepted only with the stand-in's own
// signature, and a forged one is refused before it counts against any scope.
func TestVerifyTokens(t *testing.T) {
	s := fakeghl.New(fakeghl.Config{VerifyTokens: true, Limit: 2})
	defer s.Close()
	get := func(token string) int {
		req := httptest.NewRequest("GET", "/locations/L1", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		return rec.Code
	}
	good := fakeghl.SignedToken("Location", "L1", "app")
	forged := fakeghl.Token("Location", "L1", "app")
	for range 5 {
		if code := get(forged); code != 401 {
			t.Fatalf("forged token: %d, want 401", code)
		}
	}
	if code := get(good); code != 200 {
		t.Fatalf("signed token after forged ones: %d; forgeries must not count against its scope", code)
	}
	if code := get("pit-opaque"); code == 401 {
		t.Fatal("an opaque token is refused: only JWT signatures are checked")
	}
}
