package upstream

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// TransportConfig sizes the connection pool to GHL.
type TransportConfig struct {
	DialTimeout         time.Duration
	TLSHandshakeTimeout time.Duration
	// HeaderTimeout bounds the wait for response headers after the request was written.
	HeaderTimeout       time.Duration
	MaxIdleConnsPerHost int
	// InsecureSkipVerify is for tests against a TLS stand-in only.
	InsecureSkipVerify bool
}

// NewTransport returns the transport every upstream call shares. It keeps many idle
// connections to the one upstream host — a sidecar talks to exactly one host, and a burst of
// folded or batched calls must not pay TCP and TLS handshakes — and speaks HTTP/2 to a TLS
// upstream. Compression is left to the transport (it asks for gzip and decompresses), so
// cached bodies are always plain and any client can be served from them.
func NewTransport(c TransportConfig) *http.Transport {
	d := &net.Dialer{Timeout: c.DialTimeout, KeepAlive: 30 * time.Second}
	idle := c.MaxIdleConnsPerHost
	if idle <= 0 {
		idle = 100
	}
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          idle * 2,
		MaxIdleConnsPerHost:   idle,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   c.TLSHandshakeTimeout,
		ResponseHeaderTimeout: c.HeaderTimeout,
		ExpectContinueTimeout: time.Second,
		// Buffers sized for GHL's JSON: most answers fit in one read.
		WriteBufferSize: 16 << 10,
		ReadBufferSize:  32 << 10,
	}
	if c.InsecureSkipVerify {
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // tests only, by explicit config
	}
	return t
}
