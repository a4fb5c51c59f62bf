package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/cache"
	"github.com/ghlproxy/ghlproxy/internal/identity"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/routes"
)

// seen is what a test upstream observed of one request.
type seen struct {
	Method, Path, RawQuery, Host string
	Header                       http.Header
	Body                         string
}

// recordingUpstream is a real HTTP server that records what reaches it and answers with
// reply.
func recordingUpstream(t *testing.T, reply http.HandlerFunc) (*httptest.Server, func() []seen) {
	t.Helper()
	var mu sync.Mutex
	var got []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, seen{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Host, r.Header.Clone(), string(b)})
		mu.Unlock()
		reply(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []seen {
		mu.Lock()
		defer mu.Unlock()
		return append([]seen(nil), got...)
	}
}

func newProxy(t *testing.T, upstreamURL string, mutate ...func(*Config)) (*httptest.Server, *Handler) {
	t.Helper()
	return newProxyTB(t, upstreamURL, mutate...)
}

func newProxyTB(t testing.TB, upstreamURL string, mutate ...func(*Config)) (*httptest.Server, *Handler) {
	t.Helper()
	u, err := url.Parse(upstreamURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Upstream:        u,
		Routes:          routes.New(),
		Identity:        identity.NewResolver("test"),
		Metrics:         metrics.New(),
		UpstreamTimeout: 5 * time.Second,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, h
}

func do(t *testing.T, method, url string, body string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var auth = map[string]string{"Authorization": "Bearer pit-test-token", "Version": "2021-07-28"}

func TestForwardsExactly(t *testing.T) {
	up, got := recordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-RateLimit-Remaining", "99")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(201)
		_, _ = w.Write([]byte(`{"ok":true}`))
	})
	px, _ := newProxy(t, up.URL)
	upHost := strings.TrimPrefix(up.URL, "http://")

	cases := []struct {
		name, method, path, body string
		hdr                      map[string]string
	}{
		{"get with repeated query keys in order", "GET", "/contacts/?locationId=L1&b=2&a=1&a=0&query=x%20y", "", nil},
		{"post create", "POST", "/contacts/", `{"email":"a@b.c","locationId":"L1"}`, map[string]string{"Content-Type": "application/json"}},
		{"put update", "PUT", "/contacts/c1", `{"firstName":"A"}`, map[string]string{"Content-Type": "application/json"}},
		{"delete", "DELETE", "/contacts/c1", "", nil},
		{"unknown route streams", "PATCH", "/not/in/the/spec?x=1", "raw body", map[string]string{"Content-Type": "text/plain"}},
		{"oauth untouched", "POST", "/oauth/token", "grant_type=refresh_token&refresh_token=r", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{"locationId": "L1", "Connection": "X-Hop", "X-Hop": "drop me", "X-Custom": "keep"}
			for k, v := range auth {
				hdr[k] = v
			}
			for k, v := range c.hdr {
				hdr[k] = v
			}
			resp, body := do(t, c.method, px.URL+c.path, c.body, hdr)
			if resp.StatusCode != 201 || body != `{"ok":true}` {
				t.Fatalf("answer = %d %q", resp.StatusCode, body)
			}
			if resp.Header.Get("X-RateLimit-Remaining") != "99" {
				t.Errorf("X-RateLimit-Remaining not passed through: %v", resp.Header)
			}
			all := got()
			if len(all) != i+1 {
				t.Fatalf("upstream saw %d requests, want %d", len(all), i+1)
			}
			s := all[i]
			wantPath, wantQuery, _ := strings.Cut(c.path, "?")
			if s.Method != c.method || s.Path != wantPath || s.RawQuery != wantQuery || s.Body != c.body {
				t.Errorf("upstream got %s %s?%s %q; want %s %s?%s %q", s.Method, s.Path, s.RawQuery, s.Body, c.method, wantPath, wantQuery, c.body)
			}
			if s.Host != upHost {
				t.Errorf("Host = %q, want %q", s.Host, upHost)
			}
			if s.Header.Get("locationId") != "L1" || s.Header.Get("X-Custom") != "keep" {
				t.Errorf("end-to-end headers not forwarded: %v", s.Header)
			}
			if s.Header.Get("X-Hop") != "" || s.Header.Get("Connection") == "X-Hop" {
				t.Errorf("hop-by-hop header forwarded: %v", s.Header)
			}
			if s.Header.Get("Authorization") != auth["Authorization"] || s.Header.Get("Version") != auth["Version"] {
				t.Errorf("credential headers changed: %v", s.Header)
			}
		})
	}
}

// TestRewritesUpstreamLinks: absolute links to the upstream in paging fields point at the
// sidecar, in plain and in escaped-slash JSON; the same address in a data field (item 8f of
// the write-safety issue: a website, a document URL, a value that is the word
// "nextPageUrl") stays as GHL sent it, so a read-modify-write never writes the sidecar's
// address into GHL.
func TestRewritesUpstreamLinks(t *testing.T) {
	var upURL string
	up, _ := recordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		esc := strings.ReplaceAll(upURL, "/", `\/`)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"contacts":[{"website":"` + upURL + `/x","note":"nextPageUrl","attachments":[{"url":"` + esc + `/documents/download/d1"}]}],` +
			`"meta":{"nextPageUrl":"` + upURL + `/contacts/?startAfterId=x","prevPageUrl":"` + esc + `/contacts/"}}`))
	})
	upURL = up.URL
	px, _ := newProxy(t, up.URL)
	for range 2 { // the second time from the Response's remembered spans
		_, body := do(t, "GET", px.URL+"/contacts/?locationId=L1", "", auth)
		var v struct {
			Contacts []struct {
				Website, Note string
				Attachments   []struct{ URL string }
			}
			Meta struct{ NextPageUrl, PrevPageUrl string }
		}
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatal(err)
		}
		if v.Meta.NextPageUrl != px.URL+"/contacts/?startAfterId=x" || v.Meta.PrevPageUrl != px.URL+"/contacts/" {
			t.Fatalf("links not rewritten to the sidecar: %+v", v.Meta)
		}
		c := v.Contacts[0]
		if c.Website != up.URL+"/x" || c.Note != "nextPageUrl" || c.Attachments[0].URL != up.URL+"/documents/download/d1" {
			t.Fatalf("data fields changed: %+v", c)
		}
	}
}

func TestErrorsInGHLShape(t *testing.T) {
	slow := make(chan struct{})
	t.Cleanup(func() { close(slow) })
	up, _ := recordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/contacts/slow" {
			select {
			case <-slow:
			case <-r.Context().Done():
			}
		}
		w.WriteHeader(200)
	})
	px, _ := newProxy(t, up.URL, func(c *Config) {
		c.MaxBodyBytes = 64
		c.UpstreamTimeout = 200 * time.Millisecond
	})
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	pxDead, _ := newProxy(t, deadURL)

	cases := []struct {
		name, method, url, body string
		hdr                     map[string]string
		status                  int
		cause                   string
	}{
		{"no authorization", "GET", px.URL + "/contacts/c1", "", map[string]string{}, 401, "missing-authorization"},
		{"malformed query escape", "GET", px.URL + "/contacts/c1?q=%zz", "", auth, 400, "malformed-request"},
		{"malformed json body", "PUT", px.URL + "/contacts/c1", `{"a":`, map[string]string{"Authorization": auth["Authorization"], "Content-Type": "application/json"}, 400, "malformed-request"},
		{"body over the limit", "PUT", px.URL + "/contacts/c1", `{"a":"` + strings.Repeat("x", 100) + `"}`, map[string]string{"Authorization": auth["Authorization"], "Content-Type": "application/json"}, 413, "request-body-too-large"},
		{"upstream timeout", "GET", px.URL + "/contacts/slow", "", auth, 504, "upstream-timeout"},
		{"upstream unreachable", "GET", pxDead.URL + "/contacts/c1", "", auth, 502, "upstream-unreachable"},
		{"upstream unreachable on pass-through", "GET", pxDead.URL + "/unknown/route", "", auth, 502, "upstream-unreachable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, c.method, c.url, c.body, c.hdr)
			if resp.StatusCode != c.status || resp.Header.Get("X-Ghlproxy-Error") != c.cause {
				t.Fatalf("got %d %q, want %d %q; body %s", resp.StatusCode, resp.Header.Get("X-Ghlproxy-Error"), c.status, c.cause, body)
			}
			var e struct {
				StatusCode int    `json:"statusCode"`
				Message    string `json:"message"`
				Error      string `json:"error"`
			}
			if err := json.Unmarshal([]byte(body), &e); err != nil || e.StatusCode != c.status || e.Message == "" || e.Error == "" {
				t.Fatalf("body not in GHL's error shape: %q (%v)", body, err)
			}
		})
	}
	// The process keeps serving after all of that.
	if resp, _ := do(t, "GET", px.URL+"/contacts/c1", "", auth); resp.StatusCode != 200 {
		t.Fatalf("after bad input: %d", resp.StatusCode)
	}
}

func TestClientGoneCancelsUpstream(t *testing.T) {
	cancelled := make(chan struct{})
	arrived := make(chan struct{})
	up, _ := recordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done()
		close(cancelled)
	})
	px, _ := newProxy(t, up.URL)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", px.URL+"/unknown/stream", nil)
	req.Header.Set("Authorization", auth["Authorization"])
	errc := make(chan error, 1)
	go func() {
		_, err := http.DefaultClient.Do(req)
		errc <- err
	}()
	<-arrived
	cancel()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("upstream call not cancelled after the client went away")
	}
	if err := <-errc; err == nil {
		t.Fatal("client call should have failed")
	}
}

// TestPassThroughStreamsAnswersOfUnknownLength: an upstream answer without a length reaches
// the client write by write, while the upstream is still sending: the client reads the
// first part before the upstream may send the rest.
func TestPassThroughStreamsAnswersOfUnknownLength(t *testing.T) {
	firstRead := make(chan struct{})
	up, _ := recordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = io.WriteString(w, "{\"part\":1}\n")
		w.(http.Flusher).Flush()
		select {
		case <-firstRead:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "{\"part\":2}\n")
	})
	px, _ := newProxy(t, up.URL)
	req, _ := http.NewRequest("GET", px.URL+"/unknown/stream", nil)
	req.Header.Set("Authorization", auth["Authorization"])
	// Bounded: were the answer buffered, client and upstream would wait on each other.
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	first, err := br.ReadString('\n')
	if err != nil || first != "{\"part\":1}\n" {
		t.Fatalf("first part: %q, %v", first, err)
	}
	close(firstRead)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "{\"part\":2}\n" {
		t.Fatalf("rest: %q, %v", rest, err)
	}
}

// embeddedCache is a cache on the embedded store (no Redis), closed with the test; m may be
// nil.
func embeddedCache(t testing.TB, cfg cache.Config, m *metrics.Metrics) *cache.Cache {
	t.Helper()
	c, err := cache.New(cfg, nil, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
