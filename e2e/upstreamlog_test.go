package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/poll"
)

// longRuns reports whether the long variants (the issues' full durations at GHL's real
// numbers) should run: GHLPROXY_LONG=1.
func longRuns() bool { return os.Getenv("GHLPROXY_LONG") == "1" }

// arrival is one request as the stand-in's listener saw it.
type arrival struct {
	At     time.Time
	Method string
	Path   string
	Auth   string
	Status int // 0 while in flight or when the connection was reset
}

// upstreamLog sits in front of a stand-in and timestamps every request that reaches it, so
// that tests can count upstream calls within a span of time (the stand-in's Stats count
// totals) and wait for a call to be in flight without sleeping.
type upstreamLog struct {
	next http.Handler
	mu   sync.Mutex
	hits []*arrival
	// onArrive, when set, is called as each request arrives (before the stand-in sees it).
	onArrive func(a arrival)
}

func (l *upstreamLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/_fake/") {
		l.next.ServeHTTP(w, r)
		return
	}
	a := &arrival{At: time.Now(), Method: r.Method, Path: r.URL.Path, Auth: r.Header.Get("Authorization")}
	l.mu.Lock()
	l.hits = append(l.hits, a)
	f := l.onArrive
	l.mu.Unlock()
	if f != nil {
		f(*a)
	}
	sw := &statusWriter{ResponseWriter: w}
	l.next.ServeHTTP(sw, r)
	l.mu.Lock()
	a.Status = sw.status
	l.mu.Unlock()
}

// arrivals returns a copy of what arrived so far, in arrival order.
func (l *upstreamLog) arrivals() []arrival {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]arrival, len(l.hits))
	for i, a := range l.hits {
		out[i] = *a
	}
	return out
}

func (l *upstreamLog) setOnArrive(f func(arrival)) {
	l.mu.Lock()
	l.onArrive = f
	l.mu.Unlock()
}

// statusWriter records the status; it keeps Hijack working because the stand-in resets
// connections through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// standIn is a stand-in behind an upstreamLog over real HTTP.
type standIn struct {
	Fake *fakeghl.Server
	Log  *upstreamLog
	URL  string
	stop func()
}

// startLoggedStandIn runs a stand-in with cfg behind an upstreamLog until the test ends
// (or Stop).
func startLoggedStandIn(t *testing.T, cfg fakeghl.Config) *standIn {
	t.Helper()
	fake := fakeghl.New(cfg)
	lg := &upstreamLog{next: fake}
	srv := httptest.NewServer(lg)
	var once sync.Once
	s := &standIn{Fake: fake, Log: lg, URL: srv.URL, stop: func() {
		once.Do(func() { fake.Close(); srv.Close() })
	}}
	t.Cleanup(s.stop)
	return s
}

// Stop closes the stand-in's listener and connections.
func (s *standIn) Stop() { s.stop() }

// countIn counts the arrivals with from <= At <= to, and the 429s among them.
func countIn(as []arrival, from, to time.Time) (n, tooMany int) {
	for _, a := range as {
		if a.At.Before(from) || a.At.After(to) {
			continue
		}
		n++
		if a.Status == http.StatusTooManyRequests {
			tooMany++
		}
	}
	return n, tooMany
}

// createContact creates a contact straight on the stand-in (not through a sidecar) and
// returns its id.
func createContact(t *testing.T, upstreamURL, token, loc, email string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"locationId": loc, "email": email, "firstName": "Seed"})
	resp, b := call(t, http.DefaultClient, "POST", upstreamURL+"/contacts/", string(body), ghlHeaders(token))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create %s on the stand-in: %d %s", email, resp.StatusCode, b)
	}
	var out struct {
		Contact struct {
			ID string `json:"id"`
		} `json:"contact"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.Contact.ID == "" {
		t.Fatalf("create %s: no contact id in %s", email, b)
	}
	return out.Contact.ID
}

// contactFields reads a contact straight from the stand-in.
func contactFields(t *testing.T, upstreamURL, token, id string) map[string]any {
	t.Helper()
	resp, b := call(t, http.DefaultClient, "GET", upstreamURL+"/contacts/"+id, "", ghlHeaders(token))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("get contact %s on the stand-in: %d %s", id, resp.StatusCode, b)
	}
	var out struct {
		Contact map[string]any `json:"contact"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("contact %s: %v in %s", id, err, b)
	}
	return out.Contact
}

// callerMismatch returns a description when a JSON answer carries a "_caller" that is not
// the one of the credential that asked, and when an answer made by GHL (no
// X-Ghlproxy-Error) lacks it: every body the stand-in makes carries its caller.
func callerMismatch(auth string, status int, hdr http.Header, body []byte) string {
	var v struct {
		Caller *string `json:"_caller"`
	}
	if len(body) == 0 || body[0] != '{' {
		return ""
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return "answer is not JSON: " + err.Error()
	}
	want := fakeghl.CallerOf(auth)
	switch {
	case v.Caller == nil && hdr.Get("X-Ghlproxy-Error") == "" && status != http.StatusTooManyRequests && status < 500:
		return "GHL's answer without _caller: " + string(body)
	case v.Caller != nil && *v.Caller != want:
		return "answer made for caller " + *v.Caller + " reached caller " + want
	}
	return ""
}

// metricValue scrapes one unlabelled sample from a replica's /metrics.
func metricValue(t *testing.T, opsURL, name string) (float64, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", opsURL+"/metrics", nil)
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// readyState is GET /readyz's "status" ("ready", "degraded", "not ready").
func readyState(opsURL string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", opsURL+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "unreachable: " + err.Error()
	}
	defer resp.Body.Close()
	var v struct {
		Status string `json:"status"`
	}
	b, _ := io.ReadAll(resp.Body)
	if json.Unmarshal(b, &v) != nil {
		return "bad answer: " + string(b)
	}
	return v.Status
}

// checkGoroutines waits (bounded) for the goroutine count to come back to within slack of
// base, and fails with a dump when it does not.
func checkGoroutines(t *testing.T, base, slack int) {
	t.Helper()
	var n int
	if _, ok := poll.Within(10*time.Second, func() bool {
		n = runtime.NumGoroutine()
		return n <= base+slack
	}); ok {
		t.Logf("goroutines: %d after the run, %d before", n, base)
		return
	}
	var sb strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&sb, 1)
	t.Errorf("goroutine leak: %d goroutines 10s after the run, %d before:\n%s", n, base, sb.String())
}

// percentile of ds (sorted in place), p in 0..100.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	i := int(float64(len(ds))*p/100+0.5) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }
