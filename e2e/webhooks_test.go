package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
	"github.com/ghlproxy/ghlproxy/internal/poll"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/internal/sidecar"
	"github.com/ghlproxy/ghlproxy/webhook"
)

// The webhook issue's acceptance tests (issue 16): changes made in GHL itself — an edit in
// its UI — reach every replica's cache through GHL's signed webhooks within the bound of a
// write; forged, unsigned, stale and replayed deliveries change nothing; the app's own
// receiver gets each verified delivery once, byte for byte; webhooks.listen serves the
// receiver alone.

// standInKey makes a sidecar trust the stand-in's webhook key instead of GHL's.
var standInKey = "GHLPROXY_WEBHOOKS_PUBLIC_KEY=" + fakeghl.WebhookPublicKeyBase64()

// delivered waits for the stand-in's next delivery of typ after the first n deliveries
// and returns it with the count of deliveries so far.
func delivered(t *testing.T, fake *fakeghl.Server, n int, typ string) (fakeghl.WebhookDelivery, int) {
	t.Helper()
	var d fakeghl.WebhookDelivery
	var total int
	poll.Until(t, 10*time.Second, "the stand-in's "+typ+" delivery", func() bool {
		ds := fake.Stats().Webhooks.Deliveries
		total = len(ds)
		for _, x := range ds[min(n, len(ds)):] {
			if x.Type == typ {
				d = x
				return true
			}
		}
		return false
	})
	if d.Status/100 != 2 {
		t.Fatalf("%s delivery answered %d %s", typ, d.Status, d.Error)
	}
	return d, total
}

// readName reads contact id through r with token and returns its first name; cached says
// whether the answer was a hit.
func readName(t *testing.T, r *replica, token, id string) (name string, cached bool) {
	t.Helper()
	resp, c := getContact(t, r, token, id)
	return c.Contact.FirstName, isHit(resp)
}

// TestUIEditReachesEveryReplica is the webhook issue's first end-to-end test: a contact is
// cached on two replicas for two credentials of different scopes (a Location token and an
// agency's Company token), it is edited "in GHL's UI" (the stand-in's control endpoint),
// GHL's webhook reaches replica A, and both replicas serve the new name to both
// credentials within the bound of a write (1 s) of the delivery's answer.
func TestUIEditReachesEveryReplica(t *testing.T) {
	fake, up := startStandIn(t, unlimited())
	rdb := redistest.Start(t)
	rs := startCacheReplicas(t, 2, up.URL, rdb, standInKey)
	a, b := rs[0], rs[1]
	const loc = "loc-webhook"
	token := twinToken(loc, 0)
	agency := fakeghl.Token("Company", "agency-webhook", "")

	const rounds = 4
	ids := make([]string, rounds)
	for i := range ids {
		ids[i] = newContact(t, up.URL, token, map[string]any{"locationId": loc, "email": fmt.Sprintf("wh%d@example.com", i), "firstName": "old"})
	}
	fake.SetWebhookURL(a.URL + webhook.Path) // after the creates: only the edits are reported

	var worst time.Duration
	n := 0
	for i, id := range ids {
		// Warm both in-process layers for both credentials: the second read is a hit.
		for _, r := range rs {
			for _, tok := range []string{token, agency} {
				readName(t, r, tok, id)
				if name, hit := readName(t, r, tok, id); !hit || name != "old" {
					t.Fatalf("round %d: warming read: hit %v, name %q", i, hit, name)
				}
			}
		}
		name := fmt.Sprintf("ui-%d", i)
		if _, err := fake.Edit("contacts", id, map[string]any{"firstName": name}, false); err != nil {
			t.Fatal(err)
		}
		var d fakeghl.WebhookDelivery
		d, n = delivered(t, fake, n, "ContactUpdate")
		if d.Status != http.StatusNoContent {
			t.Fatalf("round %d: delivery answered %d, want 204 (no forward URL)", i, d.Status)
		}
		// Every replica, every credential: the new name within the bound, and never the
		// old one after it.
		for _, r := range []*replica{b, a} {
			for _, tok := range []string{token, agency} {
				var last string
				var sighted time.Time // when the read that showed the new name ended
				_, ok := poll.Within(coherenceBound+500*time.Millisecond, func() bool {
					last, _ = readName(t, r, tok, id)
					sighted = time.Now()
					return last == name
				})
				if !ok {
					t.Fatalf("round %d: %s still serves %q %s after the delivery", i, replicaName(r, a), last, time.Since(d.Answered))
				}
				worst = max(worst, sighted.Sub(d.Answered))
				if got, _ := readName(t, r, tok, id); got != name {
					t.Fatalf("round %d: %s served %q after %q", i, replicaName(r, a), got, name)
				}
			}
		}
	}
	t.Logf("worst time from a delivery's answer to the new name, over %d rounds × 2 replicas × 2 credentials: %s", rounds, worst)
	if worst > coherenceBound {
		t.Errorf("a replica served an entry %s after GHL's webhook invalidated it; the bound is %s", worst, coherenceBound)
	}
	if v := testutil.ToFloat64(a.S.Metrics.Webhooks.WithLabelValues("ContactUpdate", webhook.ResultApplied)); v != rounds {
		t.Errorf("A counted %v ContactUpdate deliveries applied, want %d", v, rounds)
	}
	if v := testutil.ToFloat64(a.S.Metrics.Invalidations.WithLabelValues(metrics.SourceWebhook)); v != rounds {
		t.Errorf("A counted %v invalidations by webhook, want %d", v, rounds)
	}
}

// TestWebhookDropsLocationLists: lists and searches are cached per scope; a webhook names
// only a location. The scopes that read the location — a Location token (its
// authClassId) and an agency token whose search named it — lose their lists and searches
// on every replica when the location changes; another location's stay.
func TestWebhookDropsLocationLists(t *testing.T) {
	fake, up := startStandIn(t, unlimited())
	rdb := redistest.Start(t)
	rs := startCacheReplicas(t, 2, up.URL, rdb, standInKey)
	a, b := rs[0], rs[1]
	const loc, other = "loc-lists", "loc-lists-other"
	token, otherToken := twinToken(loc, 0), twinToken(other, 0)
	agency := fakeghl.Token("Company", "agency-lists", "")
	id := newContact(t, up.URL, token, map[string]any{"locationId": loc, "firstName": "Lou"})
	newContact(t, up.URL, otherToken, map[string]any{"locationId": other, "firstName": "Oth"})
	fake.SetWebhookURL(a.URL + webhook.Path)

	list := func(r *replica, tok, l string) (*http.Response, []byte) {
		t.Helper()
		resp, body := call(t, http.DefaultClient, "GET", r.URL+"/contacts/?locationId="+l, "", ghlHeaders(tok))
		if resp.StatusCode != 200 {
			t.Fatalf("list %s: %d %s", l, resp.StatusCode, body)
		}
		return resp, body
	}
	query := `{"locationId":"` + loc + `","pageLimit":10}`
	for _, step := range []func() *http.Response{
		func() *http.Response { r, _ := list(b, token, loc); return r },
		func() *http.Response { r, _ := list(b, otherToken, other); return r },
		func() *http.Response { r, _ := search(t, b, agency, query); return r },
	} {
		step()
		if resp := step(); !isHit(resp) {
			t.Fatalf("warming: Cache-Status %q, want a hit", cacheStatus(resp))
		}
	}
	if _, err := fake.Edit("contacts", id, map[string]any{"firstName": "Lulu"}, false); err != nil {
		t.Fatal(err)
	}
	delivered(t, fake, 0, "ContactUpdate")
	poll.Until(t, coherenceBound+500*time.Millisecond, "B's list and the agency's search to show the edit", func() bool {
		_, l := list(b, token, loc)
		_, s := call(t, http.DefaultClient, "POST", b.URL+"/contacts/search", query, ghlHeaders(agency))
		return bytes.Contains(l, []byte(`"Lulu"`)) && bytes.Contains(s, []byte(`"Lulu"`))
	})
	if resp, _ := list(b, otherToken, other); !isHit(resp) {
		t.Errorf("another location's list was dropped: Cache-Status %q", cacheStatus(resp))
	}
}

// TestRefusedDeliveriesChangeNothing: unsigned, forged (another key), tampered, stale and
// future deliveries are 401 in GHL's shape; the cache still serves what it held on every
// replica and the app's receiver gets nothing. A genuine delivery is applied and
// forwarded once; its replay, to either replica, is answered 2xx and does neither again.
func TestRefusedDeliveriesChangeNothing(t *testing.T) {
	_, up := startStandIn(t, unlimited())
	rdb := redistest.Start(t)
	var mu sync.Mutex
	var forwarded [][]byte
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		forwarded = append(forwarded, body)
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	defer app.Close()
	rs := startCacheReplicas(t, 2, up.URL, rdb, standInKey, "GHLPROXY_WEBHOOKS_FORWARD_URL="+app.URL)
	a, b := rs[0], rs[1]
	const loc = "loc-forged"
	token := twinToken(loc, 0)
	id := newContact(t, up.URL, token, map[string]any{"locationId": loc, "firstName": "Kept"})
	for _, r := range rs {
		readName(t, r, token, id)
	}

	event := func(ts time.Time, wid string) []byte {
		b, _ := json.Marshal(map[string]any{"type": "ContactUpdate", "locationId": loc, "id": id, "firstName": "Forged",
			"timestamp": ts.UTC().Format(time.RFC3339Nano), "webhookId": wid})
		return b
	}
	post := func(r *replica, body []byte, sig string) (int, []byte) {
		t.Helper()
		h := http.Header{"Content-Type": {"application/json"}}
		if sig != "" {
			h.Set("X-GHL-Signature", sig)
		}
		resp, out := call(t, http.DefaultClient, "POST", r.URL+webhook.Path, string(body), h)
		return resp.StatusCode, out
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	genuine := event(time.Now(), "wh-genuine")
	stale := event(time.Now().Add(-10*time.Minute), "wh-stale")
	future := event(time.Now().Add(10*time.Minute), "wh-future")
	tampered := bytes.Replace(genuine, []byte("Forged"), []byte("Forgex"), 1)
	for _, c := range []struct {
		name string
		body []byte
		sig  string
	}{
		{"unsigned", genuine, ""},
		{"signed by another key", genuine, base64.StdEncoding.EncodeToString(ed25519.Sign(otherKey, genuine))},
		{"tampered", tampered, fakeghl.SignWebhook(genuine)},
		{"stale", stale, fakeghl.SignWebhook(stale)},
		{"future", future, fakeghl.SignWebhook(future)},
	} {
		code, out := post(a, c.body, c.sig)
		if code != http.StatusUnauthorized || !ghlShaped(out, http.StatusUnauthorized) {
			t.Errorf("%s: %d %s, want GHL's 401", c.name, code, out)
		}
	}
	for _, r := range rs {
		if name, hit := readName(t, r, token, id); !hit || name != "Kept" {
			t.Errorf("after refused deliveries %s answers %q (hit %v), want the cached %q", replicaName(r, a), name, hit, "Kept")
		}
	}
	mu.Lock()
	if len(forwarded) != 0 {
		t.Errorf("refused deliveries reached the app %d times", len(forwarded))
	}
	mu.Unlock()
	if v := testutil.ToFloat64(a.S.Metrics.Invalidations.WithLabelValues(metrics.SourceWebhook)); v != 0 {
		t.Errorf("refused deliveries invalidated %v times", v)
	}
	if v := testutil.ToFloat64(a.S.Metrics.Webhooks.WithLabelValues("other", webhook.ResultRefused)); v != 5 {
		t.Errorf("webhooks_total{other,refused} = %v, want 5", v)
	}

	sig := fakeghl.SignWebhook(genuine)
	if code, out := post(a, genuine, sig); code != http.StatusOK {
		t.Fatalf("genuine delivery: %d %s, want the app's 200", code, out)
	}
	for i, r := range []*replica{a, b, a} {
		if code, out := post(r, genuine, sig); code/100 != 2 {
			t.Errorf("replay %d to %s: %d %s, want 2xx", i, replicaName(r, a), code, out)
		}
	}
	mu.Lock()
	if len(forwarded) != 1 || !bytes.Equal(forwarded[0], genuine) {
		t.Errorf("the app got %d deliveries, want the genuine one once", len(forwarded))
	}
	mu.Unlock()
	var applied, dups float64
	for _, r := range rs {
		applied += testutil.ToFloat64(r.S.Metrics.Invalidations.WithLabelValues(metrics.SourceWebhook))
		dups += testutil.ToFloat64(r.S.Metrics.Webhooks.WithLabelValues("ContactUpdate", webhook.ResultDuplicate))
	}
	if applied != 1 || dups != 3 {
		t.Errorf("%v invalidations by webhook and %v duplicates over both replicas, want 1 and 3", applied, dups)
	}
}

// TestForwardedOnceByteForByte: with webhooks.forward_url, the app's receiver gets every
// verified delivery exactly once and unchanged — the stand-in's signature still verifies
// over the bytes it got — although GHL (the stand-in) sends every event twice, and the
// same deliveries sent again to the other replica are not forwarded again.
func TestForwardedOnceByteForByte(t *testing.T) {
	fake, up := startStandIn(t, unlimited())
	rdb := redistest.Start(t)
	pub, _ := webhook.ParsePublicKey(fakeghl.WebhookPublicKey())
	var mu sync.Mutex
	got := map[string][]byte{}
	var dupes, unsigned int
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sig, _ := base64.StdEncoding.DecodeString(r.Header.Get("X-GHL-Signature"))
		var ev struct {
			WebhookID string `json:"webhookId"`
		}
		_ = json.Unmarshal(body, &ev)
		mu.Lock()
		defer mu.Unlock()
		if !ed25519.Verify(pub, body, sig) {
			unsigned++
		}
		if _, ok := got[ev.WebhookID]; ok {
			dupes++
		}
		got[ev.WebhookID] = body
	}))
	defer app.Close()
	rs := startCacheReplicas(t, 2, up.URL, rdb, standInKey, "GHLPROXY_WEBHOOKS_FORWARD_URL="+app.URL)
	a, b := rs[0], rs[1]
	fake.SetWebhookURL(a.URL + webhook.Path)
	if err := fake.SetFaults(fakeghl.Faults{WebhookDuplicateRate: 1}); err != nil {
		t.Fatal(err)
	}
	const loc = "loc-forward"
	token := twinToken(loc, 0)
	hdr := ghlHeaders(token)
	// Changes through the sidecar (B) and in the UI: each reported twice.
	resp, body := call(t, http.DefaultClient, "POST", b.URL+"/contacts/", `{"locationId":"`+loc+`","firstName":"Fwd"}`, hdr)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	id := contactIDOf(body)
	if resp, body := call(t, http.DefaultClient, "POST", b.URL+"/contacts/"+id+"/tags", `{"tags":["fwd"]}`, hdr); resp.StatusCode/100 != 2 {
		t.Fatalf("tags: %d %s", resp.StatusCode, body)
	}
	if _, err := fake.Edit("contacts", id, map[string]any{"lastName": "Ward"}, false); err != nil {
		t.Fatal(err)
	}
	const events = 3 // ContactCreate, ContactTagUpdate, ContactUpdate
	poll.Until(t, 10*time.Second, "every event delivered twice", func() bool {
		return len(fake.Stats().Webhooks.Deliveries) == 2*events
	})
	for _, d := range fake.Stats().Webhooks.Deliveries {
		want := http.StatusOK // the app's answer
		if d.Copy == 1 {
			want = http.StatusNoContent // a duplicate: answered by the sidecar
		}
		if d.Status != want {
			t.Errorf("%s copy %d answered %d, want %d", d.Type, d.Copy, d.Status, want)
		}
	}
	mu.Lock()
	if len(got) != events || dupes != 0 || unsigned != 0 {
		t.Errorf("the app got %d distinct deliveries, %d again, %d whose signature no longer verifies; want %d, 0, 0",
			len(got), dupes, unsigned, events)
	}
	bodies := make([][]byte, 0, len(got))
	for _, body := range got {
		bodies = append(bodies, body)
	}
	mu.Unlock()
	// The same deliveries to the other replica: duplicates there too.
	for _, body := range bodies {
		h := http.Header{"Content-Type": {"application/json"}, "X-GHL-Signature": {fakeghl.SignWebhook(body)}}
		if resp, out := call(t, http.DefaultClient, "POST", b.URL+webhook.Path, string(body), h); resp.StatusCode != http.StatusNoContent {
			t.Errorf("a delivery A took, sent to B: %d %s, want 204", resp.StatusCode, out)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != events || dupes != 0 {
		t.Errorf("after the resends to B the app got %d distinct deliveries and %d again", len(got), dupes)
	}
}

// TestWebhookEndsWriteReplay: a webhook ends the fold's replays of its entity's in-place
// writes (a retry after GHL reported a change is a new intent, and is sent), while a
// create's replay — a note on the contact — lasts its window: its retry is a duplicate
// whatever happened in between.
func TestWebhookEndsWriteReplay(t *testing.T) {
	fake, up := startStandIn(t, unlimited())
	rdb := redistest.Start(t)
	rs := startCacheReplicas(t, 2, up.URL, rdb, standInKey)
	a, b := rs[0], rs[1]
	const loc = "loc-replay"
	token := twinToken(loc, 0)
	hdr := ghlHeaders(token)
	id := newContact(t, up.URL, token, map[string]any{"locationId": loc, "firstName": "Rey"})
	put := func(r *replica) *http.Response {
		resp, body := call(t, http.DefaultClient, "PUT", r.URL+"/contacts/"+id, `{"dnd":true}`, hdr)
		if resp.StatusCode != 200 {
			t.Fatalf("PUT: %d %s", resp.StatusCode, body)
		}
		return resp
	}
	note := func(r *replica) *http.Response {
		resp, body := call(t, http.DefaultClient, "POST", r.URL+"/contacts/"+id+"/notes", `{"body":"call back"}`, hdr)
		if resp.StatusCode/100 != 2 {
			t.Fatalf("note: %d %s", resp.StatusCode, body)
		}
		return resp
	}
	// No receiver yet: the writes' own webhooks do not end their replays. The note first:
	// the PUT, a later write to the contact, would end a PUT's replay but not a create's.
	note(a)
	put(a)
	if resp := put(b); resp.Header.Get("X-Ghlproxy-Dedupe") != "replay" {
		t.Fatalf("retried PUT before any webhook: X-Ghlproxy-Dedupe %q, want replay", resp.Header.Get("X-Ghlproxy-Dedupe"))
	}
	fake.SetWebhookURL(a.URL + webhook.Path)
	if _, err := fake.Edit("contacts", id, map[string]any{"dnd": false}, false); err != nil {
		t.Fatal(err)
	}
	delivered(t, fake, 0, "ContactUpdate")
	delivered(t, fake, 0, "ContactDndUpdate")
	poll.Until(t, coherenceBound+500*time.Millisecond, "the retried PUT to be sent again", func() bool {
		return put(b).Header.Get("X-Ghlproxy-Dedupe") != "replay"
	})
	if resp := note(b); resp.Header.Get("X-Ghlproxy-Dedupe") != "replay" {
		t.Errorf("retried note create after the webhook: X-Ghlproxy-Dedupe %q, want replay", resp.Header.Get("X-Ghlproxy-Dedupe"))
	}
	st := fake.Stats()
	if puts := writesTo(st, id, "PUT"); puts != 2 {
		t.Errorf("GHL got %d PUTs, want 2 (the first, and the retry after the edit)", puts)
	}
	if c := contactOnStandIn(t, up.URL, token, id); c["dnd"] != true {
		t.Errorf("GHL holds dnd %v; the app's last write said true", c["dnd"])
	}
	if n := st.RouteCalls("POST /contacts/{contactId}/notes"); n != 1 {
		t.Errorf("GHL got %d note creates, want 1", n)
	}
}

// TestWebhookListenerServesOnlyTheReceiver: webhooks.listen is a listener of its own that
// answers the receiver's path and nothing else, so exposing it to GHL exposes no proxy,
// no admin endpoint and no metrics.
func TestWebhookListenerServesOnlyTheReceiver(t *testing.T) {
	fake, up := startStandIn(t, unlimited())
	wl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := startReplicaWith(t, testConfig(t, up.URL, standInKey), func(s *sidecar.Sidecar) { s.WebhookListener = wl })
	base := "http://" + wl.Addr().String()
	token := fakeghl.Token("Location", "loc-listen", "")
	id := newContact(t, up.URL, token, map[string]any{"locationId": "loc-listen", "firstName": "Lis"})
	readName(t, r, token, id)
	if name, hit := readName(t, r, token, id); name != "Lis" || !hit {
		t.Fatalf("before the edit: %q, hit %v; want the cached contact", name, hit)
	}
	fake.SetWebhookURL(base + webhook.Path)
	if _, err := fake.Edit("contacts", id, map[string]any{"firstName": "Tened"}, false); err != nil {
		t.Fatal(err)
	}
	if d, _ := delivered(t, fake, 0, "ContactUpdate"); d.Status != http.StatusNoContent {
		t.Fatalf("delivery to webhooks.listen: %d", d.Status)
	}
	if name, _ := readName(t, r, token, id); name != "Tened" {
		t.Errorf("after the delivery the proxy answers %q", name)
	}
	for _, p := range []string{"/contacts/" + id, "/_ghlproxy/stats", "/_ghlproxy/cache", "/metrics", "/healthz", "/"} {
		resp, body := call(t, http.DefaultClient, "GET", base+p, "", ghlHeaders(token))
		if resp.StatusCode != http.StatusNotFound || strings.Contains(string(body), id) {
			t.Errorf("GET %s on webhooks.listen: %d %s, want 404", p, resp.StatusCode, body)
		}
	}
}
