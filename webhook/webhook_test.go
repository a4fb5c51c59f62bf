package webhook

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/routes"
)

// GHL's published keys parse, in every form the official Node SDK's verifier accepts.
func TestPublicKeyForms(t *testing.T) {
	ghl, err := ParsePublicKey(GHLPublicKey)
	if err != nil {
		t.Fatalf("GHL's published Ed25519 key: %v", err)
	}
	if _, err := ParseLegacyPublicKey(GHLLegacyPublicKey); err != nil {
		t.Fatalf("GHL's published RSA key: %v", err)
	}
	der, _ := x509.MarshalPKIXPublicKey(ghl)
	forms := map[string]string{
		"PEM":                  GHLPublicKey,
		"PEM with \\n escapes": strings.ReplaceAll(GHLPublicKey, "\n", `\n`),
		"base64 DER":           base64.StdEncoding.EncodeToString(der),
		"raw base64":           base64.StdEncoding.EncodeToString(ghl),
		"raw base64 unpadded":  base64.RawStdEncoding.EncodeToString(ghl),
		"raw hex":              hex.EncodeToString(ghl),
		"raw hex, spaced":      "  " + hex.EncodeToString(ghl) + "\n",
	}
	for name, s := range forms {
		k, err := ParsePublicKey(s)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !k.Equal(ghl) {
			t.Errorf("%s: parsed another key", name)
		}
	}
	for name, s := range map[string]string{
		"RSA key as Ed25519": GHLLegacyPublicKey,
		"too short":          base64.StdEncoding.EncodeToString(ghl[:31]),
		"not a key":          "hello",
		"broken PEM":         "-----BEGIN PUBLIC KEY-----\nnope",
	} {
		if _, err := ParsePublicKey(s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseLegacyPublicKey(GHLPublicKey); err == nil {
		t.Errorf("an Ed25519 key accepted as the legacy RSA key")
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rk.PublicKey)})
	if k, err := ParseLegacyPublicKey(string(pkcs1)); err != nil || !k.Equal(&rk.PublicKey) {
		t.Errorf("PKCS#1 PEM: %v", err)
	}
}

// bench is one receiver (or several sharing a Redis) and what reached Invalidate and the
// app's own receiver.
type bench struct {
	t    *testing.T
	key  ed25519.PrivateKey
	rsa  *rsa.PrivateKey
	now  time.Time
	mu   sync.Mutex
	tags [][]string // one entry per Invalidate call
	m    *metrics.Metrics
}

func newBench(t *testing.T) *bench {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	return &bench{t: t, key: key, now: time.Now(), m: metrics.New()}
}

func (b *bench) receiver(mod func(*Config)) *Receiver {
	b.t.Helper()
	cfg := Config{
		PublicKey: b.key.Public().(ed25519.PublicKey),
		Routes:    routes.New(),
		Invalidate: func(_ context.Context, tags []string) error {
			b.mu.Lock()
			b.tags = append(b.tags, tags)
			b.mu.Unlock()
			return nil
		},
		Metrics: b.m,
		Now:     func() time.Time { return b.now },
	}
	if b.rsa != nil {
		cfg.LegacyKey = &b.rsa.PublicKey
	}
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	return r
}

func (b *bench) invalidations() [][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.tags)
}

// event is a ContactUpdate as GHL sends it, stamped now.
func (b *bench) event(id string, extra ...string) []byte {
	ev := map[string]any{
		"type": "ContactUpdate", "locationId": "loc-1", "id": "c-1", "firstName": "Ann",
		"timestamp": b.now.UTC().Format(time.RFC3339Nano), "webhookId": id,
	}
	for i := 0; i+1 < len(extra); i += 2 {
		ev[extra[i]] = extra[i+1]
	}
	out, _ := json.Marshal(ev)
	return out
}

func (b *bench) sign(body []byte) string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(b.key, body))
}

// deliver POSTs body with headers (name, value pairs) and returns the answer.
func deliver(t *testing.T, h http.Handler, body []byte, headers ...string) (int, []byte) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Code, w.Body.Bytes()
}

func count(m *metrics.Metrics, typ, result string) float64 {
	return testutil.ToFloat64(m.Webhooks.WithLabelValues(typ, result))
}

// A verified ContactUpdate drops the contact for every scope, and its location's lists and
// searches for every scope known to belong to the location (and no other's).
func TestVerifiedDeliveryInvalidates(t *testing.T) {
	b := newBench(t)
	locs := NewLocations(nil, "")
	ctx := context.Background()
	locs.Note(ctx, "scopeA", "loc-1")
	locs.Note(ctx, "scopeB", "loc-1")
	locs.Note(ctx, "scopeC", "loc-2")
	rc := b.receiver(func(c *Config) { c.Locations = locs })

	body := b.event("wh-1")
	if code, out := deliver(t, rc, body, "X-GHL-Signature", b.sign(body)); code != http.StatusNoContent {
		t.Fatalf("verified delivery: %d %s, want 204", code, out)
	}
	got := b.invalidations()
	if len(got) != 1 {
		t.Fatalf("%d invalidations, want 1", len(got))
	}
	want := []string{routes.ScopedTag(routes.EveryScope, "contacts/c-1")}
	for _, s := range []string{"scopeA", "scopeB"} {
		want = append(want, routes.ScopedTag(s, "contacts"))
	}
	for _, tag := range want {
		if !slices.Contains(got[0], tag) {
			t.Errorf("invalidated %v, missing %s", got[0], tag)
		}
	}
	if slices.Contains(got[0], routes.ScopedTag("scopeC", "contacts")) {
		t.Errorf("another location's lists were dropped")
	}
	if n := count(b.m, "ContactUpdate", ResultApplied); n != 1 {
		t.Errorf("webhooks_total{ContactUpdate,applied} = %v, want 1", n)
	}
}

// Unsigned, forged, tampered, stale and future deliveries are refused with GHL's error
// shape, and change nothing; nothing is forwarded.
func TestRefusedDeliveriesChangeNothing(t *testing.T) {
	b := newBench(t)
	var forwarded atomic.Int32
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { forwarded.Add(1) }))
	defer app.Close()
	rc := b.receiver(func(c *Config) { c.ForwardURL = app.URL })
	_, other, _ := ed25519.GenerateKey(rand.Reader)

	body := b.event("wh-r")
	stale := b.event("wh-stale", "timestamp", b.now.Add(-6*time.Minute).UTC().Format(time.RFC3339Nano))
	future := b.event("wh-future", "timestamp", b.now.Add(6*time.Minute).UTC().Format(time.RFC3339))
	tampered := bytes.Replace(body, []byte("Ann"), []byte("Bob"), 1)
	cases := []struct {
		name    string
		body    []byte
		headers []string
		status  int
	}{
		{"unsigned", body, nil, 401},
		{"N/A signature", body, []string{"X-GHL-Signature", "N/A"}, 401},
		{"not base64", body, []string{"X-GHL-Signature", "%%%"}, 401},
		{"another key", body, []string{"X-GHL-Signature", base64.StdEncoding.EncodeToString(ed25519.Sign(other, body))}, 401},
		{"tampered body", tampered, []string{"X-GHL-Signature", b.sign(body)}, 401},
		{"legacy header without a legacy key", body, []string{"X-WH-Signature", b.sign(body)}, 401},
		{"stale", stale, []string{"X-GHL-Signature", b.sign(stale)}, 401},
		{"future", future, []string{"X-GHL-Signature", b.sign(future)}, 401},
		{"not JSON", []byte("hello"), []string{"X-GHL-Signature", b.sign([]byte("hello"))}, 400},
	}
	for _, c := range cases {
		code, out := deliver(t, rc, c.body, c.headers...)
		if code != c.status {
			t.Errorf("%s: %d %s, want %d", c.name, code, out, c.status)
			continue
		}
		var shape struct {
			StatusCode int    `json:"statusCode"`
			Message    string `json:"message"`
		}
		if json.Unmarshal(out, &shape) != nil || shape.StatusCode != c.status || shape.Message == "" {
			t.Errorf("%s: body %s is not GHL's error shape", c.name, out)
		}
	}
	if got := b.invalidations(); len(got) != 0 {
		t.Errorf("refused deliveries invalidated %v", got)
	}
	if n := forwarded.Load(); n != 0 {
		t.Errorf("refused deliveries were forwarded %d times", n)
	}
	if n := count(b.m, "other", ResultRefused); n != float64(len(cases)) {
		t.Errorf("webhooks_total{other,refused} = %v, want %d", n, len(cases))
	}
	// The refused ids were not remembered: the genuine delivery is applied.
	if code, _ := deliver(t, rc, body, "X-GHL-Signature", b.sign(body)); code != http.StatusOK {
		t.Errorf("the genuine delivery after the refusals: %d, want the app's 200", code)
	}
	if len(b.invalidations()) != 1 || forwarded.Load() != 1 {
		t.Errorf("genuine delivery: %d invalidations, %d forwards, want 1 and 1", len(b.invalidations()), forwarded.Load())
	}
}

// The legacy X-WH-Signature is checked against the legacy key when it is the only
// signature; X-GHL-Signature, when present, decides.
func TestLegacySignature(t *testing.T) {
	b := newBench(t)
	b.rsa, _ = rsa.GenerateKey(rand.Reader, 2048)
	rc := b.receiver(nil)
	body := b.event("wh-legacy")
	sum := sha256.Sum256(body)
	sig, _ := rsa.SignPKCS1v15(rand.Reader, b.rsa, crypto.SHA256, sum[:])
	legacy := base64.StdEncoding.EncodeToString(sig)

	if code, out := deliver(t, rc, body, "X-GHL-Signature", base64.StdEncoding.EncodeToString(make([]byte, 64)), "X-WH-Signature", legacy); code != 401 {
		t.Fatalf("bad X-GHL-Signature beside a good legacy one: %d %s, want 401", code, out)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	bad, _ := rsa.SignPKCS1v15(rand.Reader, other, crypto.SHA256, sum[:])
	if code, _ := deliver(t, rc, body, "X-WH-Signature", base64.StdEncoding.EncodeToString(bad)); code != 401 {
		t.Fatalf("legacy signature by another key: %d, want 401", code)
	}
	if len(b.invalidations()) != 0 {
		t.Fatalf("refused legacy deliveries invalidated")
	}
	if code, out := deliver(t, rc, body, "X-WH-Signature", legacy); code != http.StatusNoContent {
		t.Fatalf("valid legacy signature: %d %s, want 204", code, out)
	}
	if len(b.invalidations()) != 1 {
		t.Fatalf("valid legacy delivery: %d invalidations, want 1", len(b.invalidations()))
	}
}

// A webhookId seen by one replica is a duplicate on another sharing its Redis: answered
// 2xx, applied and forwarded once.
func TestDuplicatesAcrossReplicas(t *testing.T) {
	rdb := redistest.Start(t)
	b := newBench(t)
	var mu sync.Mutex
	var got [][]byte
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, body)
		mu.Unlock()
	}))
	defer app.Close()
	var replicas []*Receiver
	for range 2 {
		c := redis.NewClient(&redis.Options{Addr: rdb.Addr()})
		t.Cleanup(func() { c.Close() })
		replicas = append(replicas, b.receiver(func(cfg *Config) { cfg.Redis = c; cfg.ForwardURL = app.URL }))
	}
	body := b.event("wh-dup")
	sig := b.sign(body)
	for i, want := range []int{200, 204, 204} {
		code, out := deliver(t, replicas[i%2], body, "X-GHL-Signature", sig)
		if code != want {
			t.Fatalf("delivery %d: %d %s, want %d", i, code, out, want)
		}
	}
	if n := len(b.invalidations()); n != 1 {
		t.Errorf("%d invalidations, want 1", n)
	}
	if len(got) != 1 || !bytes.Equal(got[0], body) {
		t.Errorf("the app got %d deliveries, want 1 byte for byte", len(got))
	}
	if n := count(b.m, "ContactUpdate", ResultDuplicate); n != 2 {
		t.Errorf("webhooks_total{ContactUpdate,duplicate} = %v, want 2", n)
	}
}

// GHL resends a delivery only when it was answered 429, every 10 minutes with its original
// timestamp. A delivery the app's receiver could not take (a 5xx, or no answer) is answered
// 429, and GHL's retry — older than webhooks.max_age by then — is processed again, on any
// replica; an answer GHL treats as final (a 4xx) is passed on and the delivery is done.
func TestRefusedForwardIsRetried(t *testing.T) {
	rdb := redistest.Start(t)
	b := newBench(t)
	var mu sync.Mutex
	status := http.StatusServiceUnavailable
	var headers []http.Header
	var bodies [][]byte
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		headers = append(headers, r.Header.Clone())
		bodies = append(bodies, body)
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(status)
		fmt.Fprint(w, "app says ", status)
	}))
	defer app.Close()
	setStatus := func(s int) { mu.Lock(); status = s; mu.Unlock() }
	forwards := func() int { mu.Lock(); defer mu.Unlock(); return len(bodies) }
	var replicas []*Receiver
	for range 2 {
		c := redis.NewClient(&redis.Options{Addr: rdb.Addr()})
		t.Cleanup(func() { c.Close() })
		replicas = append(replicas, b.receiver(func(cfg *Config) { cfg.Redis = c; cfg.ForwardURL = app.URL }))
	}

	body := b.event("wh-retry")
	sig := b.sign(body)
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("X-GHL-Signature", sig)
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "dropped")
	w := httptest.NewRecorder()
	replicas[0].ServeHTTP(w, req)
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Fatalf("app's 503: GHL got %d (Retry-After %q) %s, want 429 so that GHL retries", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	// GHL's retry, 10 minutes later, to the other replica; the app takes it.
	b.now = b.now.Add(10*time.Minute + 7*time.Second)
	setStatus(http.StatusOK)
	if code, out := deliver(t, replicas[1], body, "X-GHL-Signature", sig, "X-Custom", "kept"); code != http.StatusOK {
		t.Fatalf("GHL's retry: %d %s, want the app's 200", code, out)
	}
	if code, _ := deliver(t, replicas[0], body, "X-GHL-Signature", sig); code != http.StatusNoContent {
		t.Fatalf("a repeat after the app took it: %d, want 204", code)
	}
	if n := forwards(); n != 2 {
		t.Fatalf("the app got %d deliveries, want 2 (the refused one and its retry)", n)
	}
	if n := len(b.invalidations()); n != 2 {
		t.Errorf("%d invalidations, want 2 (the delivery and GHL's retry)", n)
	}
	mu.Lock()
	for i, h := range headers {
		if !bytes.Equal(bodies[i], body) || h.Get("X-GHL-Signature") != sig || h.Get("X-Custom") != "kept" {
			t.Errorf("forward %d changed the delivery: body %s, headers %v", i, bodies[i], h)
		}
	}
	if h := headers[0]; h.Get("X-Hop") != "" {
		t.Errorf("a header named in Connection was forwarded: %v", h)
	}
	mu.Unlock()

	// A 4xx is final for GHL: passed on, and the delivery is done.
	setStatus(http.StatusBadRequest)
	other := b.event("wh-final")
	if code, out := deliver(t, replicas[0], other, "X-GHL-Signature", b.sign(other)); code != http.StatusBadRequest || string(out) != "app says 400" {
		t.Fatalf("app's 400: GHL got %d %q", code, out)
	}
	if code, _ := deliver(t, replicas[1], other, "X-GHL-Signature", b.sign(other)); code != http.StatusNoContent || forwards() != 3 {
		t.Fatalf("a repeat of a delivery answered 400: %d, %d forwards, want 204 and no new forward", code, forwards())
	}

	// No answer at all: 429 too.
	app.Close()
	gone := b.event("wh-gone")
	if code, _ := deliver(t, replicas[0], gone, "X-GHL-Signature", b.sign(gone)); code != http.StatusTooManyRequests {
		t.Fatalf("app unreachable: GHL got %d, want 429", code)
	}
}

// A signed delivery without a timestamp or a webhookId could be replayed forever: refused.
// So is a stale one whose id the sidecar never answered 429, and one over the size bound.
func TestUnreplayableDeliveriesOnly(t *testing.T) {
	b := newBench(t)
	rc := b.receiver(nil)
	cases := []struct {
		name   string
		body   []byte
		status int
	}{
		{"no timestamp", b.event("wh-a", "timestamp", ""), 401},
		{"no webhookId", b.event("", "id", "c-9"), 401},
		{"timestamp not a string", []byte(`{"type":"ContactUpdate","locationId":"l","id":"c","webhookId":"wh-b","timestamp":12}`), 400},
		{"stale, never answered 429", b.event("wh-c", "timestamp", b.now.Add(-time.Hour).UTC().Format(time.RFC3339Nano)), 401},
		{"over 256 KiB", b.event("wh-d", "firstName", strings.Repeat("x", MaxBody)), 413},
	}
	for _, c := range cases {
		if code, out := deliver(t, rc, c.body, "X-GHL-Signature", b.sign(c.body)); code != c.status {
			t.Errorf("%s: %d %s, want %d", c.name, code, out, c.status)
		}
	}
	if got := b.invalidations(); len(got) != 0 {
		t.Errorf("refused deliveries invalidated %v", got)
	}
}

// Types the sidecar does not apply are answered 2xx and counted, not refused.
func TestUnknownTypesAreCounted(t *testing.T) {
	b := newBench(t)
	rc := b.receiver(nil)
	body := b.event("wh-unknown", "type", "LocationUpdate")
	if code, _ := deliver(t, rc, body, "X-GHL-Signature", b.sign(body)); code != http.StatusNoContent {
		t.Fatalf("unknown type: %d, want 204", code)
	}
	if len(b.invalidations()) != 0 {
		t.Errorf("an unknown type invalidated")
	}
	if n := count(b.m, "other", ResultUnknown); n != 1 {
		t.Errorf("webhooks_total{other,unknown} = %v, want 1", n)
	}
}

// Every documented event maps, through routes that exist in the table as writes, to at
// least one tag, and to its entity's tag when it names one.
func TestEveryEventMapsToTheRouteTable(t *testing.T) {
	table := routes.New()
	want := []string{"ContactCreate", "ContactUpdate", "ContactDelete", "ContactTagUpdate", "ContactDndUpdate",
		"OpportunityCreate", "OpportunityUpdate", "OpportunityDelete", "OpportunityStatusUpdate",
		"OpportunityStageUpdate", "OpportunityMonetaryValueUpdate", "OpportunityAssignedToUpdate",
		"AppointmentCreate", "AppointmentUpdate", "AppointmentDelete", "TaskCreate", "TaskComplete", "TaskDelete",
		"NoteCreate", "NoteUpdate", "NoteDelete", "InboundMessage", "OutboundMessage", "ConversationUnreadUpdate"}
	for _, typ := range want {
		effects, ok := events[typ]
		if !ok {
			t.Errorf("%s is not mapped", typ)
			continue
		}
		ev := map[string]any{"id": "e1", "contactId": "c1", "conversationId": "v1",
			"appointment": map[string]any{"id": "a1", "contactId": "c1"}}
		for _, e := range effects {
			if e.entity != "" {
				continue
			}
			method, template, _ := strings.Cut(e.route, " ")
			r := table.Lookup(method, template)
			if r == nil || r.Policy != routes.Write {
				t.Errorf("%s: %s is not a write of the route table", typ, e.route)
			}
			for param, f := range e.params {
				if !strings.Contains(template, "{"+param+"}") {
					t.Errorf("%s: %s has no parameter %s", typ, e.route, param)
				}
				if field(ev, f) == "" {
					t.Errorf("%s: the sample event lacks %s", typ, f)
				}
			}
		}
		tags := tagsOf(table, typ, ev)
		if len(tags) == 0 {
			t.Errorf("%s invalidates nothing", typ)
		}
		if strings.HasPrefix(typ, "Contact") && typ != "ContactCreate" && !slices.Contains(tags, "contacts/e1") {
			t.Errorf("%s: tags %v lack the contact's own", typ, tags)
		}
		if strings.HasPrefix(typ, "Opportunity") && typ != "OpportunityCreate" && !slices.Contains(tags, "opportunities/e1") {
			t.Errorf("%s: tags %v lack the opportunity's own", typ, tags)
		}
		if (strings.HasPrefix(typ, "Task") || strings.HasPrefix(typ, "Note") || strings.HasPrefix(typ, "Appointment")) &&
			!slices.Contains(tags, "contacts/c1") {
			t.Errorf("%s: tags %v lack the contact's", typ, tags)
		}
	}
	if len(events) != len(want) {
		t.Errorf("events maps %d types, the test knows %d", len(events), len(want))
	}
	// An event that lacks the id it needs says nothing of an entity.
	if tags := tagsOf(table, "ContactUpdate", map[string]any{}); slices.ContainsFunc(tags, routes.IsEntityTag) {
		t.Errorf("ContactUpdate without an id invalidated an entity: %v", tags)
	}
}

// Two registries sharing a Redis know each other's scopes of a location.
func TestLocationsAreShared(t *testing.T) {
	rdb := redistest.Start(t)
	ctx := context.Background()
	var regs []*Locations
	for range 2 {
		c := redis.NewClient(&redis.Options{Addr: rdb.Addr()})
		t.Cleanup(func() { c.Close() })
		regs = append(regs, NewLocations(c, ""))
	}
	regs[0].Note(ctx, "scopeA", "loc-9")
	regs[1].Note(ctx, "scopeB", "loc-9")
	got, err := regs[1].Scopes(ctx, "loc-9")
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []string{"scopeA", "scopeB"}) {
		t.Fatalf("scopes of loc-9 on the second replica: %v %v, want both", got, err)
	}
	keys, _ := rdb.Do("KEYS", "*")
	if strings.Contains(keys, "loc-9") {
		t.Errorf("a location id is readable in Redis key names: %s", keys)
	}
}
