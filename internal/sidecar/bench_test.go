package sidecar

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/internal/benchhttp"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// BenchmarkPassThrough measures one sequential pass-through request (a path the route table
// does not know: streamed and rate limited) through a sidecar assembled exactly as `ghlproxy
// serve` assembles it, on the embedded store and on Redis, next to the same request sent
// straight to the upstream. The difference is what the sidecar adds; bench/passthrough.sh
// measures the same against nginx with wrk.
//
//	go test -run '^$' -bench PassThrough -benchtime 20000x ./internal/sidecar/
func BenchmarkPassThrough(b *testing.B) {
	body := []byte(`{"contact":{"id":"ocQHyuzHvysMo5N5VsXc","firstName":"Ada","email":"ada@example.com"}}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	b.Cleanup(up.Close)
	b.Run("direct", func(b *testing.B) { benchhttp.Get(b, up.URL+"/bench/passthrough") })
	b.Run("reverseproxy", func(b *testing.B) {
		// The floor: a plain httputil.ReverseProxy with the sidecar's transport.
		u, _ := url.Parse(up.URL)
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.Transport = upstream.NewTransport(upstream.TransportConfig{})
		srv := httptest.NewServer(rp)
		b.Cleanup(srv.Close)
		benchhttp.Get(b, srv.URL+"/bench/passthrough")
	})
	b.Run("embedded", func(b *testing.B) {
		benchhttp.Get(b, benchSidecar(b, up.URL, "")+"/bench/passthrough")
	})
	b.Run("redis", func(b *testing.B) {
		benchhttp.Get(b, benchSidecar(b, up.URL, redistest.Start(b).URL())+"/bench/passthrough")
	})
}

// benchSidecar serves a sidecar with the bench's settings (bench/run.sh start_sidecar).
func benchSidecar(b *testing.B, upstream, redisURL string) string {
	b.Helper()
	cfg := config.Default()
	cfg.Upstream = upstream
	cfg.Redis.URL = redisURL
	cfg.Identity.Secret = "bench-secret"
	cfg.RateLimit.Rate, cfg.RateLimit.Burst = 1_000_000_000, 1_000_000_000
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pl, ol) }()
	b.Cleanup(func() { cancel(); <-done })
	return "http://" + pl.Addr().String()
}
