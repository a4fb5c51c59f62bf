package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// TestTLSUpstreamSpeaksHTTP2 runs the upstream over TLS with HTTP/2 enabled, as GHL is, and
// checks that the sidecar's transport negotiates HTTP/2, sends the upstream's host name as
// SNI and Host, and reuses the connection.
func TestTLSUpstreamSpeaksHTTP2(t *testing.T) {
	var proto, host, sni atomic.Value
	var conns atomic.Int64
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proto.Store(r.Proto)
		host.Store(r.Host)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	up.EnableHTTP2 = true
	up.TLS = &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		sni.Store(hello.ServerName)
		conns.Add(1)
		return nil, nil
	}}
	up.StartTLS()
	t.Cleanup(up.Close)

	// The test certificate is for example.com; dial the test server under that name so SNI
	// and Host carry a real host name, as they do for services.leadconnectorhq.com.
	tr := upstream.NewTransport(upstream.TransportConfig{InsecureSkipVerify: true})
	addr := strings.TrimPrefix(up.URL, "https://")
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) { return dial(ctx, network, addr) }
	px, _ := newProxy(t, "https://example.com", func(c *Config) { c.Transport = tr })

	for i := 0; i < 3; i++ {
		resp, body := do(t, "GET", px.URL+"/contacts/c1", "", auth)
		if resp.StatusCode != 200 || body != `{"ok":true}` {
			t.Fatalf("answer %d %q", resp.StatusCode, body)
		}
	}
	if p := proto.Load(); p != "HTTP/2.0" {
		t.Errorf("upstream saw %v, want HTTP/2.0", p)
	}
	if h, s := host.Load(), sni.Load(); h != "example.com" || s != "example.com" {
		t.Errorf("Host %v, SNI %v; want example.com for both", h, s)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d TLS handshakes for 3 requests, want 1 (pooled)", n)
	}
}
