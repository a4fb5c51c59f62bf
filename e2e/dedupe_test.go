package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// answer is one client's view of a request.
type answer struct {
	Status int
	Header http.Header
	Body   []byte
	Err    error
	At     time.Time
}

// send makes one request with its own context and records what came back.
func send(c *http.Client, method, url, body string, hdr http.Header, timeout time.Duration, wrote func()) answer {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var a answer
	if wrote != nil {
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { wrote() }})
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		a.Err, a.At = err, time.Now()
		return a
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		a.Err, a.At = err, time.Now()
		return a
	}
	defer resp.Body.Close()
	a.Body, a.Err = io.ReadAll(resp.Body)
	a.Status, a.Header, a.At = resp.StatusCode, resp.Header, time.Now()
	return a
}

func contactIDOf(b []byte) string {
	var v struct {
		Contact struct {
			ID string `json:"id"`
		} `json:"contact"`
	}
	_ = json.Unmarshal(b, &v)
	return v.Contact.ID
}

// TestFoldConcurrentCreatesAcrossReplicas is issue 5's first criterion: 200 concurrent
// identical POST /contacts/ through three replicas sharing Redis reach GHL once, and every
// caller gets the same 201 with the same contact id; after the window the same body
// reaches GHL again.
func TestFoldConcurrentCreatesAcrossReplicas(t *testing.T) {
	const window = 3 * time.Second
	const delay = 300 * time.Millisecond // GHL's create takes a while: most callers join it in flight
	srv := redistest.Start(t)
	up := startLoggedStandIn(t, fakeghl.Config{})
	up.Fake.SetExtraDelay(delay)
	var rs []*replica
	for range 3 {
		rs = append(rs, startReplica(t, testConfig(t, up.URL, "GHLPROXY_REDIS_URL="+srv.URL(),
			"GHLPROXY_REDIS_TIMEOUT=1s", "GHLPROXY_DEDUPE_WINDOW="+window.String())))
	}
	token := fakeghl.Token("Location", "loc-fold", "app-1")
	auth := "Bearer " + token
	body := `{"locationId":"loc-fold","email":"fold@example.com","firstName":"Fold"}`
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	defer client.CloseIdleConnections()

	const n = 200
	answers := make([]answer, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			answers[i] = send(client, "POST", rs[i%3].URL+"/contacts/", body, ghlHeaders(token), 30*time.Second, nil)
		}()
	}
	close(start)
	wg.Wait()

	ids := map[string]int{}
	headers := map[string]int{}
	var firstAnswer time.Time
	for i, a := range answers {
		if a.Err != nil {
			t.Fatalf("caller %d: %v", i, a.Err)
		}
		if a.Status != http.StatusCreated {
			t.Errorf("caller %d: status %d %s", i, a.Status, a.Body)
		}
		if m := callerMismatch(auth, a.Status, a.Header, a.Body); m != "" {
			t.Errorf("caller %d: %s", i, m)
		}
		ids[contactIDOf(a.Body)]++
		headers[a.Header.Get("X-Ghlproxy-Dedupe")]++
		if firstAnswer.IsZero() || a.At.Before(firstAnswer) {
			firstAnswer = a.At
		}
	}
	st := up.Fake.Stats()
	t.Logf("%d callers: contact ids %v, X-Ghlproxy-Dedupe %v; upstream creates %d, POST /contacts/ calls %d",
		n, ids, headers, st.Creates["contacts"], st.RouteCalls("POST /contacts/"))
	if len(ids) != 1 {
		t.Errorf("callers got %d different contact ids: %v", len(ids), ids)
	}
	if st.Creates["contacts"] != 1 || st.RouteCalls("POST /contacts/") != 1 {
		t.Fatalf("the stand-in saw %d creates in %d calls; want 1", st.Creates["contacts"], st.RouteCalls("POST /contacts/"))
	}
	if headers[""] != 1 || headers["shared"]+headers["replay"] != n-1 {
		t.Errorf("X-Ghlproxy-Dedupe %v: want exactly one caller without it and every other shared or replay", headers)
	}

	// After the window the same body is a new request. Retry it every 100ms (as a client
	// would) until one is not answered from the window; that one must reach GHL, and not
	// before the window has passed since the first call's answer.
	sentAt := up.Log.arrivals()[0].At
	var again answer
	var againAt time.Time
	for i := 0; ; i++ {
		againAt = time.Now()
		again = send(client, "POST", rs[i%3].URL+"/contacts/", body, ghlHeaders(token), 30*time.Second, nil)
		if again.Err != nil {
			t.Fatal(again.Err)
		}
		if again.Header.Get("X-Ghlproxy-Dedupe") == "" {
			break
		}
		if time.Since(firstAnswer) > window+5*time.Second {
			t.Fatalf("still answered from the fold window %v after the first answer (window %v)", time.Since(firstAnswer), window)
		}
		time.Sleep(100 * time.Millisecond) // a client's retry interval, not synchronisation
	}
	st = up.Fake.Stats()
	t.Logf("after the window: %d %s at +%v from the first answer; POST /contacts/ calls %d",
		again.Status, again.Body, againAt.Sub(firstAnswer).Round(time.Millisecond), st.RouteCalls("POST /contacts/"))
	if st.RouteCalls("POST /contacts/") != 2 {
		t.Errorf("after the window the stand-in saw %d POST /contacts/ calls; want 2", st.RouteCalls("POST /contacts/"))
	}
	// The first call finished no earlier than it reached GHL plus GHL's delay.
	if earliest := sentAt.Add(delay + window - 50*time.Millisecond); againAt.Before(earliest) {
		t.Errorf("the same body reached GHL again %v after the first call, before the %v window was over", againAt.Sub(sentAt), window)
	}
}

// TestFoldNeverMixes: requests that differ in anything that changes their meaning never
// fold; the controls show that the test can see a fold when there is one.
func TestFoldNeverMixes(t *testing.T) {
	up := startLoggedStandIn(t, fakeghl.Config{Limit: 100000})
	r := startReplica(t, testConfig(t, up.URL))
	tokA := fakeghl.Token("Location", "loc-mix", "app-a")
	tokB := "pit-mix-b"
	tokR := fakeghl.Token("Location", "loc-mix-read", "app-a")
	client := &http.Client{}
	defer client.CloseIdleConnections()
	hdr := func(token, version string) http.Header {
		return http.Header{"Authorization": {"Bearer " + token}, "Version": {version}}
	}
	create := func(email, name string) string {
		return fmt.Sprintf(`{"locationId":"loc-mix","email":%q,"firstName":%q}`, email, name)
	}
	type req struct {
		method, path, body string
		hdr                http.Header
	}
	for _, tc := range []struct {
		name  string
		a, b  req
		calls int // upstream calls the pair makes
	}{
		{"credentials", req{"POST", "/contacts/", create("cred@example.com", "C"), hdr(tokA, "2021-07-28")},
			req{"POST", "/contacts/", create("cred@example.com", "C"), hdr(tokB, "2021-07-28")}, 2},
		{"version", req{"POST", "/contacts/", create("ver@example.com", "V"), hdr(tokA, "2021-07-28")},
			req{"POST", "/contacts/", create("ver@example.com", "V"), hdr(tokA, "2021-04-15")}, 2},
		{"body", req{"POST", "/contacts/", create("body1@example.com", "B"), hdr(tokA, "2021-07-28")},
			req{"POST", "/contacts/", create("body2@example.com", "B"), hdr(tokA, "2021-07-28")}, 2},
		{"repeated query keys reordered", req{"GET", "/contacts/?locationId=loc-mix&query=q1&tags=a&tags=b", "", hdr(tokA, "2021-07-28")},
			req{"GET", "/contacts/?locationId=loc-mix&query=q1&tags=b&tags=a", "", hdr(tokA, "2021-07-28")}, 2},
		// Controls: the same request, and the same query with distinct keys reordered.
		{"control: identical write", req{"POST", "/contacts/", create("same@example.com", "S"), hdr(tokA, "2021-07-28")},
			req{"POST", "/contacts/", create("same@example.com", "S"), hdr(tokA, "2021-07-28")}, 1},
		// Of a location no write above touched: an answer read less than the cache's race
		// window after a write of its scope is neither cached nor replayed (GHL may have
		// read it before the write), and the second read would go upstream for that reason.
		{"control: distinct keys reordered", req{"GET", "/contacts/?locationId=loc-mix-read&query=q2&limit=5", "", hdr(tokR, "2021-07-28")},
			req{"GET", "/contacts/?limit=5&query=q2&locationId=loc-mix-read", "", hdr(tokR, "2021-07-28")}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.Log.arrivals())
			for i, rq := range []req{tc.a, tc.b} {
				a := send(client, rq.method, r.URL+rq.path, rq.body, rq.hdr, 30*time.Second, nil)
				if a.Err != nil {
					t.Fatal(a.Err)
				}
				if m := callerMismatch(rq.hdr.Get("Authorization"), a.Status, a.Header, a.Body); m != "" {
					t.Errorf("request %d: %s", i+1, m)
				}
				if a.Status >= 500 || a.Header.Get("X-Ghlproxy-Error") != "" {
					t.Errorf("request %d: %d %s", i+1, a.Status, a.Body)
				}
				if i == 1 && tc.calls == 2 && a.Header.Get("X-Ghlproxy-Dedupe") != "" {
					t.Errorf("the second request was answered %q from the first", a.Header.Get("X-Ghlproxy-Dedupe"))
				}
			}
			if got := len(up.Log.arrivals()) - before; got != tc.calls {
				t.Errorf("upstream saw %d calls for the pair; want %d", got, tc.calls)
			}
		})
	}
}

// TestFoldLeaderKilled: the replica leading a create is SIGKILLed while GHL still holds
// the call. The identical requests waiting on the other replicas get a clear error in
// GHL's shape within the bound, and nobody sends the create a second time.
func TestFoldLeaderKilled(t *testing.T) {
	srv := redistest.Start(t)
	up := startLoggedStandIn(t, fakeghl.Config{})
	up.Fake.SetExtraDelay(time.Minute) // the leader's call is in flight until it dies
	env := []string{"GHLPROXY_REDIS_URL=" + srv.URL(), "GHLPROXY_REDIS_TIMEOUT=1s"}
	leader := startProcess(t, up.URL, env...)
	others := []*process{startProcess(t, up.URL, env...), startProcess(t, up.URL, env...)}

	arrived := make(chan struct{}, 1)
	up.Log.setOnArrive(func(a arrival) {
		if a.Method == "POST" && a.Path == "/contacts/" {
			select {
			case arrived <- struct{}{}:
			default:
			}
		}
	})
	token := fakeghl.Token("Location", "loc-kill", "app-1")
	body := `{"locationId":"loc-kill","email":"kill@example.com","firstName":"Kill"}`
	client := &http.Client{}
	defer client.CloseIdleConnections()

	leaderDone := make(chan answer, 1)
	go func() {
		leaderDone <- send(client, "POST", leader.URL+"/contacts/", body, ghlHeaders(token), 2*time.Minute, nil)
	}()
	select {
	case <-arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the leader's create never reached the stand-in")
	}

	// Waiters on the other replicas: each request is on the wire before the leader dies.
	const perReplica = 4
	var wrote sync.WaitGroup
	var wg sync.WaitGroup
	waiters := make([]answer, 2*perReplica)
	for i := range waiters {
		wg.Add(1)
		wrote.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			waiters[i] = send(client, "POST", others[i%2].URL+"/contacts/", body, ghlHeaders(token), 2*time.Minute,
				func() { once.Do(wrote.Done) })
			once.Do(wrote.Done)
		}()
	}
	wrote.Wait()
	leader.Kill()
	killed := time.Now()
	if a := <-leaderDone; a.Err == nil {
		t.Errorf("the killed leader's client got an answer: %d %s", a.Status, a.Body)
	}
	wg.Wait()

	var slowest time.Duration
	for i, a := range waiters {
		if a.Err != nil {
			t.Errorf("waiter %d: no answer: %v", i, a.Err)
			continue
		}
		slowest = max(slowest, a.At.Sub(killed))
		var shape struct {
			StatusCode int    `json:"statusCode"`
			Message    string `json:"message"`
		}
		if a.Status < 500 || a.Header.Get("X-Ghlproxy-Error") == "" || json.Unmarshal(a.Body, &shape) != nil || shape.StatusCode != a.Status || shape.Message == "" {
			t.Errorf("waiter %d: want a sidecar error in GHL's shape, got %d %q %s", i, a.Status, a.Header.Get("X-Ghlproxy-Error"), a.Body)
		}
		if i == 0 {
			t.Logf("waiter answer: %d %s: %s", a.Status, a.Header.Get("X-Ghlproxy-Error"), a.Body)
		}
	}
	sent := 0
	for _, a := range up.Log.arrivals() {
		if a.Method == "POST" && a.Path == "/contacts/" {
			sent++
		}
	}
	st := up.Fake.Stats()
	t.Logf("%d waiters answered within %v of the kill; the stand-in received %d POST /contacts/ and created %d contacts",
		len(waiters), slowest.Round(time.Millisecond), sent, st.Creates["contacts"])
	if slowest > 20*time.Second {
		t.Errorf("waiters answered up to %v after the leader died; want within two lease lifetimes and change", slowest)
	}
	if sent != 1 || st.Creates["contacts"] > 1 {
		t.Errorf("the stand-in received %d creates (%d applied); want only the dead leader's", sent, st.Creates["contacts"])
	}
}
