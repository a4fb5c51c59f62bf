package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/cache"
	"github.com/ghlproxy/ghlproxy/ratelimit"
)

// TestEverythingUnderOAuthPasses is item 8d of the write-safety issue: whatever the path's
// spelling and the method, a request under /oauth/ is streamed through untouched — no
// Authorization needed, no token spent, the path sent as it came.
func TestEverythingUnderOAuthPasses(t *testing.T) {
	up, got := recordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"x"}`))
	})
	lim, err := ratelimit.New(ratelimit.Config{Rate: 1, Per: time.Hour, Burst: 1, MaxWait: time.Millisecond}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	px, _ := newProxy(t, up.URL, func(c *Config) { c.Limiter = lim })
	paths := []string{"/oauth/token", "//oauth/token", "/oauth/../oauth/token", "/x/../oauth/token", "/%6Fauth/token",
		"/OAuth/token", "/oauth/no/such/route", "/oauth", "/oauth/locationToken"}
	for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		for _, p := range paths {
			resp, body := do(t, m, px.URL+p, "grant_type=refresh_token", map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
			if resp.StatusCode != 200 {
				t.Fatalf("%s %s: %d %s; want it passed through", m, p, resp.StatusCode, body)
			}
		}
	}
	seen := got()
	if len(seen) != 5*len(paths) {
		t.Fatalf("upstream saw %d requests, want %d", len(seen), 5*len(paths))
	}
	for i, s := range seen {
		if want := paths[i%len(paths)]; s.Path != want || s.Body != "grant_type=refresh_token" {
			t.Errorf("upstream saw %s %q %q; want %q untouched", s.Method, s.Path, s.Body, want)
		}
	}
}

// TestConnectionNamedHeadersLeaveTheKey is item 8e: a header named in Connection never
// reaches GHL, so it is no part of the key either. With "Connection: Version", GHL gets no
// Version, and the answer is the one a request without Version gets.
func TestConnectionNamedHeadersLeaveTheKey(t *testing.T) {
	up, got := recordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"version":"` + r.Header.Get("Version") + `"}`))
	})
	c := embeddedCache(t, cache.Config{}, nil)
	px, _ := newProxy(t, up.URL, func(cfg *Config) { cfg.Cache = c })
	hdr := map[string]string{"Authorization": "Bearer pit-conn", "Version": "2021-07-28", "Connection": "Version"}
	resp, body := do(t, "GET", px.URL+"/contacts/c1", "", hdr)
	if resp.StatusCode != 200 || body != `{"version":""}` {
		t.Fatalf("first read: %d %s", resp.StatusCode, body)
	}
	if s := got(); len(s) != 1 || s[0].Header.Get("Version") != "" {
		t.Fatalf("GHL got Version %q although Connection named it", s[0].Header.Get("Version"))
	}
	resp, body = do(t, "GET", px.URL+"/contacts/c1", "", map[string]string{"Authorization": "Bearer pit-conn"})
	if !strings.Contains(resp.Header.Get("Cache-Status"), "hit") || body != `{"version":""}` {
		t.Errorf("a read without Version: %q %s; want the first read's answer, from the cache", resp.Header.Get("Cache-Status"), body)
	}
	resp, _ = do(t, "GET", px.URL+"/contacts/c1", "", map[string]string{"Authorization": "Bearer pit-conn", "Version": "2021-07-28"})
	if strings.Contains(resp.Header.Get("Cache-Status"), "hit") {
		t.Errorf("a read with a Version got the answer of one without: %q", resp.Header.Get("Cache-Status"))
	}
}
