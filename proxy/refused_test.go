package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/cache"
	"github.com/ghlproxy/ghlproxy/dedupe"
	"github.com/ghlproxy/ghlproxy/routes"
)

// An answer the cache refuses as one GHL may have read before a write (cache.ErrInvalidated:
// sent within the race window after an invalidation of its tags) is not replayed by the
// fold either: the next identical read goes to GHL again, not to the fold's replay.
func TestRefusedAnswerIsNotReplayed(t *testing.T) {
	up, seen := recordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"contact":{"id":"c1"}}`))
	})
	// A race window of an hour: every read after the write is refused, however slow.
	c := embeddedCache(t, cache.Config{RaceWindow: time.Hour}, nil)
	f, err := dedupe.New(dedupe.Config{}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	tbl := routes.New()
	for _, r := range tbl.Select("GET", "/contacts/{contactId}") {
		r.Fold, r.FoldWindow = true, 30*time.Second
	}
	px, _ := newProxy(t, up.URL, func(cfg *Config) { cfg.Cache, cfg.Fold, cfg.Routes = c, f, tbl })
	hdr := map[string]string{"Authorization": "Bearer pit-refused", "Version": "2021-07-28"}
	if resp, body := do(t, "PUT", px.URL+"/contacts/c1", `{"firstName":"A"}`, hdr); resp.StatusCode != 200 {
		t.Fatalf("PUT: %d %s", resp.StatusCode, body)
	}
	resp, body := do(t, "GET", px.URL+"/contacts/c1", "", hdr)
	if resp.StatusCode != 200 || strings.Contains(resp.Header.Get("Cache-Status"), "stored") {
		t.Fatalf("first read: %d %q %s; want an answer the cache refused", resp.StatusCode, resp.Header.Get("Cache-Status"), body)
	}
	resp, _ = do(t, "GET", px.URL+"/contacts/c1", "", hdr)
	if d := resp.Header.Get("X-Ghlproxy-Dedupe"); d != "" {
		t.Errorf("second read: X-Ghlproxy-Dedupe %q, Cache-Status %q; want a call of its own", d, resp.Header.Get("Cache-Status"))
	}
	gets := 0
	for _, s := range seen() {
		if s.Method == "GET" {
			gets++
		}
	}
	if gets != 2 {
		t.Fatalf("GHL got %d reads, want 2: the refused answer was replayed", gets)
	}
}
