package e2e

import (
	"bytes"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/routes"
)

// TestSidecarIsTransparent sends every operation of the contacts, opportunities,
// conversations and locations specs once straight to one stand-in and once through a
// sidecar to an identical twin, in the same order, and requires the same status, body and
// GHL headers from both. The twins share a seed and a frozen clock, so ids and dates match
// whenever the sidecar forwards exactly what it was sent.
func TestSidecarIsTransparent(t *testing.T) {
	frozen := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	fc := fakeghl.Config{Seed: 7, Limit: 1_000_000, Now: func() time.Time { return frozen }}
	_, direct := startStandIn(t, fc)
	_, behind := startStandIn(t, fc)
	// A bucket large enough not to matter: this test is about transparency, not limits.
	r := startReplica(t, testConfig(t, behind.URL, "GHLPROXY_RATELIMIT_RATE=1000000", "GHLPROXY_RATELIMIT_BURST=1000000"))

	token := fakeghl.Token("Location", "loc-conformance", "app-1")
	client := &http.Client{}
	families := []string{"/contacts", "/opportunities", "/conversations", "/locations"}
	n := 0
	for _, rt := range routes.New().All() {
		if !hasAnyPrefix(rt.Template, families) {
			continue
		}
		n++
		path := rt.Path(sampleParams(rt.Template))
		body := ""
		if rt.Method != http.MethodGet && rt.Method != http.MethodDelete {
			body = `{"locationId":"loc-conformance","email":"e` + strings.ReplaceAll(path, "/", "-") + `@example.com","name":"n"}`
		}
		t.Run(rt.Method+" "+rt.Template, func(t *testing.T) {
			h := ghlHeaders(token)
			want, wantBody := call(t, client, rt.Method, direct.URL+path+"?locationId=loc-conformance", body, h)
			got, gotBody := call(t, client, rt.Method, r.URL+path+"?locationId=loc-conformance", body, h)
			if got.StatusCode != want.StatusCode {
				t.Fatalf("status %d through the sidecar, %d direct", got.StatusCode, want.StatusCode)
			}
			// Absolute links differ by design: the sidecar points them at itself.
			gotBody = bytes.ReplaceAll(gotBody, []byte(r.URL), []byte(fakeghl.DefaultBaseURL))
			if !bytes.Equal(gotBody, wantBody) {
				t.Fatalf("body through the sidecar:\n%s\ndirect:\n%s", gotBody, wantBody)
			}
			for k, vs := range want.Header {
				if k == "Date" {
					continue
				}
				if g := got.Header.Values(k); strings.Join(g, ",") != strings.Join(vs, ",") {
					t.Errorf("header %s = %q through the sidecar, %q direct", k, g, vs)
				}
			}
		})
	}
	if n < 100 {
		t.Fatalf("only %d operations of the four specs in the route table", n)
	}
}

var paramRE = regexp.MustCompile(`\{([^}]+)\}`)

func sampleParams(template string) routes.Params {
	var ps routes.Params
	for _, m := range paramRE.FindAllStringSubmatch(template, -1) {
		v := "s-" + m[1]
		if m[1] == "locationId" {
			v = "loc-conformance"
		}
		ps = append(ps, routes.Param{Name: m[1], Value: v})
	}
	return ps
}

func hasAnyPrefix(s string, ps []string) bool {
	for _, p := range ps {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
