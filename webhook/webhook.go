// Package webhook receives GHL's signed webhook deliveries and turns the changes they report
// — a contact edited in GHL's UI, an opportunity moved by a workflow, a message received —
// into invalidations on every replica, so that what the cache holds follows GHL itself and
// not only the writes that pass through the sidecar.
//
// A delivery is verified (Ed25519 over the raw body in X-GHL-Signature; the legacy RSA
// X-WH-Signature when it is the only one), checked for age (its timestamp) and for repeats
// (its webhookId, on every replica), mapped in the route table's terms to what it changed,
// invalidated, and optionally passed on unchanged to the app's own receiver.
package webhook

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/internal/hopheader"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/routes"
)

// Path is where deliveries are received, on the proxy listener and on webhooks.listen.
const Path = "/_ghlproxy/webhooks/ghl"

// Config is what a Receiver needs. PublicKey, Routes and Invalidate are required.
type Config struct {
	// PublicKey verifies X-GHL-Signature; LegacyKey, when set, X-WH-Signature.
	PublicKey ed25519.PublicKey
	LegacyKey *rsa.PublicKey
	// MaxAge refuses a delivery whose timestamp is further than this from now, either way
	// (webhooks.max_age, default 5m). Ids are remembered twice as long.
	MaxAge time.Duration
	// ForwardURL, when set, gets every verified delivery unchanged; GHL gets its answer.
	ForwardURL string
	// Client forwards; default one with a 30 s timeout. It never follows a redirect: the
	// delivery and its signature go to ForwardURL and nowhere else.
	Client *http.Client

	Routes *routes.Table
	// Invalidate drops what stored tags (routes.ScopedTag) name, on every replica.
	Invalidate func(ctx context.Context, tags []string) error
	// Locations knows the scopes of a location; nil: only entities are dropped.
	Locations *Locations
	// Redis shares the ids already processed among replicas; nil: this replica only.
	Redis  redis.UniversalClient
	Prefix string

	Metrics *metrics.Metrics
	Log     *slog.Logger
	Now     func() time.Time
}

// MaxBody bounds a delivery's body: GHL's events are a few KiB. bodyTimeout bounds how long
// a sender may take to send it, and maxInFlight how many deliveries are read at once, so
// that a listener facing the internet holds at most maxInFlight×MaxBody of bodies; past
// it a delivery is answered 429, which GHL retries.
const (
	MaxBody     = 256 << 10
	bodyTimeout = 10 * time.Second
	maxInFlight = 64
	// retryAfter is what a 429 asks GHL to wait; GHL retries every 10 minutes anyway.
	retryAfter = "600"
)

// Receiver serves Path.
type Receiver struct {
	cfg  Config
	seen *seen
	m    *prometheus.CounterVec
	typ  map[string]bool
	busy chan struct{} // one per delivery being read or processed
}

// New checks cfg and builds the receiver.
// DefaultMaxAge is Config.MaxAge's default, and webhooks.max_age's.
const DefaultMaxAge = 5 * time.Minute

func New(cfg Config) (*Receiver, error) {
	if cfg.PublicKey == nil || cfg.Routes == nil || cfg.Invalidate == nil {
		return nil, errors.New("webhook: public key, routes and Invalidate are required")
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 30 * time.Second}
	}
	c := *cfg.Client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	cfg.Client = &c
	if cfg.Prefix == "" {
		cfg.Prefix = "ghlproxy"
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Receiver{cfg: cfg, m: cfg.Metrics.Webhooks, typ: map[string]bool{}, busy: make(chan struct{}, maxInFlight)}
	r.seen = &seen{rdb: cfg.Redis, prefix: cfg.Prefix, ttl: max(2*cfg.MaxAge, 10*time.Minute), now: cfg.Now, local: map[string]mark{}}
	for t := range events {
		r.typ[t] = true
	}
	return r, nil
}

// Results, the result label of ghlproxy_webhooks_total.
const (
	ResultApplied   = "applied"
	ResultDuplicate = "duplicate"
	ResultRefused   = "refused"
	ResultUnknown   = "unknown"
)

// event is what the receiver reads of a delivery; the rest of it goes to the app untouched.
type event struct {
	Type       string `json:"type"`
	LocationID string `json:"locationId"`
	Timestamp  string `json:"timestamp"`
	WebhookID  string `json:"webhookId"`
}

func (rc *Receiver) count(typ, result string) {
	if !rc.typ[typ] {
		typ = "other" // a label value from the delivery, bounded to the types we know
	}
	rc.m.WithLabelValues(typ, result).Inc()
}

func (rc *Receiver) refuse(w http.ResponseWriter, status int, cause, msg string) {
	rc.count("", ResultRefused)
	ghlerror.Write(w, status, cause, msg)
}

func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		ghlerror.Write(w, http.StatusMethodNotAllowed, ghlerror.CauseMalformed, "webhook deliveries are POSTs")
		return
	}
	select {
	case rc.busy <- struct{}{}:
		defer func() { <-rc.busy }()
	default:
		w.Header().Set("Retry-After", retryAfter)
		ghlerror.Write(w, http.StatusTooManyRequests, ghlerror.CauseRateLimited, "too many webhook deliveries at once; GHL retries this one")
		return
	}
	// The body is bounded in size and in time: this listener may face the internet.
	ctl := http.NewResponseController(w)
	_ = ctl.SetReadDeadline(time.Now().Add(bodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	_ = ctl.SetReadDeadline(time.Time{})
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			rc.refuse(w, http.StatusRequestEntityTooLarge, ghlerror.CauseBodyTooLarge, "webhook body over 256 KiB")
		} else {
			rc.refuse(w, http.StatusRequestTimeout, ghlerror.CauseRequestTimeout, "webhook body not received within 10s")
		}
		return
	}
	if err := rc.verify(r.Header, body); err != nil {
		rc.refuse(w, http.StatusUnauthorized, ghlerror.CauseWebhookSignature, err.Error())
		return
	}
	var ev event
	var fields map[string]any
	if err := json.Unmarshal(body, &fields); err != nil {
		rc.refuse(w, http.StatusBadRequest, ghlerror.CauseMalformed, "webhook body is not a JSON object")
		return
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		rc.refuse(w, http.StatusBadRequest, ghlerror.CauseMalformed, "webhook type, locationId, timestamp or webhookId is not a string")
		return
	}
	// Every delivery GHL signs carries both: without them a signed body could be replayed
	// forever, each time invalidating and forwarded again.
	if ev.Timestamp == "" || ev.WebhookID == "" {
		rc.refuse(w, http.StatusUnauthorized, ghlerror.CauseWebhookSignature, "webhook delivery carries no timestamp or no webhookId")
		return
	}
	at, err := time.Parse(time.RFC3339Nano, ev.Timestamp)
	if err != nil {
		rc.refuse(w, http.StatusBadRequest, ghlerror.CauseMalformed, "webhook timestamp is not ISO 8601")
		return
	}
	age := rc.cfg.Now().Sub(at)
	fresh := age <= rc.cfg.MaxAge && age >= -rc.cfg.MaxAge
	ctx := r.Context()
	outcome, err := rc.seen.claim(ctx, ev.WebhookID, fresh)
	if err != nil {
		rc.cfg.Log.Warn("redis: remembering a webhook id; this replica alone decides whether it was seen", "err", err)
	}
	switch outcome {
	case tooOld:
		rc.refuse(w, http.StatusUnauthorized, ghlerror.CauseWebhookSignature,
			fmt.Sprintf("webhook timestamp is %s away from now, more than webhooks.max_age", age.Round(time.Second)))
		return
	case duplicate:
		rc.count(ev.Type, ResultDuplicate)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	result := ResultUnknown
	if rc.typ[ev.Type] {
		result = ResultApplied
		rc.apply(context.WithoutCancel(ctx), ev, fields) // GHL hanging up must not halve it
	}
	rc.count(ev.Type, result)
	if rc.cfg.ForwardURL == "" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if !rc.forward(w, r, body) {
		// GHL resends only what was answered 429: its retry is to be forwarded.
		rc.seen.awaitRetry(context.WithoutCancel(ctx), ev.WebhookID)
	}
}

// verify checks the delivery's signature over the raw body: X-GHL-Signature (Ed25519)
// when present, else the legacy X-WH-Signature (RSA-SHA256, PKCS#1 v1.5) when a key for
// it is configured. GHL recommends exactly that order while it retires the legacy one.
func (rc *Receiver) verify(h http.Header, body []byte) error {
	if sig := h.Get("X-GHL-Signature"); sig != "" && sig != "N/A" {
		b, err := base64.StdEncoding.DecodeString(sig)
		if err != nil || !ed25519.Verify(rc.cfg.PublicKey, body, b) {
			return errors.New("X-GHL-Signature does not verify against webhooks.public_key")
		}
		return nil
	}
	if sig := h.Get("X-WH-Signature"); sig != "" && rc.cfg.LegacyKey != nil {
		b, err := base64.StdEncoding.DecodeString(sig)
		sum := sha256.Sum256(body)
		if err != nil || rsa.VerifyPKCS1v15(rc.cfg.LegacyKey, crypto.SHA256, sum[:], b) != nil {
			return errors.New("X-WH-Signature does not verify against webhooks.legacy_public_key")
		}
		return nil
	}
	return errors.New("webhook delivery carries no signature (X-GHL-Signature)")
}

// apply invalidates what the event changed: its entities for every credential (their tags
// are in every scope), its location's lists and searches for every scope of the location.
// A failed invalidation is retried by the stages themselves until Redis confirms it.
func (rc *Receiver) apply(ctx context.Context, ev event, fields map[string]any) {
	tags := tagsOf(rc.cfg.Routes, ev.Type, fields)
	if len(tags) == 0 {
		return
	}
	var scopes []string
	if rc.cfg.Locations != nil && ev.LocationID != "" {
		var err error
		if scopes, err = rc.cfg.Locations.Scopes(ctx, ev.LocationID); err != nil {
			rc.cfg.Log.Warn("redis: reading the scopes of a webhook's location; only this replica's are dropped", "err", err)
		}
	}
	var stored []string
	for _, t := range tags {
		if routes.IsEntityTag(t) {
			stored = append(stored, routes.ScopedTag(routes.EveryScope, t))
			continue
		}
		for _, s := range scopes {
			stored = append(stored, routes.ScopedTag(s, t))
		}
	}
	if err := rc.cfg.Invalidate(ctx, stored); err != nil {
		rc.cfg.Log.Warn("a webhook's invalidation is not confirmed by Redis yet; retried in the background", "type", ev.Type, "err", err)
	}
}

// forward passes the delivery on unchanged (body and headers, but the hop-by-hop ones and
// Accept-Encoding, so that the answer comes back decoded) and answers GHL with the app's
// answer. GHL resends a delivery only when it was answered 429, so when the app cannot
// take it now — no answer, a 429 or a 5xx — GHL gets a 429, and forward reports false:
// the retry is to be forwarded again. Any other answer is final for GHL, as it is for us.
func (rc *Receiver) forward(w http.ResponseWriter, r *http.Request, body []byte) bool {
	retry := func(msg string) bool {
		w.Header().Set("Retry-After", retryAfter)
		ghlerror.Write(w, http.StatusTooManyRequests, ghlerror.CauseUpstreamUnreachable, msg+"; GHL retries this delivery")
		return false
	}
	req, err := http.NewRequestWithContext(context.WithoutCancel(r.Context()), http.MethodPost, rc.cfg.ForwardURL, bytes.NewReader(body))
	if err != nil {
		return retry("webhooks.forward_url: " + err.Error())
	}
	hopheader.Copy(req.Header, r.Header)
	// Also not the sender's: its framing, its encodings (the answer comes back decoded),
	// and any Proxy-* header.
	for k := range req.Header {
		if k == "Content-Length" || k == "Host" || k == "Accept-Encoding" || strings.HasPrefix(k, "Proxy-") {
			delete(req.Header, k)
		}
	}
	resp, err := rc.cfg.Client.Do(req)
	if err != nil {
		return retry("the app's webhook receiver did not answer: " + shortErr(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		return retry(fmt.Sprintf("the app's webhook receiver answered %d", resp.StatusCode))
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(b)
	return true
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}
