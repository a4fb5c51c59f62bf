package fakeghl

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The stand-in sends GHL's webhooks: when a change is made through its API, or through
// the control endpoint that models an edit in GHL's UI (Edit), it POSTs the event GHL
// would send to the receiver URL (Config.WebhookURL, SetWebhookURL), signed the way GHL
// signs: X-GHL-Signature, Ed25519 over the raw body, base64. The key is the stand-in's
// own (WebhookPublicKey): a sidecar receiving from it is configured with that key instead
// of GHL's. Delay, duplicates and drops are faults (Faults.WebhookDelay, ...).
//
// Deliveries go out one at a time in the order the changes were made, after the change's
// answer; each is recorded in Stats.Webhooks with the receiver's status.

// webhookKey signs the stand-in's deliveries. A test key, and no secret.
var webhookKey = ed25519.NewKeyFromSeed(func() []byte {
	s := sha256.Sum256([]byte("fakeghl webhook test key"))
	return s[:]
}())

// WebhookPublicKey is the public half of the stand-in's webhook key as PEM, the value of
// webhooks.public_key for a sidecar that receives the stand-in's deliveries.
func WebhookPublicKey() string {
	der, _ := x509.MarshalPKIXPublicKey(webhookKey.Public())
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// WebhookPublicKeyBase64 is the same key as base64 DER, on one line: the form for an
// environment variable.
func WebhookPublicKeyBase64() string {
	der, _ := x509.MarshalPKIXPublicKey(webhookKey.Public())
	return base64.StdEncoding.EncodeToString(der)
}

// SignWebhook is the X-GHL-Signature the stand-in gives a delivery's body.
func SignWebhook(body []byte) string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(webhookKey, body))
}

// WebhookDelivery is one POST of an event to the receiver.
type WebhookDelivery struct {
	WebhookID string `json:"webhookId"`
	Type      string `json:"type"`
	// Copy is 0 for the first delivery of an event, 1 for its duplicate.
	Copy int `json:"copy"`
	// Status is the receiver's answer; 0 when there was none (Error says why).
	Status   int       `json:"status"`
	Error    string    `json:"error,omitempty"`
	Sent     time.Time `json:"sent"`
	Answered time.Time `json:"answered"`
}

// WebhookStats is what the stand-in did with the events of its changes.
type WebhookStats struct {
	// Events is the number of events the changes produced (with a receiver set).
	Events int64 `json:"events"`
	// Dropped is the number of events not delivered (the drop fault, or a full queue).
	Dropped int64 `json:"dropped"`
	// Deliveries are the latest deliveries, oldest first (at most maxDeliveries).
	Deliveries []WebhookDelivery `json:"deliveries"`
}

const (
	maxDeliveries = 1000
	// webhookQueue bounds the events waiting for delivery; past it they are dropped (and
	// counted), as a stand-in must not grow without bound behind a dead receiver.
	webhookQueue = 4096
)

// outgoing is an event waiting for delivery.
type outgoing struct {
	body      []byte
	id, typ   string
	due       time.Time
	duplicate bool
	st        *state
}

// hooks is the stand-in's webhook sender.
type hooks struct {
	url    atomic.Pointer[string]
	seq    atomic.Uint64
	queue  chan outgoing
	start  sync.Once
	client *http.Client
}

// SetWebhookURL sets where deliveries go; "" stops sending. Events of changes made while
// no receiver is set are not kept.
func (s *Server) SetWebhookURL(url string) { s.hooks.url.Store(&url) }

// WebhookURL is where deliveries go ("" for nowhere).
func (s *Server) WebhookURL() string {
	if p := s.hooks.url.Load(); p != nil {
		return *p
	}
	return ""
}

// event is one change, as GHL reports it: the entity's fields, with the event's type,
// location, id and time.
func (s *Server) event(st *state, typ, loc string, fields map[string]any) {
	if s.WebhookURL() == "" {
		return
	}
	n := s.hooks.seq.Add(1)
	now := s.cfg.Now()
	ev := make(map[string]any, len(fields)+4)
	for k, v := range fields {
		ev[k] = v
	}
	ev["type"] = typ
	ev["locationId"] = loc
	ev["timestamp"] = now.UTC().Format(time.RFC3339Nano)
	ev["webhookId"] = webhookID(s.cfg.Seed, n)
	body, _ := json.Marshal(ev)
	s.send(st, outgoing{body: body, id: ev["webhookId"].(string), typ: typ}, n)
}

// emit reports a change of r by the events types ("" for none). Call with the store's
// lock held: the events carry r's fields as the change left them.
func (q *request) emit(r *record, types ...string) {
	for _, t := range types {
		if t != "" {
			q.srv.event(q.st, t, r.loc, r.fields)
		}
	}
}

// send queues an event's delivery under the faults in force.
func (s *Server) send(st *state, o outgoing, n uint64) {
	f := s.faults.Load()
	st.stats.webhookEvent()
	if f.WebhookDropRate > 0 && draw(s.cfg.Seed, n, streamWebhookDrop) < f.WebhookDropRate {
		st.stats.webhookDropped()
		return
	}
	o.st = st
	o.due = s.cfg.Now().Add(time.Duration(f.WebhookDelay))
	s.hooks.start.Do(func() {
		s.hooks.client = &http.Client{Timeout: 10 * time.Second}
		go s.deliverAll()
	})
	copies := []outgoing{o}
	if f.WebhookDuplicateRate > 0 && draw(s.cfg.Seed, n, streamWebhookDuplicate) < f.WebhookDuplicateRate {
		d := o
		d.duplicate = true
		copies = append(copies, d)
	}
	for _, c := range copies {
		select {
		case s.hooks.queue <- c:
		default:
			st.stats.webhookDropped()
		}
	}
}

// deliverAll sends queued events until the Server is closed.
func (s *Server) deliverAll() {
	for {
		select {
		case <-s.done:
			return
		case o := <-s.hooks.queue:
			if !s.wait(context.Background(), time.Until(o.due)) {
				return
			}
			select {
			case <-s.done:
				return
			default:
			}
			s.deliver(o)
		}
	}
}

func (s *Server) deliver(o outgoing) {
	d := WebhookDelivery{WebhookID: o.id, Type: o.typ, Sent: time.Now()}
	if o.duplicate {
		d.Copy = 1
	}
	url := s.WebhookURL()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(o.body))
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-GHL-Signature", SignWebhook(o.body))
		var resp *http.Response
		if resp, err = s.hooks.client.Do(req); err == nil {
			d.Status = resp.StatusCode
			_ = resp.Body.Close()
		}
	}
	if err != nil {
		d.Error = err.Error()
	}
	d.Answered = time.Now()
	o.st.stats.webhookDelivered(d)
}

// SendWebhook delivers body, a JSON object, to the receiver as GHL would, signed: for
// events the stand-in has no route for. A missing webhookId or timestamp is added; the
// object's other fields are sent as they are.
func (s *Server) SendWebhook(body []byte) error {
	var ev map[string]any
	if err := json.Unmarshal(body, &ev); err != nil {
		return fmt.Errorf("webhook: the body is not a JSON object: %w", err)
	}
	if s.WebhookURL() == "" {
		return fmt.Errorf("webhook: no receiver URL is set")
	}
	n := s.hooks.seq.Add(1)
	if _, ok := ev["webhookId"]; !ok {
		ev["webhookId"] = webhookID(s.cfg.Seed, n)
	}
	if _, ok := ev["timestamp"]; !ok {
		ev["timestamp"] = s.cfg.Now().UTC().Format(time.RFC3339Nano)
	}
	id, _ := ev["webhookId"].(string)
	typ, _ := ev["type"].(string)
	b, _ := json.Marshal(ev)
	s.send(s.state.Load(), outgoing{body: b, id: id, typ: typ}, n)
	return nil
}

// webhookID is a GHL-looking event id (a UUID), reproducible from the seed.
func webhookID(seed, n uint64) string {
	a, b := splitmix(seed^splitmix(n<<8|streamWebhookID)), splitmix(seed^splitmix(n<<8|streamWebhookID)^1)
	return fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", a>>32, a>>16&0xffff, a&0xfff, 0x8000|b>>48&0x3fff, b&0xffffffffffff)
}

// contactEvents are the events GHL sends for a change of a contact's fields: ContactUpdate,
// and the narrower ones for tags and DND.
func contactEvents(body map[string]any) []string {
	out := []string{"ContactUpdate"}
	if _, ok := body["tags"]; ok {
		out = append(out, "ContactTagUpdate")
	}
	_, dnd := body["dnd"]
	if _, ok := body["dndSettings"]; ok || dnd {
		out = append(out, "ContactDndUpdate")
	}
	return out
}

// opportunityEvents are the events of a change of an opportunity's fields.
func opportunityEvents(body map[string]any) []string {
	out := []string{"OpportunityUpdate"}
	for field, typ := range map[string]string{
		"status": "OpportunityStatusUpdate", "pipelineStageId": "OpportunityStageUpdate",
		"monetaryValue": "OpportunityMonetaryValueUpdate", "assignedTo": "OpportunityAssignedToUpdate",
	} {
		if _, ok := body[field]; ok {
			out = append(out, typ)
		}
	}
	return out
}

// conversationEvents: GHL reports a conversation's unread count, not its other fields.
func conversationEvents(body map[string]any) []string {
	if _, ok := body["unreadCount"]; ok {
		return []string{"ConversationUnreadUpdate"}
	}
	return nil
}

// Edit changes an entity the way a person does in GHL's UI: not through the API (no call
// is counted, no rate limit spent), and GHL reports it by webhook. resource is "contacts",
// "opportunities" or "conversations"; fields are merged as a PUT's body is, or, with
// remove, the entity is deleted. It returns the entity's fields after the change.
func (s *Server) Edit(resource, id string, fields map[string]any, remove bool) (map[string]any, error) {
	st := s.state.Load()
	store := st.store
	var c *collection
	var kinds func(map[string]any) []string
	var deleted, updatedKey string
	switch resource {
	case "contacts":
		c, kinds, deleted, updatedKey = store.contacts, contactEvents, "ContactDelete", "dateUpdated"
	case "opportunities":
		c, kinds, deleted, updatedKey = store.opportunities, opportunityEvents, "OpportunityDelete", "updatedAt"
	case "conversations":
		c, kinds, updatedKey = store.conversations, conversationEvents, "dateUpdated"
	default:
		return nil, fmt.Errorf("edit: resource %q is none of contacts, opportunities, conversations", resource)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	r := c.byID[id]
	if r == nil {
		return nil, fmt.Errorf("edit: no %s %q", resource, id)
	}
	if remove {
		c.remove(r)
		if deleted != "" {
			s.event(st, deleted, r.loc, r.fields)
		}
		return r.fields, nil
	}
	r.merge(fields, s.cfg.Now(), updatedKey)
	for _, typ := range kinds(fields) {
		s.event(st, typ, r.loc, r.fields)
	}
	out := make(map[string]any, len(r.fields))
	for k, v := range r.fields {
		out[k] = v
	}
	return out, nil
}
