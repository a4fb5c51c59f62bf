package ghlerror

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serve runs a real net/http server on a wrapped loopback listener.
func serve(t *testing.T, srv *http.Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = Serve(srv, l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l.Addr().String()
}

// raw sends one request as written and reads the answer.
func raw(t *testing.T, addr, request string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", request, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// TestListenerGivesServerErrorsGHLShape: the answers net/http writes itself, before any
// handler runs, come out in GHL's shape; a handler's own answers, even a plain-text 400,
// pass untouched.
func TestListenerGivesServerErrorsGHLShape(t *testing.T) {
	var handled atomic.Int32
	addr := serve(t, &http.Server{MaxHeaderBytes: 4096, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handled.Add(1)
		if r.URL.Path == "/plain400" {
			http.Error(w, "400 Bad Request", http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "ok "+r.URL.Path)
	})})

	for _, tc := range []struct {
		name, request string
		status        int
		cause, text   string
	}{
		{"malformed escape in the path", "GET /contacts/%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400, CauseMalformed, "400 Bad Request"},
		{"no Host header", "GET /contacts/1 HTTP/1.1\r\n\r\n", 400, CauseMalformed, "missing required Host header"},
		{"headers over the limit", "GET /contacts/1 HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 8192) + "\r\n\r\n", 431, CauseHeadersTooLarge, "431"},
		{"unknown transfer coding", "POST /contacts/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, CauseMalformed, "transfer encoding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := raw(t, addr, tc.request)
			var body struct {
				StatusCode int    `json:"statusCode"`
				Message    string `json:"message"`
				Error      string `json:"error"`
			}
			if err := json.Unmarshal(b, &body); err != nil {
				t.Fatalf("body %q is not GHL's JSON shape: %v", b, err)
			}
			if resp.StatusCode != tc.status || body.StatusCode != tc.status || body.Error != http.StatusText(tc.status) ||
				resp.Header.Get(Header) != tc.cause || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" ||
				!strings.Contains(body.Message, tc.text) {
				t.Errorf("status %d, %s %q, body %+v; want %d %s with %q", resp.StatusCode, Header, resp.Header.Get(Header), body, tc.status, tc.cause, tc.text)
			}
		})
	}
	if n := handled.Load(); n != 0 {
		t.Fatalf("the handler ran %d times for requests net/http refuses", n)
	}

	// A handler's answers are its own: a plain-text 400 stays plain text.
	resp, b := raw(t, addr, "GET /plain400 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 400 || resp.Header.Get(Header) != "" || !strings.HasPrefix(string(b), "400 Bad Request") {
		t.Errorf("handler's plain 400 changed: %d %q %q", resp.StatusCode, resp.Header.Get(Header), b)
	}
	if resp, b := raw(t, addr, "GET /contacts/1 HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 || string(b) != "ok /contacts/1" {
		t.Errorf("a good request after the bad ones: %d %q", resp.StatusCode, b)
	}
}

// TestResponseBodiesAreNeverRewritten is item 7 of the write-safety issue: a response body
// that holds net/http's plain-text 400 — at a 4 KiB buffer boundary, so that it reaches the
// connection in a write of its own — passes byte for byte, and the keep-alive connection
// stays in step (the next response on it parses). Every offset around the boundary is
// tried, so one of them is the boundary whatever the header size.
func TestResponseBodiesAreNeverRewritten(t *testing.T) {
	const refusal = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request"
	body := func(k int) string { return strings.Repeat("a", k) + refusal }
	addr := serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var k int
		if _, err := fmt.Sscanf(r.URL.Path, "/body/%d", &k); err != nil {
			http.NotFound(w, r)
			return
		}
		b := body(k)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = io.WriteString(w, b)
	})})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	for k := 3500; k <= 4200; k++ {
		if _, err := fmt.Fprintf(c, "GET /body/%d HTTP/1.1\r\nHost: x\r\n\r\n", k); err != nil {
			t.Fatalf("k=%d: the connection was closed: %v", k, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("k=%d: the connection is out of step: %v", k, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(got) != body(k) || resp.Header.Get(Header) != "" {
			t.Fatalf("k=%d: the body was changed on its way (%d bytes, %v, %s %q)", k, len(got), err, Header, resp.Header.Get(Header))
		}
	}
}
