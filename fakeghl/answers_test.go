package fakeghl_test

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/routes"
)

// stateful are the routes with handlers of their own, tested elsewhere.
var stateful = regexp.MustCompile(`^(POST|GET|PUT|DELETE) /(contacts|opportunities|conversations)/(\{[a-zA-Z]+\}|search|upsert|bulk/tags/update/\{type\})?(/tags|/status)?$`)

// TestEveryRouteHasAPlausibleAnswer asks every operation of the route table, in both the
// v2 and v3 flavour, and expects the spec's success status with a JSON body that carries
// the caller marker.
func TestEveryRouteHasAPlausibleAnswer(t *testing.T) {
	_, ts := start(t, fakeghl.Config{Limit: 1 << 20})
	tok := "Bearer " + fakeghl.Token("Company", "co1", "app")
	marker := fakeghl.CallerOf(tok)
	n := 0
	for _, rt := range routes.New().All() {
		if stateful.MatchString(rt.Method + " " + rt.Template) {
			continue
		}
		n++
		path := regexp.MustCompile(`\{[^}]+\}`).ReplaceAllString(rt.Template, "sample1")
		for _, version := range []string{"2021-07-28", "v3"} {
			c := client{t: t, base: ts.URL, auth: tok}
			resp, raw := c.rawVersion(rt.Method, path, version)
			if resp.StatusCode < 200 || resp.StatusCode > 299 {
				t.Errorf("%s %s (%s): status %d %s", rt.Method, rt.Template, version, resp.StatusCode, raw)
				continue
			}
			if resp.StatusCode == 204 {
				continue
			}
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Errorf("%s %s: body is not JSON: %v", rt.Method, rt.Template, err)
				continue
			}
			if m, ok := v.(map[string]any); ok && m["_caller"] != marker {
				t.Errorf("%s %s: _caller %v", rt.Method, rt.Template, m["_caller"])
			}
		}
	}
	if n < 600 {
		t.Errorf("only %d generated routes", n)
	}
}

func TestGeneratedAnswersFollowTheSpecs(t *testing.T) {
	_, ts := start(t, fakeghl.Config{})
	c := newClient(t, ts, fakeghl.Token("Location", "L", ""))
	for _, tc := range []struct {
		method, path, version string
		status                int
		field                 string
	}{
		{"GET", "/contacts/abc/notes", "2021-07-28", 200, "notes"},
		{"POST", "/contacts/abc/notes", "2021-07-28", 201, "note"},
		{"GET", "/locations/L", "2021-07-28", 200, "location"},
		{"GET", "/opportunities/pipelines", "2021-07-28", 200, "pipelines"},
		{"GET", "/users/search", "v3", 200, "users"},
		{"GET", "/calendars/events", "2021-04-15", 200, "events"},
	} {
		resp, raw := c.rawVersion(tc.method, tc.path, tc.version)
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		if resp.StatusCode != tc.status || m[tc.field] == nil {
			t.Errorf("%s %s: %d %s", tc.method, tc.path, resp.StatusCode, raw)
		}
	}

	// OAuth needs no token and is not rate limited.
	resp, raw := client{t: t, base: ts.URL}.rawVersion("POST", "/oauth/token", "2021-07-28")
	if resp.StatusCode != 200 || !strings.Contains(string(raw), "access_token") || resp.Header.Get("X-RateLimit-Max") != "" {
		t.Errorf("oauth: %d %v %s", resp.StatusCode, resp.Header, raw)
	}
	// Unknown paths: 404 in GHL's shape, still rate limited.
	resp, raw = c.rawVersion("GET", "/no/such/thing", "2021-07-28")
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	if resp.StatusCode != 404 || m["message"] != "Cannot GET /no/such/thing" || m["error"] != "Not Found" || resp.Header.Get("X-RateLimit-Remaining") == "" {
		t.Errorf("unknown path: %d %s", resp.StatusCode, raw)
	}
}
