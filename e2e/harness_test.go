// Package e2e tests whole sidecars — built by package sidecar exactly as `ghlproxy serve`
// builds them — against the GHL stand-in over real HTTP, one replica or several sharing a
// real Redis.
package e2e

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/sidecar"
)

// replica is one running sidecar.
type replica struct {
	URL, OpsURL string
	S           *sidecar.Sidecar
	stop        func()
}

// startStandIn runs a GHL stand-in over real HTTP.
func startStandIn(t *testing.T, cfg fakeghl.Config) (*fakeghl.Server, *httptest.Server) {
	t.Helper()
	fake := fakeghl.New(cfg)
	srv := httptest.NewServer(fake)
	t.Cleanup(func() { srv.Close(); fake.Close() })
	return fake, srv
}

// testConfig is the configuration tests start from: the stand-in upstream, loopback
// listeners, quiet logs, and everything else at its default.
func testConfig(t *testing.T, upstream string, env ...string) *config.Config {
	t.Helper()
	cfg, err := config.Load(nil, append([]string{
		"GHLPROXY_UPSTREAM=" + upstream,
		"GHLPROXY_LOG_LEVEL=warn",
	}, env...))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startReplica runs a sidecar with cfg until the test ends.
func startReplica(t *testing.T, cfg *config.Config) *replica {
	t.Helper()
	return startReplicaWith(t, cfg, nil)
}

// startReplicaWith is startReplica with setup run on the sidecar before it serves.
func startReplicaWith(t *testing.T, cfg *config.Config, setup func(*sidecar.Sidecar)) *replica {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	s, err := sidecar.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(ctx, pl, ol)
	}()
	r := &replica{URL: "http://" + pl.Addr().String(), OpsURL: "http://" + ol.Addr().String(), S: s}
	r.stop = func() {
		// Connections the default client dialed but never used look new to the server,
		// whose Shutdown waits 5 s before it counts them idle: close them first.
		http.DefaultClient.CloseIdleConnections()
		cancel()
		<-done
	}
	t.Cleanup(r.stop)
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// call makes one request and returns the answer with its body read.
func call(t *testing.T, c *http.Client, method, url, body string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// ghlHeaders is what a GHL client sends.
func ghlHeaders(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}, "Version": {"2021-07-28"}}
}
