package routes_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/routes"
)

func TestTagsAndInvalidates(t *testing.T) {
	tbl := routes.New()
	tests := []struct {
		method, path string
		tags         []string // a cached answer carries
		drops        []string // a successful write drops
	}{
		// contacts
		{"GET", "/contacts/c1", []string{"contacts/c1", "contacts/*"}, nil},
		{"GET", "/contacts/c1/notes", []string{"contacts/c1", "contacts/*"}, nil},
		{"GET", "/contacts/", []string{"contacts"}, nil},
		{"POST", "/contacts/search", []string{"contacts"}, nil},
		{"PUT", "/contacts/c1", nil, []string{"contacts", "contacts/c1", "locations.tags"}},
		{"DELETE", "/contacts/c1", nil, []string{"contacts", "contacts/c1"}},
		{"POST", "/contacts/", nil, []string{"contacts", "locations.tags"}},
		{"POST", "/contacts/upsert", nil, []string{"contacts", "contacts/*", "locations.tags"}},
		{"POST", "/contacts/c1/tags", nil, []string{"contacts", "contacts/c1", "locations.tags"}},
		{"POST", "/contacts/c1/tasks", nil, []string{"contacts", "contacts/c1"}},
		{"POST", "/contacts/bulk/business", nil, []string{"contacts", "contacts/*"}},
		// task search reads what contact task writes change
		{"POST", "/locations/L1/tasks/search", []string{"contacts"}, nil},
		// opportunities
		{"GET", "/opportunities/o1", []string{"opportunities/o1", "opportunities/*"}, nil},
		{"POST", "/opportunities/search", []string{"opportunities"}, nil},
		{"PUT", "/opportunities/o1/status", nil, []string{"opportunities", "opportunities/o1"}},
		{"POST", "/opportunities/upsert", nil, []string{"opportunities", "opportunities/*"}},
		{"POST", "/opportunities/", nil, []string{"opportunities"}},
		{"GET", "/opportunities/pipelines", []string{"opportunities.pipelines"}, nil},
		// conversations: sending a message changes a conversation the path does not name
		{"GET", "/conversations/k1/messages", []string{"conversations/k1", "conversations/*"}, nil},
		{"GET", "/conversations/search", []string{"conversations"}, nil},
		{"POST", "/conversations/messages", nil, []string{"conversations", "conversations/*"}},
		{"PUT", "/conversations/k1", nil, []string{"conversations", "conversations/k1"}},
		// locations
		{"GET", "/locations/L1", []string{"locations/L1", "locations/*"}, nil},
		{"PUT", "/locations/L1", nil, []string{"locations", "locations/L1"}},
		{"GET", "/locations/L1/customValues", []string{"locations.customValues"}, nil},
		{"PUT", "/locations/L1/customValues/v1", nil, []string{"locations.customValues", "locations.customValues/v1"}},
		{"GET", "/locations/L1/customFields/f1", []string{"custom-fields/f1", "custom-fields/*"}, nil},
		{"PUT", "/custom-fields/f1", nil, []string{"custom-fields", "custom-fields/f1"}},
		// escaping keeps tags free of slashes from values
		{"GET", "/contacts/a%2Fb", []string{"contacts/a%2Fb", "contacts/*"}, nil},
		// pass routes carry and drop nothing
		{"POST", "/oauth/token", nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r, ps := tbl.Match(tc.method, tc.path)
			if r == nil {
				t.Fatal("no match")
			}
			if got := r.Tags(ps); !reflect.DeepEqual(got, tc.tags) {
				t.Errorf("Tags = %q, want %q", got, tc.tags)
			}
			if got := r.Invalidates(ps); !reflect.DeepEqual(got, tc.drops) {
				t.Errorf("Invalidates = %q, want %q", got, tc.drops)
			}
		})
	}
}

// TestWritesReachReads checks the scheme end to end: after a write, the reads it names
// must lose at least one of their tags.
func TestWritesReachReads(t *testing.T) {
	tbl := routes.New()
	tests := []struct{ write, read [2]string }{
		{[2]string{"PUT", "/contacts/c1"}, [2]string{"GET", "/contacts/c1"}},
		{[2]string{"POST", "/contacts/c1/notes"}, [2]string{"GET", "/contacts/c1/notes"}},
		{[2]string{"POST", "/contacts/c1/tags"}, [2]string{"POST", "/contacts/search"}},
		{[2]string{"POST", "/contacts/c1/tags"}, [2]string{"GET", "/locations/L1/tags"}},
		{[2]string{"POST", "/contacts/c1/tasks"}, [2]string{"POST", "/locations/L1/tasks/search"}},
		{[2]string{"POST", "/contacts/upsert"}, [2]string{"GET", "/contacts/c1"}},
		{[2]string{"POST", "/conversations/messages"}, [2]string{"GET", "/conversations/k1/messages"}},
		{[2]string{"POST", "/calendars/events/appointments"}, [2]string{"GET", "/calendars/cal1/free-slots"}},
		{[2]string{"PUT", "/calendars/cal1"}, [2]string{"GET", "/calendars/cal1/free-slots"}},
		{[2]string{"POST", "/locations/L1/customFields"}, [2]string{"GET", "/custom-fields/object-key/contact"}},
		{[2]string{"PUT", "/opportunities/o1"}, [2]string{"POST", "/opportunities/search"}},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.write[:], " ")+" -> "+strings.Join(tc.read[:], " "), func(t *testing.T) {
			w, wp := tbl.Match(tc.write[0], tc.write[1])
			r, rp := tbl.Match(tc.read[0], tc.read[1])
			if w == nil || r == nil {
				t.Fatal("no match")
			}
			drops := w.Invalidates(wp)
			for _, tag := range r.Tags(rp) {
				if slices.Contains(drops, tag) {
					return
				}
			}
			t.Fatalf("write drops %q, read carries %q", drops, r.Tags(rp))
		})
	}
	// And a write to one contact leaves another contact's cached answer alone.
	w, wp := tbl.Match("PUT", "/contacts/c1")
	r, rp := tbl.Match("GET", "/contacts/c2")
	for _, tag := range r.Tags(rp) {
		if slices.Contains(w.Invalidates(wp), tag) {
			t.Fatalf("PUT /contacts/c1 drops %q of GET /contacts/c2", tag)
		}
	}
}

func TestOverride(t *testing.T) {
	t.Run("ttl", func(t *testing.T) {
		tbl := routes.New()
		if err := tbl.Override("/contacts/{contactId}", "GET", routes.Override{TTL: 5 * time.Minute}); err != nil {
			t.Fatal(err)
		}
		r, _ := tbl.Match("GET", "/contacts/c1")
		if r.TTL != 5*time.Minute || r.Policy != routes.Read {
			t.Fatalf("ttl %v policy %v", r.TTL, r.Policy)
		}
		if other := routes.New().Lookup("GET", "/contacts/{contactId}"); other.TTL != time.Minute {
			t.Fatalf("override leaked into a new table: ttl %v", other.TTL)
		}
	})
	t.Run("every method", func(t *testing.T) {
		tbl := routes.New()
		inv := []string{"contacts", "contacts/{contactId}", "opportunities"}
		if err := tbl.Override("/contacts/{contactId}", "", routes.Override{Invalidates: inv}); err != nil {
			t.Fatal(err)
		}
		r, ps := tbl.Match("DELETE", "/contacts/c1")
		if got := r.Invalidates(ps); !reflect.DeepEqual(got, []string{"contacts", "contacts/c1", "opportunities"}) {
			t.Fatalf("Invalidates = %q", got)
		}
		r, ps = tbl.Match("PUT", "/contacts/c1")
		if got := r.Invalidates(ps); len(got) != 3 {
			t.Fatalf("PUT Invalidates = %q", got)
		}
	})
	t.Run("query", func(t *testing.T) {
		tbl := routes.New()
		if err := tbl.Override("/email/verify", "POST", routes.Override{Policy: routes.Query, TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		r, ps := tbl.Match("POST", "/email/verify")
		if r.Policy != routes.Query || r.TTL != time.Hour || !reflect.DeepEqual(r.Tags(ps), []string{"email"}) {
			t.Fatalf("policy %v ttl %v tags %q", r.Policy, r.TTL, r.Tags(ps))
		}
	})
	t.Run("write to pass", func(t *testing.T) {
		tbl := routes.New()
		if err := tbl.Override("/contacts/search", "POST", routes.Override{Policy: routes.Pass}); err != nil {
			t.Fatal(err)
		}
		r, ps := tbl.Match("POST", "/contacts/search")
		if r.Policy != routes.Pass || r.Tags(ps) != nil {
			t.Fatalf("policy %v tags %q", r.Policy, r.Tags(ps))
		}
	})
	errs := []struct {
		name, template, method string
		o                      routes.Override
		want                   string
	}{
		{"unknown route", "/nope", "GET", routes.Override{TTL: time.Second}, "no route"},
		{"oauth stays pass", "/oauth/token", "POST", routes.Override{Policy: routes.Query}, "always pass"},
		{"read needs GET", "/contacts/{contactId}", "PUT", routes.Override{Policy: routes.Read}, "needs GET"},
		{"query needs POST", "/contacts/{contactId}", "GET", routes.Override{Policy: routes.Query}, "needs POST"},
		{"write not on GET", "/contacts/{contactId}", "GET", routes.Override{Policy: routes.Write}, "write needs"},
		{"negative ttl", "/contacts/{contactId}", "GET", routes.Override{TTL: -time.Second}, "negative"},
		{"unknown param", "/contacts/{contactId}", "PUT", routes.Override{Invalidates: []string{"contacts/{id}"}}, `"id" is not a parameter`},
		{"unclosed", "/contacts/{contactId}", "PUT", routes.Override{Invalidates: []string{"contacts/{contactId"}}, "unclosed"},
		{"empty tag", "/contacts/{contactId}", "PUT", routes.Override{Invalidates: []string{""}}, "empty"},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			tbl := routes.New()
			err := tbl.Override(tc.template, tc.method, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "cache.routes: ") {
				t.Fatalf("err %q does not name the config key", err)
			}
			if r, fresh := tbl.Lookup(tc.method, tc.template), routes.New().Lookup(tc.method, tc.template); r != nil &&
				(r.Policy != fresh.Policy || r.TTL != fresh.TTL || !reflect.DeepEqual(r.InvalidatePatterns, fresh.InvalidatePatterns)) {
				t.Fatal("a refused override changed the route")
			}
		})
	}
}

func TestPath(t *testing.T) {
	r := routes.New().Lookup("PUT", "/contacts/{contactId}/tasks/{taskId}/completed")
	got := r.Path(routes.Params{{"taskId", "t 1"}, {"contactId", "c/1"}})
	if want := "/contacts/c%2F1/tasks/t%201/completed"; got != want {
		t.Fatalf("Path = %q, want %q", got, want)
	}
}

// TestEntityTags: a write that changes an entity in place carries the tags a read of that
// entity carries (so the fold ends its replay when a later write drops them); a write that
// creates something carries none.
func TestEntityTags(t *testing.T) {
	tbl := routes.New()
	tests := []struct {
		method, path string
		want         []string
	}{
		{"PUT", "/contacts/c1", []string{"contacts/c1", "contacts/*"}},
		{"DELETE", "/contacts/c1", []string{"contacts/c1", "contacts/*"}},
		{"POST", "/contacts/c1/tags", []string{"contacts/c1", "contacts/*"}},
		{"DELETE", "/contacts/c1/tags", []string{"contacts/c1", "contacts/*"}},
		{"PUT", "/opportunities/o1", []string{"opportunities/o1", "opportunities/*"}},
		{"PUT", "/contacts/a%2Fb", []string{"contacts/a%2Fb", "contacts/*"}},
		// creates: a retry is a duplicate whatever came between
		{"POST", "/contacts/", nil},
		{"POST", "/contacts/upsert", nil},
		{"POST", "/contacts/c1/notes", nil},
		{"POST", "/contacts/c1/tasks", nil},
		{"POST", "/invoices/i1/record-payment", nil},
		// enrolments are not idempotent: replayed like creates
		{"POST", "/contacts/c1/workflow/w1", nil},
		{"POST", "/contacts/c1/campaigns/k1", nil},
		// reads carry read tags, not entity tags
		{"GET", "/contacts/c1", nil},
	}
	for _, tc := range tests {
		r, ps := tbl.Match(tc.method, tc.path)
		if r == nil {
			t.Fatalf("%s %s: no route", tc.method, tc.path)
		}
		if got := r.EntityTags(ps); !slices.Equal(got, tc.want) {
			t.Errorf("%s %s: EntityTags %q, want %q", tc.method, tc.path, got, tc.want)
		}
	}
	// What a write of an entity carries is what the read of it carries, and what a write
	// to it drops.
	get, gps := tbl.Match("GET", "/contacts/c1")
	put, pps := tbl.Match("PUT", "/contacts/c1")
	if !slices.Equal(get.Tags(gps), put.EntityTags(pps)) {
		t.Errorf("GET's tags %q differ from PUT's entity tags %q", get.Tags(gps), put.EntityTags(pps))
	}
	if !slices.Contains(put.Invalidates(pps), put.EntityTags(pps)[0]) {
		t.Errorf("PUT drops %q, not its own entity tag", put.Invalidates(pps))
	}
}

// TestEntityTagsAreSharedAcrossScopes: an entity GHL gave an id is the same entity for every
// credential, so its stored tag is the same in every scope; collections, and families named
// by a name every location may use, stay in their scope.
func TestEntityTagsAreSharedAcrossScopes(t *testing.T) {
	for _, tc := range []struct {
		tag    string
		shared bool
	}{
		{"contacts/c1", true},
		{"opportunities/o1", true},
		{"calendars.events/e1", true},
		{"contacts", false},
		{"contacts/*", false},
		{"objects/custom_objects.pet", false},
		{"objects.records/r1", true},
		{"locations.conversationChannels/SMS", false},
	} {
		a, b := routes.ScopedTag("scope-a", tc.tag), routes.ScopedTag("scope-b", tc.tag)
		if (a == b) != tc.shared || routes.IsEntityTag(tc.tag) != tc.shared {
			t.Errorf("%s: stored %q and %q, IsEntityTag %v; want shared %v", tc.tag, a, b, routes.IsEntityTag(tc.tag), tc.shared)
		}
	}
}
