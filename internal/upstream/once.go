package upstream

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
)

// AtMostOnce wraps rt so that a request which changes state upstream — any method but GET,
// HEAD, OPTIONS and TRACE — is sent at most once, whatever its headers and whatever the
// protocol does.
//
// Go's transport resends a request by itself in several cases: over HTTP/1.1 when a reused
// connection breaks before the first byte of the answer and the request counts as
// replayable (a GET, or any method with an Idempotency-Key or X-Idempotency-Key header and a
// body it can rewind through GetBody); over HTTP/2 after a GOAWAY, a REFUSED_STREAM or a
// PROTOCOL_ERROR from the server, for any method whose body is empty or rewindable. Each of
// those can reach GHL twice with a write it already read: GHL has no idempotency keys, so
// the second copy is a second contact, note or message.
//
// The wrapper gives such a request a body that can be had again only until the transport
// has handed its headers to the connection: HTTP/2's resend from a connection found
// unusable before anything was written still happens; every later one fails with
// ErrResendRefused instead. That includes HTTP/1.1's resend after a write that failed
// before its first byte left the connection's buffer, which Go knows to be safe but this
// wrapper cannot tell apart: such a write fails rather than risk a second copy. An empty
// body becomes a non-nil empty reader for the same reason (Go resends a nil body freely);
// on the wire that is no body at all for DELETE, and an empty chunked body for a POST, PUT
// or PATCH over HTTP/1.1.
func AtMostOnce(rt http.RoundTripper) http.RoundTripper {
	if _, ok := rt.(atMostOnce); ok {
		return rt
	}
	return atMostOnce{rt}
}

// ErrNotSent marks (through errors.Is) the error of a write that provably never reached
// GHL — refused before it left, dropped from a queue, its connection never written — as
// opposed to one that may have been applied. Retries of such a write are sent.
var ErrNotSent = errors.New("not sent to GHL")

// ErrResendRefused is the error of a write whose connection failed after it was sent (or
// began to be): the transport wanted to send it again, and AtMostOnce refused. GHL may
// have applied it.
var ErrResendRefused = errors.New("the connection to GHL failed after the write was sent; it is not sent again, GHL may have applied it")

type atMostOnce struct{ rt http.RoundTripper }

func (o atMostOnce) RoundTrip(r *http.Request) (*http.Response, error) {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return o.rt.RoundTrip(r)
	}
	var started atomic.Bool
	// RoundTrip must not modify r: the copy carries the guarded body.
	out := r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
		// The request line and headers are out (HTTP/1.1: into the connection's buffer;
		// HTTP/2: the HEADERS frame): from here the server may act on the request.
		WroteHeaders: func() { started.Store(true) },
	}))
	again := r.GetBody
	if r.Body == nil || r.Body == http.NoBody {
		out.Body = emptyBody{}
		again = func() (io.ReadCloser, error) { return emptyBody{}, nil }
	}
	if again != nil {
		out.GetBody = func() (io.ReadCloser, error) {
			if started.Load() {
				return nil, ErrResendRefused
			}
			return again()
		}
	}
	// Otherwise the body is a stream (pass-through): it cannot be rewound, so Go never
	// resends it.
	return o.rt.RoundTrip(out)
}

// emptyBody is an empty request body that is not http.NoBody, which Go would resend freely.
type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }
