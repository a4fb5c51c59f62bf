package routes_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/routes"
)

func TestMatch(t *testing.T) {
	tbl := routes.New()
	tests := []struct {
		method, path string
		template     string // "" means no match
		params       routes.Params
	}{
		{"GET", "/contacts/abc123", "/contacts/{contactId}", routes.Params{{"contactId", "abc123"}}},
		{"GET", "/contacts/abc123/", "/contacts/{contactId}", routes.Params{{"contactId", "abc123"}}},
		{"GET", "/contacts", "/contacts/", nil},
		{"GET", "/contacts/", "/contacts/", nil},
		{"POST", "/contacts", "/contacts/", nil},
		{"POST", "/contacts/search", "/contacts/search", nil},
		{"GET", "/contacts/search/duplicate", "/contacts/search/duplicate", nil},
		// Static "search" has no GET: backtrack to the parameter.
		{"GET", "/contacts/search", "/contacts/{contactId}", routes.Params{{"contactId", "search"}}},
		{"GET", "/contacts/c1/tasks", "/contacts/{contactId}/tasks", routes.Params{{"contactId", "c1"}}},
		{"PUT", "/contacts/c1/tasks/t9/completed", "/contacts/{contactId}/tasks/{taskId}/completed",
			routes.Params{{"contactId", "c1"}, {"taskId", "t9"}}},
		{"POST", "/contacts/upsert", "/contacts/upsert", nil},
		{"POST", "/contacts/bulk/tags/update/add", "/contacts/bulk/tags/update/{type}", routes.Params{{"type", "add"}}},
		{"GET", "/opportunities/pipelines", "/opportunities/pipelines", nil},
		{"GET", "/opportunities/o1", "/opportunities/{id}", routes.Params{{"id", "o1"}}},
		{"GET", "/conversations/search", "/conversations/search", nil},
		{"GET", "/conversations/messages/m1", "/conversations/messages/{id}", routes.Params{{"id", "m1"}}},
		{"GET", "/conversations/c1/messages", "/conversations/{conversationId}/messages", routes.Params{{"conversationId", "c1"}}},
		{"GET", "/locations/L1/customFields", "/locations/{locationId}/customFields", routes.Params{{"locationId", "L1"}}},
		{"POST", "/locations/L1/tasks/search", "/locations/{locationId}/tasks/search", routes.Params{{"locationId", "L1"}}},
		{"GET", "/objects/contact/records/r1", "/objects/{schemaKey}/records/{id}",
			routes.Params{{"schemaKey", "contact"}, {"id", "r1"}}},
		{"POST", "/oauth/token", "/oauth/token", nil},
		// Escaped values are unescaped; an escaped static name is still that name.
		{"GET", "/contacts/a%20b%2Fc", "/contacts/{contactId}", routes.Params{{"contactId", "a b/c"}}},
		{"POST", "/contacts/%73earch", "/contacts/search", nil},
		// No match.
		{"GET", "/contacts/a/b/c/d/e", "", nil},
		{"GET", "/nope", "", nil},
		{"GET", "/", "", nil},
		{"GET", "", "", nil},
		{"GET", "contacts", "", nil},
		{"GET", "/contacts//notes", "", nil},
		{"GET", "/contacts/a%zz", "", nil},
		{"HEAD", "/contacts/c1", "", nil},
		{"PATCH", "/contacts/c1", "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r, ps := tbl.Match(tc.method, tc.path)
			if tc.template == "" {
				if r != nil {
					t.Fatalf("matched %s %s, want no match", r.Method, r.Template)
				}
				return
			}
			if r == nil {
				t.Fatalf("no match, want %s", tc.template)
			}
			if r.Template != tc.template || r.Method != tc.method {
				t.Fatalf("matched %s %s, want %s %s", r.Method, r.Template, tc.method, tc.template)
			}
			if !reflect.DeepEqual(ps, tc.params) {
				t.Fatalf("params %v, want %v", ps, tc.params)
			}
		})
	}
}

func TestPolicy(t *testing.T) {
	tbl := routes.New()
	tests := []struct {
		method, template string
		policy           routes.Policy
		ttl              time.Duration
		resource, entity string
	}{
		{"POST", "/oauth/token", routes.Pass, 0, "oauth", ""},
		{"POST", "/oauth/locationToken", routes.Pass, 0, "oauth", ""},
		{"GET", "/oauth/installedLocations", routes.Pass, 0, "oauth", ""},
		{"GET", "/social-media-posting/oauth/facebook/start", routes.Pass, 0, "social-media-posting", ""},
		{"POST", "/contacts/search", routes.Query, 10 * time.Minute, "contacts", ""},
		{"POST", "/opportunities/search", routes.Query, 10 * time.Minute, "opportunities", ""},
		{"POST", "/objects/{schemaKey}/records/search", routes.Query, 10 * time.Minute, "objects.records", ""},
		{"POST", "/locations/{locationId}/tasks/search", routes.Query, 10 * time.Minute, "contacts", ""},
		{"POST", "/users/search/filter-by-email", routes.Query, 10 * time.Minute, "users", ""},
		{"POST", "/social-media-posting/{locationId}/posts/list", routes.Query, 10 * time.Minute, "social-media-posting", "locationId"},
		{"POST", "/email/verify", routes.Write, 0, "email", ""},
		{"GET", "/contacts/{contactId}", routes.Read, time.Minute, "contacts", "contactId"},
		{"GET", "/contacts/", routes.Read, 30 * time.Second, "contacts", ""},
		{"GET", "/contacts/{contactId}/notes", routes.Read, time.Minute, "contacts", "contactId"},
		{"GET", "/contacts/business/{businessId}", routes.Read, 30 * time.Second, "contacts", ""},
		{"GET", "/conversations/search", routes.Read, 30 * time.Second, "conversations", ""},
		{"GET", "/locations/{locationId}", routes.Read, 10 * time.Minute, "locations", "locationId"},
		{"GET", "/locations/{locationId}/customFields", routes.Read, 10 * time.Minute, "custom-fields", ""},
		{"GET", "/locations/{locationId}/customValues/{id}", routes.Read, 10 * time.Minute, "locations.customValues", "id"},
		{"GET", "/locations/{locationId}/timezones", routes.Read, time.Hour, "locations.timezones", ""},
		{"GET", "/opportunities/pipelines", routes.Read, 10 * time.Minute, "opportunities.pipelines", ""},
		{"GET", "/users/", routes.Read, 10 * time.Minute, "users", ""},
		{"GET", "/calendars/", routes.Read, 10 * time.Minute, "calendars", ""},
		{"GET", "/calendars/{calendarId}/free-slots", routes.Read, 30 * time.Second, "calendars.events", ""},
		{"POST", "/contacts/", routes.Write, 0, "contacts", ""},
		{"POST", "/contacts/upsert", routes.Write, 0, "contacts", ""},
		{"PUT", "/contacts/{contactId}", routes.Write, 0, "contacts", "contactId"},
		{"DELETE", "/contacts/{contactId}", routes.Write, 0, "contacts", "contactId"},
		{"POST", "/conversations/messages", routes.Write, 0, "conversations", ""},
		{"PUT", "/opportunities/{id}/status", routes.Write, 0, "opportunities", "id"},
		{"PUT", "/locations/{locationId}", routes.Write, 0, "locations", "locationId"},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.template, func(t *testing.T) {
			r := tbl.Lookup(tc.method, tc.template)
			if r == nil {
				t.Fatal("not in the table")
			}
			if r.Policy != tc.policy || r.TTL != tc.ttl || r.Resource != tc.resource || r.Entity != tc.entity {
				t.Fatalf("got %v ttl=%v resource=%q entity=%q, want %v ttl=%v resource=%q entity=%q",
					r.Policy, r.TTL, r.Resource, r.Entity, tc.policy, tc.ttl, tc.resource, tc.entity)
			}
		})
	}
}

// TestTableInvariants checks every built-in route, with or without the specs at hand.
func TestTableInvariants(t *testing.T) {
	tbl := routes.New()
	all := tbl.All()
	if len(all) < 600 {
		t.Fatalf("%d routes, want the ~660 operations of the specs", len(all))
	}
	for _, r := range all {
		t.Run(r.Method+" "+r.Template, func(t *testing.T) {
			switch {
			case len(r.Template) > 7 && r.Template[:7] == "/oauth/":
				if r.Policy != routes.Pass {
					t.Fatalf("policy %v under /oauth/", r.Policy)
				}
			case r.Method == "GET":
				if r.Policy != routes.Read && r.Policy != routes.Pass {
					t.Fatalf("GET with policy %v", r.Policy)
				}
			case r.Method == "POST":
				if r.Policy != routes.Query && r.Policy != routes.Write {
					t.Fatalf("POST with policy %v", r.Policy)
				}
			default:
				if r.Policy != routes.Write {
					t.Fatalf("%s with policy %v", r.Method, r.Policy)
				}
			}
			cached := r.Policy == routes.Read || r.Policy == routes.Query
			if cached != (r.TTL > 0) || cached != (len(r.TagPatterns) > 0) {
				t.Fatalf("policy %v with ttl %v and tags %v", r.Policy, r.TTL, r.TagPatterns)
			}
			if (r.Policy == routes.Write) != (len(r.InvalidatePatterns) > 0) {
				t.Fatalf("policy %v invalidates %v", r.Policy, r.InvalidatePatterns)
			}
			if tbl.Lookup(r.Method, r.Template) != r {
				t.Fatal("Lookup does not return the route")
			}
			path, _ := fill(r.Template, "v-")
			if got, _ := tbl.Match(r.Method, path); got != r {
				t.Fatalf("Match(%s) = %v", path, got)
			}
		})
	}
}

func TestParsePolicy(t *testing.T) {
	for s, want := range map[string]routes.Policy{"read": routes.Read, "Query": routes.Query, "write": routes.Write, "pass": routes.Pass} {
		if got, err := routes.ParsePolicy(s); err != nil || got != want {
			t.Errorf("ParsePolicy(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := routes.ParsePolicy("cache"); err == nil {
		t.Error("ParsePolicy(cache): no error")
	}
}

func TestMatchAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	tbl := routes.New()
	tests := []struct {
		method, path string
		max          float64
	}{
		{"POST", "/contacts/search", 0},
		{"GET", "/contacts/", 0},
		{"GET", "/nope/nope", 0},
		{"GET", "/contacts/c1", 1},
		{"PUT", "/contacts/c1/tasks/t1/completed", 1},
	}
	for _, tc := range tests {
		if n := testing.AllocsPerRun(100, func() { tbl.Match(tc.method, tc.path) }); n > tc.max {
			t.Errorf("%s %s: %v allocs, want at most %v", tc.method, tc.path, n, tc.max)
		}
	}
}
