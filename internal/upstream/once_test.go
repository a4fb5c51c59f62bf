package upstream

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A server that reads a write and then drops it — the connection closed with no answer
// (HTTP/1.1), a lying GOAWAY or a PROTOCOL_ERROR (HTTP/2) — is the case in which Go's
// transport resends a request it has already sent, if it thinks the request replayable.
// Every write here reaches such a server over a reused connection; the server answers
// every later copy normally, so a resend shows up as a second arrival and a 2xx.

type dropCase struct {
	name   string
	method string
	body   string
	header string // "", "Idempotency-Key" or "X-Idempotency-Key"
}

var dropCases = []dropCase{
	{"POST body", "POST", `{"firstName":"Ann"}`, ""},
	{"POST body Idempotency-Key", "POST", `{"firstName":"Ann"}`, "Idempotency-Key"},
	{"POST body X-Idempotency-Key", "POST", `{"firstName":"Ann"}`, "X-Idempotency-Key"},
	{"PUT body Idempotency-Key", "PUT", `{"dnd":true}`, "Idempotency-Key"},
	{"POST empty Idempotency-Key", "POST", "", "Idempotency-Key"},
	{"DELETE empty", "DELETE", "", ""},
	{"DELETE empty Idempotency-Key", "DELETE", "", "Idempotency-Key"},
}

// sendOnReusedConn makes one GET (so the connection is pooled) and then the write, and
// returns the write's error.
func sendOnReusedConn(t *testing.T, rt http.RoundTripper, base string, c dropCase) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	get, _ := http.NewRequestWithContext(ctx, "GET", base+"/warm", nil)
	resp, err := rt.RoundTrip(get)
	if err != nil {
		t.Fatalf("warming GET: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, _ := http.NewRequestWithContext(ctx, c.method, base+"/contacts/abc", body)
	if c.header != "" {
		req.Header.Set(c.header, "key-1")
	}
	resp, err = rt.RoundTrip(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return err
}

// h1Dropper answers GETs, and drops the connection after reading the first write in full.
type h1Dropper struct {
	writes atomic.Int64
}

func (d *h1Dropper) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == "GET" {
		_, _ = w.Write([]byte("ok"))
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	if d.writes.Add(1) == 1 {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	w.WriteHeader(http.StatusCreated)
}

func TestAtMostOnceHTTP1(t *testing.T) {
	for _, c := range dropCases {
		t.Run(c.name, func(t *testing.T) {
			d := &h1Dropper{}
			srv := httptest.NewServer(d)
			defer srv.Close()
			tr := NewTransport(TransportConfig{})
			defer tr.CloseIdleConnections()
			err := sendOnReusedConn(t, AtMostOnce(tr), srv.URL, c)
			if n := d.writes.Load(); n != 1 {
				t.Fatalf("the write reached the server %d times, want once", n)
			}
			if err == nil {
				t.Fatal("the write got an answer; want the error of the dropped connection")
			}
		})
	}
}

// TestBareTransportResendsHTTP1 shows what AtMostOnce prevents: the same server makes Go's
// own transport send a write with an Idempotency-Key twice.
func TestBareTransportResendsHTTP1(t *testing.T) {
	d := &h1Dropper{}
	srv := httptest.NewServer(d)
	defer srv.Close()
	tr := NewTransport(TransportConfig{})
	defer tr.CloseIdleConnections()
	err := sendOnReusedConn(t, tr, srv.URL, dropCases[1])
	if n := d.writes.Load(); n != 2 || err != nil {
		t.Fatalf("bare transport: %d arrivals, err %v; want the resend this test provokes (2, nil)", n, err)
	}
}

// h2Dropper is an HTTP/2 server over TLS, written with the framer so that it can misbehave
// as no real server library would: after reading the first write (headers and body) it
// sends GOAWAY naming an earlier stream as the last it processed — telling the client the
// write was never seen — or resets the stream with PROTOCOL_ERROR.
type h2Dropper struct {
	mode   string // "goaway" or "protocol"
	ln     net.Listener
	writes atomic.Int64
	wg     sync.WaitGroup
}

func startH2Dropper(t *testing.T, mode string) *h2Dropper {
	t.Helper()
	cert := testCertificate(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	d := &h2Dropper{mode: mode, ln: ln}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.wg.Add(1)
			go func() { defer d.wg.Done(); d.serve(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); d.wg.Wait() })
	return d
}

// testCertificate borrows httptest's self-signed certificate.
func testCertificate(t *testing.T) tls.Certificate {
	s := httptest.NewUnstartedServer(http.NotFoundHandler())
	s.StartTLS()
	defer s.Close()
	return s.TLS.Certificates[0]
}

func (d *h2Dropper) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	fr := http2.NewFramer(c, c)
	if fr.WriteSettings() != nil {
		return
	}
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	respond := func(stream uint32, status string, body string) error {
		hbuf.Reset()
		_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: status})
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: hbuf.Bytes(), EndHeaders: true, EndStream: body == ""}); err != nil {
			return err
		}
		if body != "" {
			return fr.WriteData(stream, true, []byte(body))
		}
		return nil
	}
	dec := hpack.NewDecoder(4096, nil)
	methods := map[uint32]string{}
	var lastAnswered uint32
	complete := func(stream uint32) error {
		if methods[stream] == "GET" {
			lastAnswered = stream
			return respond(stream, "200", "ok")
		}
		if d.writes.Add(1) > 1 {
			return respond(stream, "201", "")
		}
		if d.mode == "goaway" {
			// "I processed nothing after lastAnswered": the client may assume the write
			// never arrived.
			_ = fr.WriteGoAway(lastAnswered, http2.ErrCodeNo, nil)
			return errors.New("gone away")
		}
		return fr.WriteRSTStream(stream, http2.ErrCodeProtocol)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if fr.WriteSettingsAck() != nil {
					return
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = fr.WritePing(true, f.Data)
			}
		case *http2.HeadersFrame:
			fields, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				return
			}
			for _, hf := range fields {
				if hf.Name == ":method" {
					methods[f.StreamID] = hf.Value
				}
			}
			if f.StreamEnded() && complete(f.StreamID) != nil {
				return
			}
		case *http2.DataFrame:
			if f.StreamEnded() && complete(f.StreamID) != nil {
				return
			}
		}
	}
}

func h2Transport() *http.Transport {
	return NewTransport(TransportConfig{InsecureSkipVerify: true})
}

func TestAtMostOnceHTTP2(t *testing.T) {
	for _, mode := range []string{"goaway", "protocol"} {
		for _, c := range dropCases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				d := startH2Dropper(t, mode)
				tr := h2Transport()
				defer tr.CloseIdleConnections()
				err := sendOnReusedConn(t, AtMostOnce(tr), "https://"+d.ln.Addr().String(), c)
				if n := d.writes.Load(); n != 1 {
					t.Fatalf("the write reached the server %d times, want once", n)
				}
				if err == nil {
					t.Fatal("the write got an answer; want the error of the dropped stream")
				}
			})
		}
	}
}

// TestBareTransportResendsHTTP2 shows that the HTTP/2 server provokes Go's own resend,
// with no header at all: a write with an empty body, and one with a rewindable body.
func TestBareTransportResendsHTTP2(t *testing.T) {
	for _, mode := range []string{"goaway", "protocol"} {
		for _, c := range []dropCase{dropCases[0], dropCases[5]} {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				d := startH2Dropper(t, mode)
				tr := h2Transport()
				defer tr.CloseIdleConnections()
				err := sendOnReusedConn(t, tr, "https://"+d.ln.Addr().String(), c)
				if n := d.writes.Load(); n != 2 || err != nil {
					t.Fatalf("bare transport: %d arrivals, err %v; want the resend this test provokes (2, nil)", n, err)
				}
			})
		}
	}
}

// TestAtMostOnceKeepsReads: reads go through untouched, and Go may resend them.
func TestAtMostOnceKeepsReads(t *testing.T) {
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gets.Add(1) == 2 {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer srv.Close()
	tr := NewTransport(TransportConfig{})
	defer tr.CloseIdleConnections()
	rt := AtMostOnce(tr)
	for i := range 2 {
		req, _ := http.NewRequest("GET", srv.URL+"/contacts/abc", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatalf("GET %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok" {
			t.Fatalf("GET %d: %q", i, b)
		}
	}
	if n := gets.Load(); n != 3 {
		t.Errorf("%d GETs reached the server; want 3 (the dropped one resent, as reads may be)", n)
	}
}
