package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ghlproxy/ghlproxy/internal/benchhttp"
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

// BenchmarkPassThrough measures one sequential request through the streaming path (a route
// the table does not know) against the same request straight to the upstream: the
// difference is what the sidecar adds.
func BenchmarkPassThrough(b *testing.B) {
	up := benchUpstream(b)
	b.Run("direct", func(b *testing.B) { benchhttp.Get(b, up.URL+"/bench/passthrough") })
	b.Run("ghlproxy", func(b *testing.B) {
		px := benchProxy(b, up.URL)
		benchhttp.Get(b, px.URL+"/bench/passthrough")
	})
}

func benchProxy(b *testing.B, upstreamURL string) *httptest.Server {
	b.Helper()
	srv, _ := newProxyTB(b, upstreamURL)
	return srv
}
