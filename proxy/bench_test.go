package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// benchUpstream answers every request with a fixed ~100-byte JSON body, like a contact.
func benchUpstream(b *testing.B) *httptest.Server {
	body := []byte(`{"contact":{"id":"ocQHyuzHvysMo5N5VsXc","firstName":"Ada","email":"ada@example.com"}}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-RateLimit-Remaining", "99")
		_, _ = w.Write(body)
	}))
	b.Cleanup(srv.Close)
	return srv
}

func benchGet(b *testing.B, url string) {
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer pit-bench-token")
	req.Header.Set("Version", "2021-07-28")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}

// BenchmarkPassThrough measures one sequential request through the streaming path (a route
// the table does not know) against the same request straight to the upstream: the
// difference is what the sidecar adds.
func BenchmarkPassThrough(b *testing.B) {
	up := benchUpstream(b)
	b.Run("direct", func(b *testing.B) { benchGet(b, up.URL+"/bench/passthrough") })
	b.Run("ghlproxy", func(b *testing.B) {
		px := benchProxy(b, up.URL)
		benchGet(b, px.URL+"/bench/passthrough")
	})
}

func benchProxy(b *testing.B, upstreamURL string) *httptest.Server {
	b.Helper()
	srv, _ := newProxyTB(b, upstreamURL)
	return srv
}
