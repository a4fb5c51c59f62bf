package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/ghlproxy/ghlproxy/batcher"
	"github.com/ghlproxy/ghlproxy/cache"
	"github.com/ghlproxy/ghlproxy/dedupe"
	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
	"github.com/ghlproxy/ghlproxy/ratelimit"
	"github.com/ghlproxy/ghlproxy/routes"
)

// writeFolded writes an answer that came through the fold, with the headers that say how.
func (h *Handler) writeFolded(w http.ResponseWriter, r *http.Request, x *exchange, resp *upstream.Response, o dedupe.Outcome, cacheStatus string) {
	switch o {
	case dedupe.Shared:
		x.outcome = metrics.OutcomeShared
		w.Header().Set("X-Ghlproxy-Dedupe", "shared")
	case dedupe.Replay:
		x.outcome = metrics.OutcomeReplay
		w.Header().Set("X-Ghlproxy-Dedupe", "replay")
	default:
		if x.queued >= time.Millisecond {
			w.Header().Set(headerQueueMs, queueMs(x.queued))
		}
		if x.batch != nil {
			w.Header().Set("X-Ghlproxy-Batch", batchHeader(x.batch))
		}
	}
	var stored time.Time
	if o == dedupe.Replay {
		stored = resp.Date
		if cacheStatus != "" {
			// Nothing was forwarded for this request: it is a hit on the fold's store.
			cacheStatus = "ghlproxy; hit; detail=fold-replay"
		}
	}
	h.writeResponse(w, r, x, resp, cacheStatus, stored)
}

// writeResponse writes resp to the client. A non-zero stored time marks an answer that did
// not come fresh from upstream for this request, and gets an Age.
func (h *Handler) writeResponse(w http.ResponseWriter, r *http.Request, x *exchange, resp *upstream.Response, cacheStatus string, stored time.Time) {
	dst := w.Header()
	for k, vs := range resp.Header {
		dst[k] = vs
	}
	body := h.rewriteLinks(r, resp)
	dst["Content-Length"] = []string{strconv.Itoa(len(body))}
	if cacheStatus != "" {
		dst["Cache-Status"] = []string{cacheStatus}
	}
	if !stored.IsZero() {
		dst["Age"] = []string{strconv.Itoa(int(time.Since(stored) / time.Second))}
	}
	x.status = resp.Status
	w.WriteHeader(resp.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// rewriteLinks points the absolute links to the upstream host in resp's paging fields
// (meta.nextPageUrl and the like, see linkFields) at the address the client used, so that
// following them stays behind the sidecar. Only there: a data field that happens to hold
// the upstream's address (a contact's website, a document's download URL) is the app's
// data, and an app that reads a record, changes it and writes it back must not write the
// sidecar's address into GHL.
func (h *Handler) rewriteLinks(r *http.Request, resp *upstream.Response) []byte {
	body := resp.Body
	hasPlain := bytes.Contains(body, []byte(h.upOrigin))
	if !hasPlain && !bytes.Contains(body, []byte(h.upOriginJ)) {
		return body
	}
	spans := resp.Links(findLinkFields)
	if len(spans) == 0 {
		return body
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	origin := scheme + "://" + r.Host
	originJ := strings.ReplaceAll(origin, "/", `\/`)
	out := make([]byte, 0, len(body)+len(spans)*len(origin))
	at := 0
	for _, sp := range spans {
		out = append(out, body[at:sp.Start]...)
		v := bytes.ReplaceAll(body[sp.Start:sp.End], []byte(h.upOrigin), []byte(origin))
		out = append(out, bytes.ReplaceAll(v, []byte(h.upOriginJ), []byte(originJ))...)
		at = sp.End
	}
	return append(out, body[at:]...)
}

// linkFields are the members GHL puts absolute paging links in, wherever they sit in an
// answer (meta.nextPageUrl of contact and opportunity lists in GHL's specs).
var linkFields = map[string]bool{"nextPageUrl": true, "prevPageUrl": true, "previousPageUrl": true}

// findLinkFields returns where the string values of linkFields members are in body; none
// when body is not JSON.
func findLinkFields(body []byte) []upstream.Span {
	var spans []upstream.Span
	d := jsontext.NewDecoder(bytes.NewReader(body), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	for {
		tok, err := d.ReadToken()
		if err != nil {
			return spans // io.EOF, or not JSON: what was found so far is still right
		}
		if tok.Kind() != '"' {
			continue
		}
		// A string read as an object member's name (the object then holds an odd count of
		// names and values), with its value next.
		if k, n := d.StackIndex(d.StackDepth()); k != '{' || n%2 == 0 || !linkFields[tok.String()] {
			continue
		}
		if d.PeekKind() != '"' {
			continue
		}
		v, err := d.ReadValue()
		if err != nil {
			return spans
		}
		end := int(d.InputOffset())
		spans = append(spans, upstream.Span{Start: end - len(v), End: end})
	}
}

// writeError answers with a sidecar-made error in GHL's shape. Each message says whether
// anything reached GHL, because that is what the caller needs to decide on a retry.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, x *exchange, err error) {
	var (
		rej     *ratelimit.RejectedError
		lost    *dedupe.LeaderLostError
		unconf  *dedupe.UnconfirmedError
		remote  *dedupe.RemoteError
		waitErr *dedupe.WaitError
	)
	fail := func(status int, cause, msg string) {
		x.status = status
		ghlerror.Write(w, status, cause, msg)
	}
	switch {
	case errors.As(err, &rej):
		x.outcome = metrics.OutcomeRejected
		h.cfg.Metrics.RateLimitRejected.Inc()
		hd := w.Header()
		secs := int((rej.RetryAfter + time.Second - 1) / time.Second)
		hd.Set("Retry-After", strconv.Itoa(max(secs, 1)))
		hd.Set("X-RateLimit-Max", strconv.Itoa(rej.Limit))
		hd.Set("X-RateLimit-Interval-Milliseconds", strconv.FormatInt(rej.Interval.Milliseconds(), 10))
		hd.Set("X-RateLimit-Remaining", strconv.Itoa(rej.Remaining))
		fail(http.StatusTooManyRequests, ghlerror.CauseRateLimited,
			"Too many requests: the sidecar queued this request for the longest allowed (ratelimit.max_wait) without a token; nothing was sent to GHL")
	case errors.As(err, &lost):
		msg := "the replica making the identical request in flight went away before answering; nothing was sent to GHL, retry"
		if lost.Sent {
			msg = "the replica making the identical request went away after sending it: GHL may have applied it; check before retrying"
		}
		fail(http.StatusBadGateway, ghlerror.CauseFoldFailed, msg)
	case errors.As(err, &unconf):
		fail(http.StatusBadGateway, ghlerror.CauseFoldFailed,
			"an identical write sent within the fold window got no answer from GHL ("+unconf.Cause+"): it may have been applied; check before retrying")
	case errors.As(err, &remote):
		fail(http.StatusBadGateway, ghlerror.CauseUpstreamUnreachable, "the identical request in flight on another replica failed: "+remote.Msg)
	case errors.As(err, &waitErr):
		fail(http.StatusGatewayTimeout, ghlerror.CauseUpstreamTimeout, "the identical request in flight on another replica did not finish in time")
	case errors.Is(err, dedupe.ErrLeaseLost):
		fail(http.StatusServiceUnavailable, ghlerror.CauseFoldFailed, "the sidecar lost track of this write before sending it; nothing was sent to GHL, retry")
	case errors.Is(err, context.Canceled) && r.Context().Err() == nil:
		// Not the client: the sidecar ended the call because its shutdown grace ran out.
		msg := "the sidecar is shutting down and stopped this request; retry"
		if x.policy == routes.Write && !errors.Is(err, upstream.ErrNotSent) {
			msg = "the sidecar is shutting down and stopped waiting for GHL: the write may have been applied; check before retrying"
		}
		fail(http.StatusServiceUnavailable, ghlerror.CauseShuttingDown, msg)
	case errors.Is(err, batcher.ErrClosed):
		fail(http.StatusServiceUnavailable, ghlerror.CauseShuttingDown, "the sidecar is shutting down; nothing was sent to GHL, retry")
	case errors.Is(err, batcher.ErrQueueFull):
		fail(http.StatusServiceUnavailable, ghlerror.CauseRateLimited, "too many writes are queued for this location; nothing was sent to GHL, retry later")
	default:
		status, cause, msg := upstreamError(err)
		fail(status, cause, msg)
	}
}

func batchHeader(i *batcher.Info) string {
	s := "id=" + i.ID + "; size=" + strconv.Itoa(i.Size)
	if i.Merged > 1 {
		s += "; merged=" + strconv.Itoa(i.Merged)
	}
	if i.Bulk > 1 {
		s += "; bulk=" + strconv.Itoa(i.Bulk)
	}
	return s
}

func queueMs(d time.Duration) string {
	return strconv.FormatInt(d.Milliseconds(), 10)
}

func cacheStatusHit(e *cache.Entry, now time.Time) string {
	return "ghlproxy; hit; ttl=" + strconv.Itoa(int(e.FreshUntil.Sub(now)/time.Second))
}

// storable reports whether an upstream answer may be cached: 200s (and 404s when negative
// caching is on), and not when GHL says not to.
func (h *Handler) storable(resp *upstream.Response) bool {
	ok := resp.Status == http.StatusOK || (resp.Status == http.StatusNotFound && h.cfg.NegativeTTL > 0)
	if !ok || resp.Header.Get("Set-Cookie") != "" {
		return false
	}
	cc := parseCacheControl(resp.Header.Get("Cache-Control"))
	return !cc.noStore && !cc.private
}

type cacheControl struct{ noStore, noCache, private bool }

func parseCacheControl(v string) cacheControl {
	var cc cacheControl
	if v == "" {
		return cc
	}
	for _, d := range strings.Split(v, ",") {
		d, _, _ = strings.Cut(strings.TrimSpace(d), "=")
		switch strings.ToLower(d) {
		case "no-store":
			cc.noStore = true
		case "no-cache":
			cc.noCache = true
		case "private":
			cc.private = true
		}
	}
	return cc
}

func isJSONContent(ct string) bool {
	ct, _, _ = strings.Cut(ct, ";")
	ct = strings.TrimSpace(strings.ToLower(ct))
	return ct == "application/json" || strings.HasSuffix(ct, "+json")
}

func isJSON(b []byte) bool { return len(b) > 0 && json.Valid(b) }

// parseQuery only validates: the query is forwarded exactly as sent.
func parseQuery(raw string) (url.Values, error) {
	if raw == "" {
		return nil, nil
	}
	return url.ParseQuery(raw)
}

var codeLabels = func() [600]string {
	var l [600]string
	for i := range l {
		l[i] = strconv.Itoa(i)
	}
	return l
}()

func codeLabel(code int) string {
	if code >= 0 && code < len(codeLabels) {
		return codeLabels[code]
	}
	return strconv.Itoa(code)
}

// statusRecorder notes the status of a streamed answer for the request metrics.
type statusRecorder struct {
	http.ResponseWriter
	x *exchange
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.x.status == 0 {
		s.x.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.x.status == 0 {
		s.x.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer (flushes, deadlines).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// bufferPool gives ReverseProxy reusable copy buffers instead of 32 KiB per request.
type bufferPool struct{}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(copyBuffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }
