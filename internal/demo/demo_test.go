package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
)

// TestDemo runs a small workload that still asks for more than GHL's 100 requests per 10 s,
// and checks that the report has every figure and shows the sidecar ahead, and that an
// edit made in GHL's UI reaches the app through the webhook.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two workloads of a few seconds")
	}
	rep, err := Run(context.Background(), Config{
		Users: 20, Duration: 3 * time.Second, Rate: 40, Contacts: 10, Retries: 1,
		StandIn: &fakeghl.Config{}, // GHL's limits, no added latency
	})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep.Print(&out)
	t.Log("\n" + out.String())
	d, s := rep.Direct, rep.Sidecar
	if d.Ops == 0 || d.Ops != s.Ops || d.Requests != s.Requests {
		t.Fatalf("the runs did different work: %d/%d operations, %d/%d requests", d.Ops, s.Ops, d.Requests, s.Requests)
	}
	if d.ClientTooMany == 0 {
		t.Errorf("the direct run saw no 429: the workload does not reach GHL's limit")
	}
	if s.ClientTooMany >= d.ClientTooMany || s.ClientTooMany != 0 {
		t.Errorf("429s seen by clients: %d through the sidecar, %d direct", s.ClientTooMany, d.ClientTooMany)
	}
	if s.UpstreamCalls >= d.UpstreamCalls {
		t.Errorf("upstream calls: %d through the sidecar, %d direct", s.UpstreamCalls, d.UpstreamCalls)
	}
	if s.HitRatio <= 0 || len(s.Saved) == 0 || s.P50 <= 0 || d.P99 <= 0 {
		t.Errorf("missing figures: hit ratio %v, saved %v, p50 %v, direct p99 %v", s.HitRatio, s.Saved, s.P50, d.P99)
	}
	// The outside edit: cached before, GHL's webhook accepted, the next read fresh.
	if e := s.Edit; e == nil || !e.CachedBefore || e.Status != 204 || e.Fresh <= 0 || e.Bound <= time.Minute {
		t.Errorf("outside edit: %+v, want a cached lead, a delivery answered 204 and a fresh read", e)
	}
	if d.Edit != nil {
		t.Errorf("the direct run has an outside edit: %+v", d.Edit)
	}
	for _, want := range []string{"edit in GHL's UI of a cached lead", "latency p50", "latency p95", "latency p99", "429s seen by clients", "upstream calls",
		"cache hit ratio", "duplicate contacts created", "upstream calls saved by the sidecar: cache "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
