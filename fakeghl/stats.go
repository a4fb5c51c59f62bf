package fakeghl

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"
)

// Stats is what the stand-in saw since it started or was last Reset. Control requests
// under /_fake/ are not counted.
type Stats struct {
	// Calls is every request that reached the stand-in.
	Calls int64 `json:"calls"`
	// Routes counts calls by route label ("GET /contacts/{contactId}", "other" for
	// unknown paths) and status; status 0 is a connection reset without an answer.
	Routes map[string]map[int]int64 `json:"routes"`
	// MaxInWindow is, per scope (ScopeOf), the most requests that arrived within any one
	// rate-limit window, 429s included: the figure that proves a client's limiter never
	// sent more than the limit.
	MaxInWindow map[string]int `json:"maxInWindow"`
	// TooMany is the number of 429s sent.
	TooMany int64 `json:"tooMany"`
	// Creates counts entities created, by resource ("contacts", "opportunities",
	// "conversations"), upserts that created included.
	Creates map[string]int64 `json:"creates"`
	// Writes lists, per entity id, the writes that reached it in the order they were
	// applied (creation first).
	Writes map[string][]Write `json:"writes"`
	// Webhooks is what became of the events of the changes (see SetWebhookURL).
	Webhooks WebhookStats `json:"webhooks"`
}

// Write is one state-changing request applied to an entity.
type Write struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	// BodyHash is the first 16 hex digits of SHA-256 of the request body.
	BodyHash string    `json:"bodyHash"`
	Status   int       `json:"status"`
	Time     time.Time `json:"time"`
}

// Count is the number of calls to a route label with a status.
func (s Stats) Count(label string, status int) int64 { return s.Routes[label][status] }

// RouteCalls is the number of calls to a route label, whatever their status.
func (s Stats) RouteCalls(label string) int64 {
	var n int64
	for _, c := range s.Routes[label] {
		n += c
	}
	return n
}

type routeStatus struct {
	label  string
	status int
}

// counters is the mutable side of Stats.
type counters struct {
	mu      sync.Mutex
	calls   int64
	routes  map[routeStatus]int64
	tooMany int64
	creates map[string]int64
	writes  map[string][]Write
	hooks   WebhookStats
}

func newCounters() *counters {
	return &counters{
		routes:  make(map[routeStatus]int64),
		creates: make(map[string]int64),
		writes:  make(map[string][]Write),
	}
}

func (c *counters) call(label string, status int) {
	c.mu.Lock()
	c.calls++
	c.routes[routeStatus{label, status}]++
	if status == 429 {
		c.tooMany++
	}
	c.mu.Unlock()
}

func (c *counters) write(id string, w Write, created string) {
	c.mu.Lock()
	c.writes[id] = append(c.writes[id], w)
	if created != "" {
		c.creates[created]++
	}
	c.mu.Unlock()
}

func (c *counters) webhookEvent() {
	c.mu.Lock()
	c.hooks.Events++
	c.mu.Unlock()
}

func (c *counters) webhookDropped() {
	c.mu.Lock()
	c.hooks.Dropped++
	c.mu.Unlock()
}

func (c *counters) webhookDelivered(d WebhookDelivery) {
	c.mu.Lock()
	if len(c.hooks.Deliveries) == maxDeliveries {
		c.hooks.Deliveries = append(c.hooks.Deliveries[:0], c.hooks.Deliveries[1:]...)
	}
	c.hooks.Deliveries = append(c.hooks.Deliveries, d)
	c.mu.Unlock()
}

func (c *counters) snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{
		Calls:       c.calls,
		Routes:      make(map[string]map[int]int64),
		MaxInWindow: make(map[string]int),
		TooMany:     c.tooMany,
		Creates:     make(map[string]int64, len(c.creates)),
		Writes:      make(map[string][]Write, len(c.writes)),
		Webhooks:    c.hooks,
	}
	s.Webhooks.Deliveries = append([]WebhookDelivery(nil), c.hooks.Deliveries...)
	for k, n := range c.routes {
		m := s.Routes[k.label]
		if m == nil {
			m = make(map[int]int64)
			s.Routes[k.label] = m
		}
		m[k.status] = n
	}
	for k, n := range c.creates {
		s.Creates[k] = n
	}
	for k, ws := range c.writes {
		s.Writes[k] = append([]Write(nil), ws...)
	}
	return s
}

func bodyHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
