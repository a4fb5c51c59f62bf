package fakeghl_test

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/poll"
)

// delivery is one webhook the test receiver got, its signature checked.
type delivery struct {
	body  []byte
	event map[string]any
	at    time.Time
}

// receiver is a webhook receiver that verifies the stand-in's signature and hands each
// delivery to the test.
func receiver(t *testing.T, fake *fakeghl.Server) <-chan delivery {
	t.Helper()
	blk, _ := pem.Decode([]byte(fakeghl.WebhookPublicKey()))
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub := k.(ed25519.PublicKey)
	got := make(chan delivery, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sig, err := base64.StdEncoding.DecodeString(r.Header.Get("X-GHL-Signature"))
		if err != nil || !ed25519.Verify(pub, body, sig) {
			t.Errorf("delivery %s: X-GHL-Signature does not verify", body)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		d := delivery{body: body, at: time.Now()}
		if err := json.Unmarshal(body, &d.event); err != nil {
			t.Errorf("delivery %s: %v", body, err)
		}
		got <- d
	}))
	t.Cleanup(srv.Close)
	fake.SetWebhookURL(srv.URL)
	return got
}

func next(t *testing.T, got <-chan delivery) delivery {
	t.Helper()
	select {
	case d := <-got:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no webhook delivery within 10 s")
		return delivery{}
	}
}

// Changes made through the API are reported by the events GHL sends for them, signed, with
// the entity's fields, its location, a unique webhookId and a current timestamp.
func TestWebhooksOfAPIChanges(t *testing.T) {
	fake, ts := start(t, fakeghl.Config{})
	got := receiver(t, fake)
	c := newClient(t, ts, fakeghl.Token("Location", "loc1", ""))

	created := c.expect(201, "POST", "/contacts/", map[string]any{"firstName": "Ann", "email": "ann@example.com"})
	id := created["contact"].(map[string]any)["id"].(string)
	c.expect(200, "PUT", "/contacts/"+id, map[string]any{"lastName": "Lee", "tags": []string{"vip"}, "dnd": true})
	c.expect(201, "POST", "/contacts/"+id+"/tags", map[string]any{"tags": []string{"new"}})
	opp := c.expect(201, "POST", "/opportunities/", map[string]any{"name": "Deal", "contactId": id, "pipelineId": "p1"})
	oid := opp["opportunity"].(map[string]any)["id"].(string)
	c.expect(200, "PUT", "/opportunities/"+oid, map[string]any{"monetaryValue": 10})
	c.expect(200, "PUT", "/opportunities/"+oid+"/status", map[string]any{"status": "won"})
	c.expect(200, "DELETE", "/opportunities/"+oid, nil)
	c.expect(200, "DELETE", "/contacts/"+id, nil)

	want := []struct{ typ, id string }{
		{"ContactCreate", id},
		{"ContactUpdate", id}, {"ContactTagUpdate", id}, {"ContactDndUpdate", id},
		{"ContactTagUpdate", id},
		{"OpportunityCreate", oid},
		{"OpportunityUpdate", oid}, {"OpportunityMonetaryValueUpdate", oid},
		{"OpportunityStatusUpdate", oid},
		{"OpportunityDelete", oid},
		{"ContactDelete", id},
	}
	ids := map[string]bool{}
	for i, w := range want {
		d := next(t, got)
		ev := d.event
		if ev["type"] != w.typ || ev["id"] != w.id || ev["locationId"] != "loc1" {
			t.Fatalf("event %d: %s, want %s of %s in loc1", i, d.body, w.typ, w.id)
		}
		wid, _ := ev["webhookId"].(string)
		if wid == "" || ids[wid] {
			t.Errorf("event %d: webhookId %q missing or repeated", i, wid)
		}
		ids[wid] = true
		if w.typ == "ContactUpdate" && (ev["lastName"] != "Lee" || ev["firstName"] != "Ann") {
			t.Errorf("ContactUpdate %s: want the contact's fields after the change", d.body)
		}
		at, err := time.Parse(time.RFC3339Nano, ev["timestamp"].(string))
		if err != nil || time.Since(at) > time.Minute || time.Until(at) > time.Second {
			t.Errorf("event %d: timestamp %v (%v), want now", i, ev["timestamp"], err)
		}
	}
	// A delivery is recorded once its answer is read, after the receiver handed it over.
	poll.Until(t, 10*time.Second, "the last delivery's record", func() bool {
		return len(fake.Stats().Webhooks.Deliveries) == len(want)
	})
	st := fake.Stats().Webhooks
	if st.Events != int64(len(want)) || len(st.Deliveries) != len(want) || st.Dropped != 0 {
		t.Fatalf("stats: %d events, %d deliveries, %d dropped; want %d, %d, 0", st.Events, len(st.Deliveries), st.Dropped, len(want), len(want))
	}
	for _, d := range st.Deliveries {
		if d.Status != http.StatusOK || d.Answered.Before(d.Sent) {
			t.Errorf("delivery %+v: want the receiver's 200", d)
		}
	}
}

// An edit "in GHL's UI" changes the entity without an API call and is reported by webhook
// with the entity's fields after the change.
func TestEditIsReportedByWebhook(t *testing.T) {
	fake, ts := start(t, fakeghl.Config{})
	got := receiver(t, fake)
	c := newClient(t, ts, fakeghl.Token("Location", "loc1", ""))
	created := c.expect(201, "POST", "/contacts/", map[string]any{"firstName": "Ann"})
	id := created["contact"].(map[string]any)["id"].(string)
	next(t, got) // ContactCreate
	calls := fake.Stats().Calls

	resp, err := http.Post(ts.URL+"/_fake/edit", "application/json",
		strings.NewReader(`{"resource":"contacts","id":"`+id+`","fields":{"firstName":"Bea"}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /_fake/edit: %d", resp.StatusCode)
	}
	d := next(t, got)
	if d.event["type"] != "ContactUpdate" || d.event["firstName"] != "Bea" || d.event["id"] != id {
		t.Fatalf("edit reported as %s", d.body)
	}
	if n := fake.Stats().Calls; n != calls {
		t.Errorf("the edit counted as %d API calls", n-calls)
	}
	if got := c.expect(200, "GET", "/contacts/"+id, nil); got["contact"].(map[string]any)["firstName"] != "Bea" {
		t.Errorf("after the edit the API answers %v", got)
	}
	if _, err := fake.Edit("contacts", "nope", nil, false); err == nil {
		t.Errorf("editing a missing contact succeeded")
	}
	if _, err := fake.Edit("contacts", id, nil, true); err != nil {
		t.Fatal(err)
	}
	if d := next(t, got); d.event["type"] != "ContactDelete" {
		t.Fatalf("delete in the UI reported as %s", d.body)
	}
}

// Duplicates, drops and delay are faults switched at run time.
func TestWebhookFaults(t *testing.T) {
	fake, ts := start(t, fakeghl.Config{})
	got := receiver(t, fake)
	c := newClient(t, ts, fakeghl.Token("Location", "loc1", ""))
	setFaults := func(body string) {
		t.Helper()
		resp, err := http.Post(ts.URL+"/_fake/faults", "application/json", strings.NewReader(body))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("faults %s: %v %v", body, resp, err)
		}
		resp.Body.Close()
	}

	setFaults(`{"webhookDuplicateRate":1}`)
	c.expect(201, "POST", "/contacts/", map[string]any{"firstName": "Dup"})
	a, b := next(t, got), next(t, got)
	if string(a.body) != string(b.body) {
		t.Fatalf("a duplicate differs from its original:\n%s\n%s", a.body, b.body)
	}

	setFaults(`{"webhookDuplicateRate":0,"webhookDropRate":1}`)
	c.expect(201, "POST", "/contacts/", map[string]any{"firstName": "Dropped"})
	setFaults(`{"webhookDropRate":0,"webhookDelay":"300ms"}`)
	changed := time.Now()
	c.expect(201, "POST", "/contacts/", map[string]any{"firstName": "Late"})
	d := next(t, got)
	if d.event["firstName"] != "Late" {
		t.Fatalf("after the dropped event the receiver got %s, want the late one", d.body)
	}
	if waited := d.at.Sub(changed); waited < 300*time.Millisecond {
		t.Errorf("delivered %s after the change, want at least the 300ms delay", waited)
	}
	if st := fake.Stats().Webhooks; st.Dropped != 1 || st.Events != 3 {
		t.Errorf("stats: %d events, %d dropped; want 3 and 1", st.Events, st.Dropped)
	}
	resp, err := http.Post(ts.URL+"/_fake/faults", "application/json", strings.NewReader(`{"webhookDropRate":2}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("webhookDropRate 2 accepted: %d", resp.StatusCode)
	}
}

// POST /_fake/webhooks/send delivers any event signed, adding webhookId and timestamp.
func TestSendWebhook(t *testing.T) {
	fake, ts := start(t, fakeghl.Config{})
	got := receiver(t, fake)
	resp, err := http.Post(ts.URL+"/_fake/webhooks/send", "application/json",
		strings.NewReader(`{"type":"InboundMessage","locationId":"loc1","conversationId":"cv1"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("send: %d", resp.StatusCode)
	}
	d := next(t, got)
	if d.event["type"] != "InboundMessage" || d.event["webhookId"] == nil || d.event["timestamp"] == nil {
		t.Fatalf("sent %s", d.body)
	}
	fake.SetWebhookURL("")
	if err := fake.SendWebhook([]byte(`{"type":"X"}`)); err == nil {
		t.Errorf("sending with no receiver set succeeded")
	}
}
