package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ghlproxy/ghlproxy/dedupe"
	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/internal/hopheader"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
	"github.com/ghlproxy/ghlproxy/routes"
)

// Headers the sidecar reads from clients and never forwards.
const (
	headerNoFold = "X-Ghlproxy-No-Fold"
	// headerPriority puts a request in the limiter's background lane; never sent to GHL.
	headerPriority = "X-Ghlproxy-Priority"
	headerQueueMs  = "X-Ghlproxy-Queue-Ms"
)

// boundBody gives the app BodyTimeout to send r's body: a client that sends part of one and
// stalls would otherwise hold its connection and goroutine for as long as it likes. The
// deadline is lifted once the body is in, so a request that waits long for a token or for
// GHL is not cut by it.
func (h *Handler) boundBody(w http.ResponseWriter, r *http.Request, x *exchange) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return
	}
	rc := http.NewResponseController(w)
	deadline := time.Now().Add(h.cfg.BodyTimeout)
	if rc.SetReadDeadline(deadline) != nil {
		return // not a connection with deadlines (an in-process request)
	}
	x.body = &boundedBody{ReadCloser: r.Body, rc: rc, deadline: deadline}
	r.Body = x.body
}

// boundedBody lifts the read deadline at the end of the body and notes when it ran out.
type boundedBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	deadline time.Time
	lifted   atomic.Bool // the whole body is in
	timedOut atomic.Bool
}

func (b *boundedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF && !b.lifted.Load():
		b.lifted.Store(true)
		_ = b.rc.SetReadDeadline(time.Time{})
	case err != nil && err != io.EOF && !time.Now().Before(b.deadline):
		// The deadline ran out: the first read sees the timeout, later ones (the server
		// keeps the connection's error) an unexpected EOF.
		b.timedOut.Store(true)
	}
	return n, err
}

// timedOut says the body ran out of BodyTimeout. The streaming proxy may learn of it first
// as its context ending (the server cancels it when the connection's read fails), before
// its body reader has seen the error: a body not all in past its deadline counts.
func (b *boundedBody) timedOutNow() bool {
	return b != nil && (b.timedOut.Load() || (!b.lifted.Load() && !time.Now().Before(b.deadline)))
}

func (h *Handler) bodyTooSlow(w http.ResponseWriter, x *exchange) {
	x.status = http.StatusRequestTimeout
	ghlerror.Write(w, http.StatusRequestTimeout, ghlerror.CauseRequestTimeout,
		"the request body did not arrive within limits.body_timeout; nothing was sent to GHL")
}

// readBody reads the whole request body, bounded: the fold and the cache key need all of it
// before anything goes upstream. It answers 413, 408 or 400 itself and reports false then.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, x *exchange) ([]byte, bool) {
	if _, err := parseQuery(r.URL.RawQuery); err != nil {
		x.status = http.StatusBadRequest
		ghlerror.Write(w, http.StatusBadRequest, ghlerror.CauseMalformed, "malformed query string: "+err.Error())
		return nil, false
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, true
	}
	if r.ContentLength > h.cfg.MaxBodyBytes {
		h.tooLarge(w, x)
		return nil, false
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.tooLarge(w, x)
			return nil, false
		}
		if x.body.timedOutNow() {
			h.bodyTooSlow(w, x)
			return nil, false
		}
		x.status = http.StatusBadRequest
		ghlerror.Write(w, http.StatusBadRequest, ghlerror.CauseMalformed, "could not read request body: "+err.Error())
		return nil, false
	}
	x.bodyJSON = isJSON(b)
	if isJSONContent(r.Header.Get("Content-Type")) && len(b) > 0 && !x.bodyJSON {
		// GHL would reject it too, but answering here keeps a malformed body from costing
		// a token and from being folded with anything.
		x.status = http.StatusBadRequest
		ghlerror.Write(w, http.StatusBadRequest, ghlerror.CauseMalformed, "request body is not valid JSON")
		return nil, false
	}
	return b, true
}

func (h *Handler) tooLarge(w http.ResponseWriter, x *exchange) {
	x.status = http.StatusRequestEntityTooLarge
	ghlerror.Write(w, http.StatusRequestEntityTooLarge, ghlerror.CauseBodyTooLarge,
		"request body exceeds "+strconv.FormatInt(h.cfg.MaxBodyBytes, 10)+" bytes")
}

// roundTrip makes one buffered upstream call for r with body, and reports it to the
// metrics and the limiter. The call is bounded by UpstreamTimeout and by ctx.
func (h *Handler) roundTrip(ctx context.Context, a *dedupe.Attempt, r *http.Request, x *exchange, body []byte) (*upstream.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.UpstreamTimeout)
	defer cancel()
	out, err := http.NewRequestWithContext(ctx, r.Method, h.upstreamURL(r), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hopheader.Copy(out.Header, r.Header)
	out.Header.Del(headerNoFold)
	out.Header.Del(headerPriority)
	// Let the transport negotiate compression so the body we keep is plain (see
	// upstream.NewTransport).
	out.Header.Del("Accept-Encoding")
	if len(body) == 0 {
		out.Body, out.ContentLength = http.NoBody, 0
	}
	// From here a write may be applied: record it in the fold's shared marker so that no
	// other replica sends it again if this one dies; if that cannot be recorded, the write
	// is not sent at all. For every call, this is also where it stops being abandonable:
	// a call whose callers all left before this point is dropped unsent.
	if err := a.MarkSent(); err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := h.cfg.Transport.RoundTrip(out)
	h.observeUpstream(x, resp, err, time.Since(start))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, h.cfg.MaxResponseBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > h.cfg.MaxResponseBytes {
		return nil, errResponseTooLarge
	}
	hdr := make(http.Header, len(resp.Header))
	hopheader.Copy(hdr, resp.Header)
	// The body is now plain and complete: its length is ours to state.
	hdr.Del("Content-Length")
	hdr.Del("Content-Encoding")
	return &upstream.Response{Status: resp.StatusCode, Header: hdr, Body: b, Date: time.Now(), Sent: start}, nil
}

var errResponseTooLarge = errors.New("upstream response exceeds the buffering limit")

func (h *Handler) observeUpstream(x *exchange, resp *http.Response, err error, d time.Duration) {
	m := h.cfg.Metrics
	code := 0
	if resp != nil {
		code = resp.StatusCode
	}
	m.Upstream.WithLabelValues(x.label, methodLabel(x), codeLabel(code)).Inc()
	m.UpstreamDuration.WithLabelValues(x.label).Observe(d.Seconds())
	if h.cfg.SlowThreshold > 0 && d > h.cfg.SlowThreshold {
		m.SlowUpstream.Inc()
		h.cfg.Log.Info("slow upstream call", "route", x.label, "status", code, "duration", d.Round(time.Millisecond))
	}
	if err != nil || resp == nil {
		return
	}
	if code == http.StatusTooManyRequests {
		m.Upstream429.Inc()
	}
	if v := resp.Header.Get("X-RateLimit-Remaining"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			m.UpstreamRemain.WithLabelValues("burst").Set(float64(n))
		}
	}
	if v := resp.Header.Get("X-RateLimit-Daily-Remaining"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			m.UpstreamRemain.WithLabelValues("daily").Set(float64(n))
		}
	}
	if x.cred == nil {
		return
	}
	if x.admitted != nil {
		defer x.admitted() // after MarkVerified: the next call finds the token verified
	}
	if code >= 200 && code <= 299 {
		// GHL accepted the token: its claims are real, and so is their budget. The calls
		// it made before, on its own, were in that budget's window too: charged to it.
		if n := x.cred.MarkVerified(); n > 0 && h.cfg.Limiter != nil {
			h.cfg.Limiter.Charge(x.cred.ScopeKey, n)
		}
	}
	if h.cfg.Limiter != nil {
		// After MarkVerified: the answer's X-RateLimit-* headers speak of the budget the
		// token really spends.
		h.cfg.Limiter.Observe(x.cred.LimitKey(), code, resp.Header)
	}
}

func (h *Handler) upstreamURL(r *http.Request) string {
	var sb strings.Builder
	sb.WriteString(h.upOrigin)
	sb.WriteString(strings.TrimRight(h.cfg.Upstream.EscapedPath(), "/"))
	sb.WriteString(r.URL.EscapedPath())
	if r.URL.RawQuery != "" {
		sb.WriteByte('?')
		sb.WriteString(r.URL.RawQuery)
	}
	return sb.String()
}

// newStreamProxy is the pass-through path: httputil.ReverseProxy streaming both ways, with
// the sidecar's error shape. It adds no X-Forwarded-* headers: the sidecar is the app's own
// hop, and GHL has no use for loopback addresses.
func (h *Handler) newStreamProxy() http.Handler {
	target := h.cfg.Upstream
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Del(headerNoFold)
			pr.Out.Header.Del(headerPriority)
			if x, ok := pr.In.Context().Value(exchangeKey{}).(*exchange); ok {
				x.upstreamStart = time.Now()
			}
		},
		Transport: h.cfg.Transport,
		// 0, not -1: with -1 ReverseProxy arms a timer per request that flushes the headers
		// at once, so every answer left in two writes (headers, then body) plus a timer
		// goroutine. With 0 a known-length answer leaves in one write once its body is
		// copied (past the writer's 2 KiB buffer it streams), and an answer of unknown
		// length (chunked, server-sent events) is still flushed write by write:
		// ReverseProxy does that by itself.
		FlushInterval: 0,
		BufferPool:    bufferPool{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			x, ok := r.Context().Value(exchangeKey{}).(*exchange)
			if ok && x.policy != routes.Pass {
				h.observeUpstream(x, nil, err, time.Since(x.upstreamStart))
			}
			if ok && x.body.timedOutNow() {
				// The app stalled, not GHL; what GHL got of the body it cannot act on (its
				// length was never reached).
				ghlerror.Write(w, http.StatusRequestTimeout, ghlerror.CauseRequestTimeout,
					"the request body did not arrive within limits.body_timeout")
				return
			}
			status, cause, msg := upstreamError(err)
			ghlerror.Write(w, status, cause, msg)
		},
		ModifyResponse: func(resp *http.Response) error {
			// The limiter learns from pass-through answers too: GHL counts them.
			if x, ok := resp.Request.Context().Value(exchangeKey{}).(*exchange); ok && x.policy != routes.Pass {
				h.observeUpstream(x, resp, nil, time.Since(x.upstreamStart))
			}
			return nil
		},
	}
}

// exchangeKey carries the exchange of a streamed request into the ReverseProxy hooks.
type exchangeKey struct{}

// streamThrough sends r through the streaming proxy with x attached for the hooks.
func (h *Handler) streamThrough(w http.ResponseWriter, r *http.Request, x *exchange) {
	r = r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x))
	h.stream.ServeHTTP(x.recorder(w), r)
}

// upstreamError maps a failed upstream call to the status a client should see.
func upstreamError(err error) (int, string, string) {
	switch {
	case errors.Is(err, errResponseTooLarge):
		return http.StatusBadGateway, ghlerror.CauseUpstreamTooLarge, "GHL's answer is larger than the sidecar buffers (limits.max_response_bytes)"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return http.StatusGatewayTimeout, ghlerror.CauseUpstreamTimeout, "GHL did not answer in time"
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads this, but the log and metrics do.
		return 499, ghlerror.CauseUpstreamUnreachable, "client closed the request"
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), isDNS(err):
		return http.StatusBadGateway, ghlerror.CauseUpstreamUnreachable, "GHL is unreachable: " + shortErr(err)
	}
	return http.StatusBadGateway, ghlerror.CauseUpstreamUnreachable, "upstream call failed: " + shortErr(err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isDNS(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de)
}

// shortErr keeps the innermost cause: URLs in wrapped errors may carry query strings.
func shortErr(err error) string {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err.Error()
		}
		err = u
	}
}
