package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestNoPathResendsAWrite sends writes down every path of the pipeline — the buffered
// write path, the limited pass-through of an unknown route, /oauth/ — to an upstream that
// reads each write once and drops its connection without answering. Whatever headers the
// client sent, the write must reach upstream exactly once and the client must get an
// error. Go's transport would resend the Idempotency-Key ones (upstream.AtMostOnce).
func TestNoPathResendsAWrite(t *testing.T) {
	cases := []struct{ name, method, path, body, header string }{
		{"write route", "POST", "/contacts/", `{"email":"a@b.c"}`, "Idempotency-Key"},
		{"write route, X- header", "PUT", "/contacts/c1", `{"dnd":true}`, "X-Idempotency-Key"},
		{"write route, empty body", "DELETE", "/contacts/c1", "", "Idempotency-Key"},
		{"unknown route", "POST", "/no-such-route/x", `{"a":1}`, "Idempotency-Key"},
		{"unknown route, empty body", "POST", "/no-such-route/y", "", "Idempotency-Key"},
		{"oauth", "POST", "/oauth/token", "", "Idempotency-Key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var writes atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == "GET" {
					_, _ = w.Write([]byte(`{}`))
					return
				}
				_, _ = io.Copy(io.Discard, r.Body)
				if writes.Add(1) == 1 {
					if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
						conn.Close()
					}
					return
				}
				w.WriteHeader(http.StatusCreated)
			}))
			t.Cleanup(up.Close)
			px, _ := newProxy(t, up.URL)

			// A read first, so the write goes out on a pooled connection: only then does
			// Go's transport consider resending it.
			if resp, _ := do(t, "GET", px.URL+"/contacts/c9", "", auth); resp.StatusCode != 200 {
				t.Fatalf("warming read: %d", resp.StatusCode)
			}
			hdr := map[string]string{c.header: "key-1", "Content-Type": "application/json"}
			for k, v := range auth {
				hdr[k] = v
			}
			resp, body := do(t, c.method, px.URL+c.path, c.body, hdr)
			if n := writes.Load(); n != 1 {
				t.Fatalf("the write reached upstream %d times, want once", n)
			}
			if resp.StatusCode != http.StatusBadGateway {
				t.Fatalf("client got %d %s; want the sidecar's 502 for a dropped connection", resp.StatusCode, body)
			}
		})
	}
}
