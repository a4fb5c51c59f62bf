package demo

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// Print writes the comparison as a table.
func (r *Report) Print(w io.Writer) {
	c := r.Config
	sc := c.StandIn
	limit, window := sc.Limit, sc.Window
	if limit == 0 {
		limit = 100
	}
	if window == 0 {
		window = 10 * time.Second
	}
	fmt.Fprintf(w, "\nghlproxy demo: %d users, %d operations (%d requests) in %s each way, seed %d\n",
		c.Users, r.Direct.Ops, r.Direct.Requests, c.Duration, c.Seed)
	store := "embedded store"
	if c.RedisURL != "" {
		store = "Redis"
	}
	fmt.Fprintf(w, "GHL stand-in: %d requests per %s per location, median latency %s; sidecar: defaults, %s\n\n",
		limit, window, sc.Latency, store)

	d, s := r.Direct, r.Sidecar
	row := func(name, a, b string) { fmt.Fprintf(w, "  %-32s %15s %18s\n", name, a, b) }
	row("", d.Name, s.Name)
	row("latency p50", ms(d.P50), ms(s.P50))
	row("latency p95", ms(d.P95), ms(s.P95))
	row("latency p99", ms(d.P99), ms(s.P99))
	row("429s seen by clients", num(d.ClientTooMany), num(s.ClientTooMany))
	row("requests failed (after retries)", num(d.Failed), num(s.Failed))
	row("upstream calls", num(int(d.UpstreamCalls)), num(int(s.UpstreamCalls)))
	row("upstream 429s", num(int(d.UpstreamTooMany)), num(int(s.UpstreamTooMany)))
	row("cache hit ratio", ratio(d.HitRatio), ratio(s.HitRatio))
	row("duplicate contacts created", num(d.Duplicates), num(s.Duplicates))
	row("retried creates answered 400", num(d.RetryErrors), num(s.RetryErrors))
	row("wall time", d.Wall.Round(100*time.Millisecond).String(), s.Wall.Round(100*time.Millisecond).String())

	if len(s.Saved) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(s.Saved)) {
			parts = append(parts, fmt.Sprintf("%s %d", k, int(s.Saved[k])))
		}
		fmt.Fprintf(w, "\nupstream calls saved by the sidecar: %s\n", strings.Join(parts, ", "))
	}
	if d.UpstreamCalls > 0 {
		fmt.Fprintf(w, "upstream calls: %.0f%% fewer through the sidecar\n", 100*(1-float64(s.UpstreamCalls)/float64(d.UpstreamCalls)))
	}
	if e := s.Edit; e != nil {
		lead := "a cached lead"
		if !e.CachedBefore {
			lead = "a lead the sidecar had not cached"
		}
		switch {
		case e.Status == 0:
			fmt.Fprintf(w, "edit in GHL's UI of %s: no webhook delivery was answered within 5 s\n", lead)
		case e.Fresh > 0:
			fmt.Fprintf(w, "edit in GHL's UI of %s: GHL's webhook answered %d after %s; the app read the change %s after the edit (without the webhook: up to %s)\n",
				lead, e.Status, ms(e.Delivery), ms(e.Fresh), e.Bound)
		default:
			fmt.Fprintf(w, "edit in GHL's UI of %s: GHL's webhook answered %d after %s, but the app's next read was still the old lead\n", lead, e.Status, ms(e.Delivery))
		}
	}
}

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

func num(n int) string { return fmt.Sprint(n) }

func ratio(r float64) string {
	if r < 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*r)
}
