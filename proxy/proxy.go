// Package proxy is the request pipeline of the sidecar. Every request on the proxy listener
// goes through Handler.ServeHTTP, which reads top to bottom as the README's "What happens to
// a request" describes it:
//
//  1. classify: route template and policy from the route table, credential and scope;
//  2. reads and read-only searches: cache, then a fold of identical misses, then the rate
//     limiter, then upstream, then store;
//  3. writes: a fold that replays identical writes within the window, then the batcher
//     (which takes one rate-limit grant per group), then upstream, then invalidation;
//  4. everything else (unknown routes) is streamed through, rate limited; /oauth/ is
//     streamed through untouched.
//
// Every stage is optional: a nil Cache, Fold, Limiter or Batcher turns that stage off, which
// is how the stages are tested one at a time.
package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ghlproxy/ghlproxy/batcher"
	"github.com/ghlproxy/ghlproxy/cache"
	"github.com/ghlproxy/ghlproxy/dedupe"
	"github.com/ghlproxy/ghlproxy/internal/fingerprint"
	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/internal/identity"
	"github.com/ghlproxy/ghlproxy/internal/luapipe"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
	"github.com/ghlproxy/ghlproxy/ratelimit"
	"github.com/ghlproxy/ghlproxy/routes"
	"github.com/prometheus/client_golang/prometheus"
)

// Limiter is the shared token bucket (package ratelimit).
type Limiter interface {
	Wait(ctx context.Context, scope string, n int, p ratelimit.Priority) (ratelimit.Grant, error)
	Observe(scope string, status int, h http.Header)
	Charge(scope string, n int)
}

// Cache is the read and query cache (package cache).
type Cache interface {
	Get(ctx context.Context, key string, cred *identity.Credential) (*cache.Entry, error)
	// GetShared is Get past the in-process copies: what another replica just stored.
	GetShared(ctx context.Context, key string, cred *identity.Credential) (*cache.Entry, error)
	// Set stores a read's answer; on a single Redis it runs the steps of also in its own
	// script run (the fold's finish of the call).
	Set(ctx context.Context, key string, cred *identity.Credential, resp *upstream.Response, p cache.Policy, also ...luapipe.Step) error
	// SetAfter stores a write's answer as a read's, past the write's own invalidation
	// (write-through).
	SetAfter(ctx context.Context, key string, cred *identity.Credential, resp *upstream.Response, p cache.Policy, inv cache.Invalidation) error
	// InvalidateOwn drops what tags name; on a single Redis it runs the steps of also in
	// its own script run (the fold's part of the same invalidation).
	InvalidateOwn(ctx context.Context, tags []string, also ...luapipe.Step) (cache.Invalidation, error)
}

// Fold shares identical calls and replays their answers (package dedupe).
type Fold interface {
	Do(ctx context.Context, key string, o dedupe.Options, fetch dedupe.Fetch) (*upstream.Response, dedupe.Outcome, error)
	// ForgetPart drops the replays tags name: its step in Redis goes with the cache's
	// invalidation, and finish completes it (running the step itself when the cache did not).
	ForgetPart(tags []string, except string) (step luapipe.Step, finish func(context.Context) error)
}

// Batcher groups writes behind one rate-limit grant (package batcher).
type Batcher interface {
	Submit(ctx context.Context, w batcher.Write) (*upstream.Response, batcher.Info, error)
}

// Config is everything the pipeline needs. Upstream, Routes, Identity and Metrics are
// required; the stages are optional.
type Config struct {
	Upstream  *url.URL
	Transport http.RoundTripper
	Routes    *routes.Table
	Identity  *identity.Resolver
	Metrics   *metrics.Metrics
	Log       *slog.Logger

	// MaxBodyBytes bounds request bodies (413 past it); MaxResponseBytes bounds the upstream
	// answers the sidecar buffers for caching and folding (502 past it).
	MaxBodyBytes     int64
	MaxResponseBytes int64
	// BodyTimeout bounds how long the app may take to send a request body (408 past it).
	BodyTimeout time.Duration
	// UpstreamTimeout bounds one buffered upstream call from start to last byte.
	UpstreamTimeout time.Duration
	// SlowThreshold: upstream calls slower than this are logged and counted; 0 turns it off.
	SlowThreshold time.Duration

	// NegativeTTL, when positive, caches 404 answers of reads that long.
	NegativeTTL time.Duration
	// The windows past an entry's TTL (stale-while-revalidate, stale-if-error), whether a
	// route folds and for how long, and whether its writes merge or go in bulk are the
	// route's own (routes.Route), resolved when the table was built.
	//
	// StaleIfBusy: a read miss holding an entry inside its stale-if-error window waits at
	// most this long for a token; past it the entry is served (fwd=stale; detail=busy) and
	// refreshed in the background lane. 0: it waits like any miss.
	StaleIfBusy time.Duration
	// WriteThrough stores the answers of the writes routes.WriteThrough lists as the answer
	// of the read of the same record, for the writing credential.
	WriteThrough bool

	Cache   Cache
	Fold    Fold
	Limiter Limiter
	Batcher Batcher
	// Locations learns which scopes cache answers of which location, for webhooks
	// (webhook.Locations); nil learns nothing.
	Locations Locations
}

// Locations records that a scope cached something of a location (package webhook).
type Locations interface {
	Note(ctx context.Context, scopeKey, locationID string)
}

// Handler serves the proxy listener.
type Handler struct {
	cfg       Config
	stream    http.Handler // streaming reverse proxy for pass-through traffic
	upOrigin  string       // "https://services.leadconnectorhq.com"
	upOriginJ string       // the same with JSON-escaped slashes
	admin     http.Handler
	refreshes atomic.Int64 // background refreshes in flight, for tests and stats

	series       sync.Map // seriesKey -> *series
	savedByCache prometheus.Counter
	staleBusy    prometheus.Counter
	// write-through stores made, and refused (the record changed meanwhile, or the answer
	// had no record).
	wtStored, wtRefused prometheus.Counter
	// refreshing holds the keys whose background refresh is running on this replica.
	refreshing sync.Map
	// background ends the background refreshes at shutdown (StopBackground): they wait
	// for tokens behind the app, and nothing is lost when they stop.
	background     context.Context
	stopBackground context.CancelFunc
}

// New checks cfg and builds the handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Upstream == nil || cfg.Upstream.Host == "" {
		return nil, errors.New("proxy: upstream URL is required")
	}
	if cfg.Routes == nil || cfg.Identity == nil || cfg.Metrics == nil {
		return nil, errors.New("proxy: routes, identity and metrics are required")
	}
	if cfg.Transport == nil {
		cfg.Transport = upstream.NewTransport(upstream.TransportConfig{})
	}
	// Whatever transport is configured, it never sends a write twice by itself (Go's
	// transport would, for some headers and HTTP/2 errors): see upstream.AtMostOnce.
	cfg.Transport = upstream.AtMostOnce(cfg.Transport)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 10 << 20
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = 32 << 20
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = 60 * time.Second
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = 10 * time.Second
	}
	h := &Handler{cfg: cfg}
	h.background, h.stopBackground = context.WithCancel(context.Background())
	h.upOrigin = cfg.Upstream.Scheme + "://" + cfg.Upstream.Host
	h.upOriginJ = strings.ReplaceAll(h.upOrigin, "/", `\/`)
	h.stream = h.newStreamProxy()
	h.savedByCache = cfg.Metrics.UpstreamSaved.WithLabelValues(metrics.SavedCache)
	h.staleBusy = cfg.Metrics.StaleIfBusy
	h.wtStored = cfg.Metrics.WriteThrough.WithLabelValues("stored")
	h.wtRefused = cfg.Metrics.WriteThrough.WithLabelValues("refused")
	return h, nil
}

// SetAdmin installs the handler for /_ghlproxy/ paths.
func (h *Handler) SetAdmin(a http.Handler) { h.admin = a }

// adminPrefix is the only path space the sidecar keeps for itself on the proxy listener.
const adminPrefix = "/_ghlproxy/"

// ServeHTTP is the pipeline.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, adminPrefix) {
		if h.admin == nil {
			ghlerror.Write(w, http.StatusNotFound, ghlerror.CauseNotFound, "no such ghlproxy endpoint")
			return
		}
		h.admin.ServeHTTP(w, r)
		return
	}
	x := h.classify(r)
	defer h.observe(x)
	if x.policy != routes.Pass { // /oauth/ goes untouched, timing included
		h.boundBody(w, r, x)
	}
	if x.policy != routes.Pass {
		if len(r.Header["Authorization"]) > 1 {
			// Which one GHL's edge honours is not the sidecar's to guess: the key, the
			// budget and the verification must be about the credential GHL uses.
			x.outcome, x.status = metrics.OutcomeRejected, http.StatusBadRequest
			ghlerror.Write(w, x.status, ghlerror.CauseMalformed, "more than one Authorization header; nothing was sent to GHL")
			return
		}
		if len(r.Header.Get("Authorization")) > identity.MaxAuthorizationBytes {
			x.outcome, x.status = metrics.OutcomeRejected, http.StatusRequestHeaderFieldsTooLarge
			ghlerror.Write(w, x.status, ghlerror.CauseHeadersTooLarge,
				"Authorization header exceeds "+strconv.Itoa(identity.MaxAuthorizationBytes)+" bytes; nothing was sent to GHL")
			return
		}
		if v := r.Header.Get(headerPriority); v != "" {
			p, err := ratelimit.ParsePriority(strings.ToLower(strings.TrimSpace(v)))
			if err != nil || p == ratelimit.Warm {
				x.outcome, x.status = metrics.OutcomeRejected, http.StatusBadRequest
				ghlerror.Write(w, x.status, ghlerror.CauseMalformed, headerPriority+" is interactive or background; nothing was sent to GHL")
				return
			}
			x.lane = max(x.lane, p) // it lowers the lane only
		}
		h.identify(r, x)
		if x.cred.Anonymous {
			// Answered here: GHL would say the same, and an anonymous request has no scope
			// to spend budget from.
			x.outcome, x.status = metrics.OutcomeRejected, http.StatusUnauthorized
			ghlerror.Write(w, http.StatusUnauthorized, ghlerror.CauseUnauthorized, "Authorization header is missing: GHL requires a Bearer token")
			return
		}
	}

	switch x.policy {
	case routes.Pass:
		// /oauth/: every refresh rotates the refresh token, so these are never cached,
		// folded, batched, replayed or limited — streamed through as they are.
		x.outcome = metrics.OutcomePass
		h.streamThrough(w, r, x)
	case routes.Unknown:
		h.passLimited(w, r, x)
	case routes.Read, routes.Query:
		h.read(w, r, x)
	case routes.Write:
		h.write(w, r, x)
	}
}

// exchange is the state of one request as it moves through the pipeline.
type exchange struct {
	start   time.Time
	route   *routes.Route
	params  routes.Params
	label   string // route template or "other"
	policy  routes.Policy
	cred    *identity.Credential
	version string
	// lane is the rate limiter's lane of the request (see WithPriority): a stage may
	// lower it for a call it makes (a refresh goes in Background), never raise it.
	lane    ratelimit.Priority
	outcome string
	status  int
	// bodyJSON says the request body is one valid JSON document (readBody checks it once).
	bodyJSON bool
	// upstreamStart is when a streamed request went upstream.
	upstreamStart time.Time
	// body is the request body under limits.body_timeout, when it has one.
	body *boundedBody
	// admitted releases the credential's probe (identity.Credential.Admit) once the
	// upstream answer is in; nil when there is none to release. Set and called on the
	// goroutine that makes the call.
	admitted func()

	// What the upstream call left for the request that led it: the rate-limit wait, the
	// batch it went in, whether its answer went into the cache. An upstream call works on
	// an exchange of its own (derive), on the goroutine that makes it (the fold detaches
	// it from every caller); the request takes these from it only once the call is over,
	// and only when it led the call (took): nothing writes into a request's exchange from
	// another goroutine.
	queued time.Duration
	batch  *batcher.Info
	stored bool
}

// derive is the exchange of a call made for x: x's request, route, credential and lane,
// with nothing of x's own progress. Every exchange but the first (classify's) is built here.
func (x *exchange) derive() *exchange {
	return &exchange{start: x.start, route: x.route, params: x.params, label: x.label, policy: x.policy,
		cred: x.cred, version: x.version, lane: x.lane, bodyJSON: x.bodyJSON}
}

// took takes what the call fx, which this request led and which is over, left for it.
func (x *exchange) took(fx *exchange) {
	x.queued, x.batch, x.stored = fx.queued, fx.batch, fx.stored
}

func (x *exchange) recorder(w http.ResponseWriter) http.ResponseWriter {
	return &statusRecorder{ResponseWriter: w, x: x}
}

// classify matches r to its route. Headers named in r's Connection header go first: they
// never reach GHL (RFC 9110 §7.6.1), so nothing may be keyed or decided on them either —
// "Connection: Version" must not leave a Version in the key that GHL never saw.
func (h *Handler) classify(r *http.Request) *exchange {
	dropConnectionNamed(r.Header)
	x := &exchange{start: time.Now(), label: routes.OtherTemplate, lane: priorityOf(r.Context())}
	x.route, x.params = h.cfg.Routes.Match(r.Method, r.URL.EscapedPath())
	if x.route != nil {
		x.label = x.route.Template
		x.policy = x.route.Policy
	}
	if x.policy != routes.Pass && underOAuth(r.URL.Path) {
		// However the path is spelled, anything under /oauth/ is a token call: untouched.
		x.route, x.params, x.label, x.policy = nil, nil, routes.OtherTemplate, routes.Pass
	}
	return x
}

// noteLocation tells Locations which location an answer belongs to: the one a Location
// token is bound to, else one the request names (path, query or body). A webhook of that
// location then drops the scope's lists and searches too. It is called before the fetch
// for a credential GHL has vouched for, so that a webhook arriving while the answer is on
// its way finds the scope (and the cache refuses to store what that webhook made wrong);
// for any other credential only once GHL answered it, so that forged tokens add nothing
// to the registry.
func (h *Handler) noteLocation(ctx context.Context, r *http.Request, x *exchange, body []byte) {
	if h.cfg.Locations == nil {
		return
	}
	if loc := locationOf(r, x, body); loc != "" {
		h.cfg.Locations.Note(ctx, x.cred.ScopeKey, loc)
	}
}

func locationOf(r *http.Request, x *exchange, body []byte) string {
	if x.cred.Class == "Location" && x.cred.ClassID != "" {
		return x.cred.ClassID
	}
	if v := x.params.Get("locationId"); v != "" {
		return v
	}
	if strings.Contains(r.URL.RawQuery, "ocation") {
		q, _ := url.ParseQuery(r.URL.RawQuery)
		for _, k := range []string{"locationId", "location_id"} {
			if v := q.Get(k); v != "" {
				return v
			}
		}
	}
	if x.bodyJSON && bytes.Contains(body, []byte(`"locationId"`)) {
		var v struct {
			LocationID string `json:"locationId"`
		}
		if json.Unmarshal(body, &v) == nil {
			return v.LocationID
		}
	}
	return ""
}

// identify resolves the credential and Version of a request that is not a pass.
func (h *Handler) identify(r *http.Request, x *exchange) {
	x.cred = h.cfg.Identity.Resolve(r.Header.Get("Authorization"))
	x.version = r.Header.Get("Version")
}

// underOAuth says whether a request path (unescaped, as net/http decodes it) names
// something under /oauth/ once cleaned: "//oauth/token", "/x/../oauth/token" and
// "/OAuth/token" all do. GHL's edge may normalise a path before routing it, so the sidecar
// takes the widest reading: a token call must never be cached, folded or replayed.
func underOAuth(p string) bool {
	c := strings.ToLower(path.Clean("/" + p))
	return c == "/oauth" || strings.HasPrefix(c, "/oauth/")
}

// dropConnectionNamed removes the headers that r's Connection header names, but Upgrade,
// which the streaming proxy needs to recognise an upgrade (and drops itself).
func dropConnectionNamed(hd http.Header) {
	for _, v := range hd["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = http.CanonicalHeaderKey(strings.TrimSpace(f)); f != "" && f != "Upgrade" && f != "Connection" {
				delete(hd, f)
			}
		}
	}
}

func (h *Handler) observe(x *exchange) {
	if x.outcome == "" {
		x.outcome = metrics.OutcomeMiss
	}
	d := time.Since(x.start)
	ser := h.seriesOf(x)
	ser.requests.Inc()
	ser.duration.Observe(d.Seconds())
	if h.cfg.Log.Enabled(context.Background(), slog.LevelDebug) {
		h.cfg.Log.Debug("request", "route", x.label, "status", x.status, "outcome", x.outcome,
			"duration", d, "queue", x.queued)
	}
}

// seriesKey names one series of the request metrics: the route (nil for "other") fixes
// the route and method labels.
type seriesKey struct {
	route   *routes.Route
	status  int
	outcome string
}

// series holds the handles of one seriesKey's request metrics.
type series struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// seriesOf finds x's series. WithLabelValues hashes every label value and takes the vector's
// lock on each call, which cost about a tenth of a cache hit; the handles are kept instead,
// as many as the metrics have series.
func (h *Handler) seriesOf(x *exchange) *series {
	k := seriesKey{x.route, x.status, x.outcome}
	if s, ok := h.series.Load(k); ok {
		return s.(*series)
	}
	m := h.cfg.Metrics
	s, _ := h.series.LoadOrStore(k, &series{
		requests: m.Requests.WithLabelValues(x.label, methodLabel(x), codeLabel(x.status), x.outcome),
		duration: m.RequestDuration.WithLabelValues(x.label, x.outcome),
	})
	return s.(*series)
}

func methodLabel(x *exchange) string {
	if x.route != nil {
		return x.route.Method
	}
	return "other"
}

// passLimited forwards a request the route table does not know: untouched, streamed, but
// still behind the scope's bucket, since GHL counts it all the same.
func (h *Handler) passLimited(w http.ResponseWriter, r *http.Request, x *exchange) {
	x.outcome = metrics.OutcomePass
	release, err := x.cred.Admit(r.Context())
	if err != nil {
		h.writeError(w, r, x, err)
		return
	}
	defer release()
	x.admitted = release // a long download does not hold the token's other calls
	if h.cfg.Limiter != nil {
		if err := h.wait(r.Context(), x, 1); err != nil {
			h.writeError(w, r, x, err)
			return
		}
		if x.queued >= time.Millisecond {
			w.Header().Set(headerQueueMs, queueMs(x.queued))
		}
	}
	h.streamThrough(w, r, x)
}

// read serves GET routes and read-only searches.
func (h *Handler) read(w http.ResponseWriter, r *http.Request, x *exchange) {
	body, ok := h.readBody(w, r, x)
	if !ok {
		return
	}
	cc := parseCacheControl(r.Header.Get("Cache-Control"))
	key := h.key(r, x, body)
	cacheable := h.cfg.Cache != nil && x.route.TTL > 0 && !cc.noStore &&
		(x.policy == routes.Read || x.bodyJSON)

	var stale *cache.Entry
	if cacheable && !cc.noCache {
		e, err := h.cfg.Cache.Get(r.Context(), key, x.cred)
		if err != nil {
			h.cfg.Log.Warn("cache read failed; treating as a miss", "route", x.label, "err", err)
		}
		if e != nil {
			now := time.Now()
			switch {
			case e.Fresh(now):
				x.outcome = metrics.OutcomeHit
				h.savedByCache.Inc()
				h.writeResponse(w, r, x, e.Resp, cacheStatusHit(e, now), e.Stored)
				return
			case now.Before(e.StaleWhileRevalidate):
				x.outcome = metrics.OutcomeStale
				h.savedByCache.Inc()
				h.refresh(r, x, key, body, h.scopedTags(x, x.route.Tags(x.params)))
				h.writeResponse(w, r, x, e.Resp, "ghlproxy; fwd=stale", e.Stored)
				return
			}
			stale = e
		}
	}

	// Built after the lookup: a hit never needs them.
	tags := h.scopedTags(x, x.route.Tags(x.params))
	// stale-if-busy: with an entry at hand, a token further away than StaleIfBusy is not
	// worth waiting for.
	var busy time.Duration
	if stale != nil && h.cfg.StaleIfBusy > 0 && time.Now().Before(stale.StaleIfError) {
		busy = h.cfg.StaleIfBusy
	}
	fetchWithin := func(busy time.Duration) fetchFunc {
		return func(ctx context.Context, a *dedupe.Attempt, fx *exchange) (*upstream.Response, error) {
			vouched := fx.cred.Verified()
			if vouched && cacheable {
				h.noteLocation(ctx, r, fx, body)
			}
			resp, err := h.fetchRead(ctx, a, r, fx, body, busy)
			if err == nil && cacheable && h.storable(resp) {
				h.store(ctx, a, key, fx, resp, tags)
				if !vouched {
					h.noteLocation(ctx, r, fx, body)
				}
			}
			return resp, err
		}
	}
	o := dedupe.Options{Tags: tags}
	if cacheable {
		// The cache keeps the answer for its TTL and then serves it stale or refreshes it;
		// a replay outliving the TTL would stretch the TTL and pre-empt stale-if-error.
		o.Window = x.route.TTL
		o.FromCache = h.fromCache(key, x.cred)
	}
	resp, outcome, err := h.fold(r, x, key, cc, o, fetchWithin(busy))
	if isBusy(err) {
		if stale != nil {
			// The app gets the entry now; the refresh waits for a token in the background
			// lane, behind the app's own requests.
			x.outcome = metrics.OutcomeStale
			h.savedByCache.Inc()
			h.staleBusy.Inc()
			h.refresh(r, x, key, body, tags)
			h.writeResponse(w, r, x, stale.Resp, "ghlproxy; fwd=stale; detail=busy", stale.Stored)
			return
		}
		// Shared from an identical miss that held an entry this one no longer finds (it
		// was dropped, or left its window, meanwhile): this one waits for its token like
		// any miss, through the fold and the store — once more joining another busy call
		// at most, then on its own.
		resp, outcome, err = h.fold(r, x, key, cc, o, fetchWithin(0))
		if isBusy(err) {
			resp, err = h.call(r, x, fetchWithin(0))
			outcome = dedupe.Leader
		}
	}
	if stale != nil && time.Now().Before(stale.StaleIfError) && (err != nil || resp.Status >= 500 || resp.Status == http.StatusTooManyRequests) {
		// stale-if-error: an answer a little old beats an error the app must handle.
		x.outcome = metrics.OutcomeStale
		h.writeResponse(w, r, x, stale.Resp, "ghlproxy; fwd=stale; detail=stale-if-error", stale.Stored)
		return
	}
	if err != nil {
		h.writeError(w, r, x, err)
		return
	}
	var status string
	switch {
	case h.cfg.Cache == nil:
	case !cacheable:
		status = "ghlproxy; fwd=bypass"
	case cc.noCache:
		status = "ghlproxy; fwd=request"
	default:
		status = "ghlproxy; fwd=miss"
	}
	if x.stored {
		status += "; stored"
	}
	h.writeFolded(w, r, x, resp, outcome, status)
}

// errBusy: a read's token was further away than its busy bound (stale-if-busy), so
// nothing was sent — or, with an entry at hand, GHL refused the read with a 429.
var errBusy = errors.New("proxy: no rate-limit token within cache.stale_if_busy")

// isBusy says whether err is errBusy, also when an identical read on another replica met
// it: the fold hands such an error on as its text (a replica of another version, whose
// text differs, makes that read's followers fail once, as any failed call would).
func isBusy(err error) bool {
	var re *dedupe.RemoteError
	return errors.Is(err, errBusy) || errors.As(err, &re) && re.Msg == errBusy.Error()
}

// fetchRead makes the upstream call of a read: one token, the call, and — when GHL answers
// 429 anyway (its window is shared with clients we cannot see) — one retry after the pause
// the limiter learned from that answer. Reads are safe to resend; writes never are. With a
// busy bound, a first token further away than that is not waited for: errBusy, and
// nothing was sent.
func (h *Handler) fetchRead(ctx context.Context, a *dedupe.Attempt, r *http.Request, x *exchange, body []byte, busy time.Duration) (*upstream.Response, error) {
	// A token whose claims GHL has not vouched for goes upstream one call at a time, on
	// its own budget (identity.Credential.Admit).
	release, err := x.cred.Admit(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	x.admitted = release
	for attempt := 0; ; attempt++ {
		if attempt == 0 && busy > 0 && h.cfg.Limiter != nil {
			err := h.wait(ratelimit.WithMaxWait(ctx, busy), x, 1)
			var rej *ratelimit.RejectedError
			if errors.As(err, &rej) {
				return nil, errBusy // refused up front: nothing reserved, nothing sent
			}
			if err != nil {
				return nil, err
			}
		} else if err := h.wait(ctx, x, 1); err != nil {
			return nil, err
		}
		resp, err := h.roundTrip(ctx, a, r, x, body)
		if err == nil && resp.Status == http.StatusTooManyRequests && busy > 0 {
			// With an entry at hand, the pause GHL just announced is not worth waiting out
			// either: read serves the entry (GHL did nothing with a read it refused).
			return nil, errBusy
		}
		if err != nil || resp.Status != http.StatusTooManyRequests || attempt == 1 || h.cfg.Limiter == nil {
			return resp, err
		}
	}
}

// refresh starts one background refresh of a stale entry. It goes through the fold, so
// every replica serving the same stale entry shares one upstream call.
func (h *Handler) refresh(r *http.Request, x *exchange, key string, body []byte, tags []string) {
	if _, running := h.refreshing.LoadOrStore(key, struct{}{}); running {
		return // one refresh per entry at a time on this replica; the fold shares it across
	}
	// The background lane (or a lower one the request was in): the app already has its
	// answer, and the refresh must not take a token before any of the app's own requests.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	stop := context.AfterFunc(h.background, cancel)
	// The server reuses r once the handler returns; the refresh works on its own copy.
	out := r.Clone(ctx)
	rx := x.derive()
	rx.lane = max(x.lane, ratelimit.Background)
	h.refreshes.Add(1)
	go func() {
		defer h.refreshes.Add(-1)
		defer h.refreshing.Delete(key)
		defer cancel()
		defer stop()
		fetch := func(ctx context.Context, a *dedupe.Attempt) (*upstream.Response, error) {
			// A refresh's credential was answered before (its entry exists): note first.
			h.noteLocation(ctx, out, rx, body)
			resp, err := h.fetchRead(ctx, a, out, rx, body, 0)
			if err == nil && h.storable(resp) {
				h.store(ctx, a, key, rx, resp, tags)
			}
			return resp, err
		}
		if h.cfg.Fold != nil {
			// The refresh's record in Redis is for the other replicas' refreshes of the
			// same entry: sealed like every other, or none when the cache took the answer.
			o := dedupe.Options{Key: &rx.cred.EncKey, FromCache: h.fromCache(key, rx.cred)}
			_, _, _ = h.cfg.Fold.Do(ctx, "refresh:"+key, o, fetch)
			return
		}
		_, _ = fetch(ctx, nil)
	}()
}

// StopBackground ends the background refreshes in flight and every one started later: the
// sidecar calls it when it begins to shut down, so that a refresh waiting for a token in the
// background lane does not hold the shutdown for its grace period.
func (h *Handler) StopBackground() { h.stopBackground() }

// store puts the answer of a read's attempt a in the cache — with the fold's finish of the
// call, one command on a single Redis (Attempt.FinishStep) — and tells the fold what the
// cache did: took it (the fold keeps no copy), or refused it as one GHL may have read
// before a write (the fold must not replay it either: a read begun after that write would
// get it for the window).
func (h *Handler) store(ctx context.Context, a *dedupe.Attempt, key string, x *exchange, resp *upstream.Response, tags []string) {
	switch err := h.cfg.Cache.Set(ctx, key, x.cred, resp, h.policy(x, resp.Status, tags), a.FinishStep()); {
	case err == nil:
		x.stored = true
		a.Cached() // one copy of the answer: the cache's
	case errors.Is(err, cache.ErrInvalidated):
		// Expected right after a write: GHL may have read this before the write landed.
		h.cfg.Log.Debug("answer not cached: it may predate a write", "route", x.label)
		a.NoReplay()
	case errors.Is(err, cache.ErrExpired):
	default:
		h.cfg.Log.Warn("cache store failed", "route", x.label, "err", err)
	}
}

// fromCache is how a fold waiter takes the answer its leader on another replica stored in
// the cache (dedupe.Attempt.Cached): the entry in Redis, while it is fresh.
func (h *Handler) fromCache(key string, cred *identity.Credential) func(context.Context) (*upstream.Response, bool) {
	return func(ctx context.Context) (*upstream.Response, bool) {
		e, err := h.cfg.Cache.GetShared(ctx, key, cred)
		if err != nil || e == nil || !e.Fresh(time.Now()) {
			return nil, false
		}
		return e.Resp, true
	}
}

// policy is how an answer of x's route with status is stored.
func (h *Handler) policy(x *exchange, status int, tags []string) cache.Policy {
	ttl := x.route.TTL
	if status == http.StatusNotFound {
		ttl = h.cfg.NegativeTTL
	}
	return cache.Policy{
		TTL:                  ttl,
		StaleWhileRevalidate: x.route.StaleWhileRevalidate,
		StaleIfError:         x.route.StaleIfError,
		Tags:                 tags,
		Route:                x.label,
	}
}

// write serves routes that change state.
func (h *Handler) write(w http.ResponseWriter, r *http.Request, x *exchange) {
	body, ok := h.readBody(w, r, x)
	if !ok {
		return
	}
	cc := parseCacheControl(r.Header.Get("Cache-Control"))
	key := h.key(r, x, body)
	fetch := func(ctx context.Context, a *dedupe.Attempt, fx *exchange) (*upstream.Response, error) {
		resp, err := h.sendWrite(ctx, a, r, fx, body)
		if err != nil || resp.Status < 200 || resp.Status > 299 {
			return resp, err
		}
		if fx.batch != nil && fx.batch.Superseded {
			// A later write of this entity rode in the same call: it is the latest, its
			// invalidation covers this one's, and a retry of this one is a new intent.
			a.NoReplay()
			return resp, nil
		}
		inv := h.invalidate(ctx, fx, key)
		if inv != nil && h.writeThrough(ctx, r, fx, resp, *inv) {
			fx.stored = true
		}
		return resp, nil
	}
	// The entity's tags: a later successful write to the same entity ends this write's
	// replay, on every replica (its own invalidation spares it: key).
	o := dedupe.Options{Write: true, SentByFetch: true, Tags: h.scopedTags(x, x.route.EntityTags(x.params))}
	resp, outcome, err := h.fold(r, x, key, cc, o, fetch)
	if err != nil {
		h.writeError(w, r, x, err)
		return
	}
	if outcome == dedupe.Leader && x.batch != nil {
		x.outcome = metrics.OutcomeBatched
	}
	h.writeFolded(w, r, x, resp, outcome, "")
}

// sendWrite sends a write through the batcher when there is one, else with a token of its
// own. Never resent: GHL may have applied a write that timed out or was answered 429.
func (h *Handler) sendWrite(ctx context.Context, a *dedupe.Attempt, r *http.Request, x *exchange, body []byte) (*upstream.Response, error) {
	release, err := x.cred.Admit(ctx) // see fetchRead
	if err != nil {
		return nil, err
	}
	defer release()
	x.admitted = release
	send := func(ctx context.Context, b []byte) (*upstream.Response, error) {
		return h.roundTrip(ctx, a, r, x, b)
	}
	if h.cfg.Batcher == nil {
		if err := h.wait(ctx, x, 1); err != nil {
			return nil, err
		}
		return send(ctx, body)
	}
	// A merged or bulk call that carries this write is made by another write's send: the
	// fold's marker of this one must say "sent" then too, or a retry after a timeout would
	// be sent again instead of told it may have been applied.
	wr := batcher.Write{Scope: x.cred.LimitKey(), Body: body, Send: send, Sending: a.MarkSent,
		Background: x.lane != ratelimit.Interactive}
	if x.route.Entity != "" {
		if id := x.params.Get(x.route.Entity); id != "" {
			// Order per entity within the scope: two tokens of one location writing the
			// same contact still write one entity upstream.
			wr.Entity = x.cred.ScopeKey + "|" + x.route.Resource + "/" + id
			if x.route.Merge && x.bodyJSON {
				wr.MergeKey = x.cred.Hash + "|" + x.version + "|" + x.route.Method + " " + r.URL.EscapedPath() + "?" + r.URL.RawQuery
			}
			wr.Bulk = h.bulkTags(r, x, id, body)
		}
	}
	resp, info, err := h.cfg.Batcher.Submit(ctx, wr)
	if err == nil && info.Size > 0 {
		x.batch = &info
	}
	return resp, err
}

// invalidate drops what a successful write made wrong, in the cache and in the fold's
// replay window: one set of rules (the route table's) for both. except is the write's own
// fold key, whose answer stays replayable to its retries.
// It returns the cache's record of the invalidation for write-through, nil when Redis did
// not confirm it (nothing is written through then).
func (h *Handler) invalidate(ctx context.Context, x *exchange, except string) *cache.Invalidation {
	inv, err := h.drop(ctx, h.scopedTags(x, x.route.Invalidates(x.params)), except, metrics.SourceWrite)
	if err != nil {
		h.cfg.Log.Warn("invalidation not confirmed by Redis; retrying it in the background", "route", x.label, "err", err)
		return nil
	}
	return inv
}

// Invalidate drops what stored tags (routes.ScopedTag) name, in the cache and in the
// fold's replays, on every replica: the path a change GHL reports by webhook takes, the
// same as a write's. An error means Redis did not confirm it; the stages retry it.
func (h *Handler) Invalidate(ctx context.Context, tags []string) error {
	_, err := h.drop(ctx, tags, "", metrics.SourceWebhook)
	return err
}

// drop invalidates tags in the cache and the fold; the Invalidation is the cache's (nil
// without a cache).
func (h *Handler) drop(ctx context.Context, tags []string, except, source string) (*cache.Invalidation, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	h.cfg.Metrics.Invalidations.WithLabelValues(source).Inc()
	// One invalidation for both stages: on a single Redis the fold's part runs in the
	// cache's script run, one command.
	var also []luapipe.Step
	finish := func(context.Context) error { return nil }
	if h.cfg.Fold != nil {
		var step luapipe.Step
		step, finish = h.cfg.Fold.ForgetPart(tags, except)
		also = append(also, step)
	}
	var errs []error
	var inv *cache.Invalidation
	if h.cfg.Cache != nil {
		i, err := h.cfg.Cache.InvalidateOwn(ctx, tags, also...)
		inv = &i
		errs = append(errs, err)
	}
	errs = append(errs, finish(ctx))
	return inv, errors.Join(errs...)
}

// scopedTags turns route tags into the tags the stages keep (see routes.ScopedTag).
func (h *Handler) scopedTags(x *exchange, tags []string) []string {
	out := make([]string, len(tags))
	for i, t := range tags {
		out[i] = routes.ScopedTag(x.cred.ScopeKey, t)
	}
	return out
}

// fetchFunc is a request's upstream call: it works on fx, an exchange of its own (derive),
// and a, the fold's attempt (nil when the call is not folded).
type fetchFunc func(ctx context.Context, a *dedupe.Attempt, fx *exchange) (*upstream.Response, error)

// fold runs fetch through the Fold when this request may fold, else directly (call). A
// positive o.Window caps the fold window: a cached read's answer must not be replayed past
// its TTL. When this request led the call, x takes what the call left for it.
func (h *Handler) fold(r *http.Request, x *exchange, key string, cc cacheControl, o dedupe.Options,
	fetch fetchFunc) (*upstream.Response, dedupe.Outcome, error) {
	window, ok := h.foldWindow(r, x, cc)
	if !ok {
		resp, err := h.call(r, x, fetch)
		return resp, dedupe.Leader, err
	}
	if o.Window > 0 && o.Window < window {
		window = o.Window
	}
	o.Window = window
	o.Key = &x.cred.EncKey
	if window <= 0 {
		o.Window = -1 // dedupe.window 0: share concurrent calls only, replay nothing
	}
	// Written by the call's goroutine, read here only once Do has returned this request as
	// the leader: the fold's call is over then (Do answers its leader after the fetch).
	var led *exchange
	resp, out, err := h.cfg.Fold.Do(r.Context(), key, o, func(ctx context.Context, a *dedupe.Attempt) (*upstream.Response, error) {
		fx := x.derive()
		led = fx
		return fetch(ctx, a, fx)
	})
	if out == dedupe.Leader && led != nil {
		x.took(led)
	}
	return resp, out, err
}

// call makes x's upstream call without the fold, on this goroutine.
func (h *Handler) call(r *http.Request, x *exchange, fetch fetchFunc) (*upstream.Response, error) {
	fx := x.derive()
	resp, err := fetch(r.Context(), nil, fx)
	x.took(fx)
	return resp, err
}

func (h *Handler) foldWindow(r *http.Request, x *exchange, cc cacheControl) (time.Duration, bool) {
	// no-cache asks for a fresh answer and no-store for one kept nowhere: neither may be
	// answered from, or leave, a replay.
	if h.cfg.Fold == nil || cc.noCache || cc.noStore || r.Header.Get(headerNoFold) == "1" {
		return 0, false
	}
	if x.route == nil || !x.route.Fold {
		return 0, false
	}
	return x.route.FoldWindow, true
}

// wait takes n tokens for x's scope in x's lane.
func (h *Handler) wait(ctx context.Context, x *exchange, n int) error {
	if h.cfg.Limiter == nil {
		return nil
	}
	g, err := h.cfg.Limiter.Wait(ctx, x.cred.LimitKey(), n, x.lane)
	if err != nil {
		return err
	}
	x.queued = g.Waited
	return nil
}

func (h *Handler) key(r *http.Request, x *exchange, body []byte) string {
	return keyOf(r.Method, r.URL.EscapedPath(), r.URL.RawQuery, x, body, isJSONContent(r.Header.Get("Content-Type")))
}

// keyOf is the fingerprint of a request of x's route, credential and Version: the one key
// the cache and the fold use for it (write-through computes a GET's with it too).
func keyOf(method, escapedPath, rawQuery string, x *exchange, body []byte, isJSON bool) string {
	return fingerprint.Of(fingerprint.Request{
		Method:   method,
		Route:    x.label,
		Path:     escapedPath,
		RawQuery: rawQuery,
		Version:  x.version,
		CredHash: x.cred.Hash,
		Body:     body,
		JSON:     isJSON,
	})
}
