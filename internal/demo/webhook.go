package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/routes"
	"github.com/ghlproxy/ghlproxy/webhook"
)

// Edit is what became of a change made in GHL itself — a person editing a lead in GHL's
// UI — while the app reads that lead through the sidecar: GHL's signed webhook reaches the
// sidecar, which drops its copy, so the app's next read is fresh instead of waiting out
// the contact's TTL and stale window.
type Edit struct {
	// CachedBefore: the read before the edit was a hit (the lead was in the cache).
	CachedBefore bool
	// Delivery: from the edit to the sidecar's answer to GHL's webhook, and that answer.
	Delivery time.Duration
	Status   int
	// Fresh: from the edit to the app's read that showed it; zero when no read did.
	Fresh time.Duration
	// Bound is how long the old answer could have been served without the webhook: the
	// contact's TTL plus its stale window.
	Bound time.Duration
}

// outsideEdit edits contact id "in GHL's UI" while the sidecar caches it and measures how
// soon the app sees the change.
func (d *driver) outsideEdit(ctx context.Context, fake *fakeghl.Server, sidecarURL, id string) (*Edit, error) {
	fake.SetWebhookURL(sidecarURL + webhook.Path)
	defer fake.SetWebhookURL("")
	// Twice: the first read may be the one that fills the cache.
	if _, _, err := d.readCompany(ctx, id); err != nil {
		return nil, err
	}
	_, hit, err := d.readCompany(ctx, id)
	if err != nil {
		return nil, err
	}
	e := &Edit{CachedBefore: hit, Bound: staleBound()}
	n := len(fake.Stats().Webhooks.Deliveries)
	want := fmt.Sprintf("Edited in GHL %d", time.Now().UnixNano())
	start := time.Now()
	if _, err := fake.Edit("contacts", id, map[string]any{"companyName": want}, false); err != nil {
		return nil, err
	}
	// The demo is a report, not a test: it waits for the stand-in's delivery by looking,
	// for at most a few seconds.
	deadline := start.Add(5 * time.Second)
	for e.Status == 0 && time.Now().Before(deadline) {
		for _, x := range fake.Stats().Webhooks.Deliveries[n:] {
			if x.Type == "ContactUpdate" && x.Status != 0 {
				e.Status, e.Delivery = x.Status, x.Answered.Sub(start)
			}
		}
		if e.Status == 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	if e.Status == 0 {
		return e, nil
	}
	company, _, err := d.readCompany(ctx, id)
	if err != nil {
		return nil, err
	}
	if company == want {
		e.Fresh = time.Since(start)
	}
	return e, nil
}

// staleBound is how long a contact read stays servable with the defaults: its TTL in the
// route table plus cache.stale_while_revalidate.
func staleBound() time.Duration {
	r := routes.New().Lookup("GET", "/contacts/{contactId}")
	if r == nil {
		return 0
	}
	return r.TTL + config.Default().Cache.StaleWhileRevalidate
}

// readCompany reads contact id as the app does and returns its companyName and whether
// the sidecar answered from its cache.
func (d *driver) readCompany(ctx context.Context, id string) (string, bool, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", d.base+"/contacts/"+id, nil)
	if err != nil {
		return "", false, err
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	req.Header.Set("Version", "2021-07-28")
	resp, err := d.client.Do(req)
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", false, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", false, fmt.Errorf("read contact %s: %d %s", id, resp.StatusCode, b)
	}
	var c struct {
		Contact struct {
			CompanyName string `json:"companyName"`
		} `json:"contact"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return "", false, fmt.Errorf("read contact %s: %w", id, err)
	}
	return c.Contact.CompanyName, strings.Contains(resp.Header.Get("Cache-Status"), "; hit"), nil
}
