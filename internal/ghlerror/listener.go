package ghlerror

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
)

// Serve serves srv on l so that the answers net/http's server writes on its own, for
// requests it cannot parse — a malformed escape in the path, a bad request line or
// header, headers over the limit, an unknown transfer coding — reach clients in GHL's
// error shape with X-Ghlproxy-Error, like every other error the sidecar makes. net/http
// has no hook for these: it writes each as plain text straight to the connection, in one
// Write, and closes it.
//
// Only those writes are touched. A connection is "responding" from the moment a handler
// starts on it until the server reports it idle again (the response, its last flush
// included, is out); net/http writes its refusals only in between, when it failed to read
// the next request. A response body that happens to hold the same bytes — at a buffer
// boundary, in one write — is therefore never rewritten, and its length never changes
// under the client. Serve wraps srv.Handler, srv.ConnContext and srv.ConnState (keeping
// theirs) and then calls srv.Serve(l).
func Serve(srv *http.Server, l net.Listener) error {
	next := srv.Handler
	if next == nil {
		next = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(connKey{}).(*conn); ok {
			c.responding.Store(true)
		}
		next.ServeHTTP(w, r)
	})
	connCtx := srv.ConnContext
	srv.ConnContext = func(ctx context.Context, nc net.Conn) context.Context {
		if connCtx != nil {
			ctx = connCtx(ctx, nc)
		}
		if c, ok := nc.(*conn); ok {
			ctx = context.WithValue(ctx, connKey{}, c)
		}
		return ctx
	}
	connState := srv.ConnState
	srv.ConnState = func(nc net.Conn, st http.ConnState) {
		if c, ok := nc.(*conn); ok && st == http.StateIdle {
			c.responding.Store(false)
		}
		if connState != nil {
			connState(nc, st)
		}
	}
	return srv.Serve(listener{l})
}

type connKey struct{}

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c}, nil
}

type conn struct {
	net.Conn
	// responding: a handler's response is being written (see Serve). A hijacked
	// connection stays responding: what a handler writes on it is never rewritten.
	responding atomic.Bool
}

// Write replaces one of net/http's own error answers; the count returned is the caller's,
// so the server's bookkeeping is unchanged.
func (c *conn) Write(p []byte) (int, error) {
	if !c.responding.Load() {
		if out := rewrite(p); out != nil {
			if _, err := c.Conn.Write(out); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

// CloseWrite keeps the half-close net/http uses after a 431 working through the wrapper.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// netHTTPHeaders is the header block of net/http's own error answers: no Date and no
// Content-Length, Content-Type before Connection. Responses written through a handler
// always carry a Date and sort Connection first, so they never match.
const netHTTPHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// rewrite returns the GHL-shaped replacement of p when p is a whole error answer of
// net/http's server ("HTTP/1.1 400 Bad Request" + netHTTPHeaders + text), else nil.
func rewrite(p []byte) []byte {
	const proto = "HTTP/1.1 "
	// Cheap tests first: this runs on every write between responses.
	if len(p) > 512 || len(p) <= len(proto) || (p[len(proto)] != '4' && p[len(proto)] != '5') || !bytes.HasPrefix(p, []byte(proto)) {
		return nil
	}
	i := bytes.Index(p, []byte(netHTTPHeaders))
	if i < 0 {
		return nil
	}
	statusLine, text := p[len(proto):i], p[i+len(netHTTPHeaders):]
	if len(statusLine) < 3 || bytes.ContainsAny(statusLine, "\r\n") || bytes.ContainsAny(text, "\r\n") {
		return nil
	}
	status, err := strconv.Atoi(string(statusLine[:3]))
	if err != nil || status < 400 || status > 599 {
		return nil
	}
	cause, message := CauseMalformed, "malformed request: "
	if status == http.StatusRequestHeaderFieldsTooLarge {
		cause, message = CauseHeadersTooLarge, "request headers too large: "
	}
	// The text is net/http's own ("400 Bad Request: missing required Host header"), never
	// request data.
	message += string(text)
	body := Body(status, message)
	var b bytes.Buffer
	b.Grow(200 + len(body))
	b.WriteString(proto + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n")
	b.WriteString("Content-Type: application/json; charset=utf-8\r\n")
	b.WriteString(Header + ": " + cause + "\r\n")
	b.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n")
	b.WriteString("Connection: close\r\n\r\n")
	b.Write(body)
	return b.Bytes()
}
