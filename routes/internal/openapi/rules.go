package openapi

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Row is one line of the generated table: an operation with the sidecar's policy for it.
type Row struct {
	Op
	Policy   string // identifier of a routes.Policy constant: Read, Query, Write, Pass
	TTL      time.Duration
	Resource string
	Entity   string
	// Tags are the tag patterns a cached answer carries and Invalidates the ones a
	// successful write drops; "{name}" stands for the value of path parameter name.
	Tags        []string
	Invalidates []string
}

// Queries are the POSTs that only read, reviewed one by one against the specs: searches,
// filters and "fetch"/"get"/"list" operations whose request body is a query. Keep this
// list explicit: a wrong entry caches a write. Rules fails if an entry is not a POST of
// the specs, so a renamed path cannot silently turn a query back into a write.
//
// Deliberately left out: POST /email/verify (billed per call and records the result),
// the social planner edit-session operations (they open, save or discard a session) and
// every "create"/"send"/"attach" operation. GHL has no POST /conversations/search (only GET).
var Queries = []string{
	"/contacts/search",
	"/opportunities/search",
	"/objects/{schemaKey}/records/search",
	"/locations/{locationId}/tasks/search",
	"/users/search/filter-by-email",
	"/calendars/groups/validate-slug",
	"/store/shipping-zone/shipping-rates",
	"/ad-publishing/google/keyword-ideas",
	"/social-media-posting/statistics",
	"/social-media-posting/{locationId}/posts/list",
	"/social-media-posting/{locationId}/tags/details",
	"/social-media-posting/category/queues/list",
	"/social-media-posting/category/queues/list/calendar",
	"/social-media-posting/category/queues/{queueId}/items",
	"/social-media-posting/category/queues/{queueId}/slots",
	"/social-media-posting/comments/{platform}/list",
}

// passGET are GETs outside /oauth/ that are nevertheless never cached: they start a
// third-party OAuth flow, whose answer carries a one-time state.
var passGET = regexp.MustCompile(`^/social-media-posting/oauth/[^/]+/start$`)

// families names the invalidation family of a path prefix where the first path segment
// is the wrong answer ("{}" matches any parameter). The first matching prefix wins; the
// entity of a route is the parameter right after its family prefix.
var families = []struct{ prefix, family string }{
	// Custom fields are one collection reachable two ways.
	{"/locations/{}/customFields", "custom-fields"},
	// Task search reads the tasks written under /contacts/{contactId}/tasks.
	{"/locations/{}/tasks", "contacts"},
	// Everything that reads or writes appointments, so that booking one drops free slots.
	{"/contacts/{}/appointments", "calendars.events"},
	{"/calendars/events", "calendars.events"},
	{"/calendars/appointments", "calendars.events"},
	{"/calendars/blocked-slots", "calendars.events"},
	{"/calendars/services/bookings", "calendars.events"},
	{"/calendars/{}/free-slots", "calendars.events"},
	// Configuration read beside busy collections: keep it out of their churn.
	{"/opportunities/pipelines", "opportunities.pipelines"},
	{"/opportunities/lost-reason", "opportunities.lost-reason"},
	{"/objects/{}/records", "objects.records"},
	// /locations/{locationId}/<sub> is "locations.<sub>" (customValues, tags, ...):
	// handled in family() as a rule, not one prefix each.
}

// links are families a write also drops, beyond its own: effects GHL has across families.
// Keyed by family (every write of it) or by "METHOD template" (that operation only).
var links = map[string][]string{
	// Calendar settings (hours, slot length, staff) change free slots.
	"calendars": {"calendars.events"},
	// Tagging a contact creates the location tags it did not have yet.
	"POST /contacts/":                        {"locations.tags"},
	"POST /contacts/upsert":                  {"locations.tags"},
	"PUT /contacts/{contactId}":              {"locations.tags"},
	"POST /contacts/{contactId}/tags":        {"locations.tags"},
	"POST /contacts/bulk/tags/update/{type}": {"locations.tags"},
}

// configFamilies change rarely (mostly by hand in the GHL UI): cached longer.
var configFamilies = map[string]bool{
	"custom-fields":             true,
	"locations":                 true,
	"locations.customValues":    true,
	"locations.tags":            true,
	"locations.templates":       true,
	"locations.permissions":     true,
	"locations.timezones":       true,
	"opportunities.pipelines":   true,
	"opportunities.lost-reason": true,
	"users":                     true,
	"calendars":                 true,
	"objects":                   true,
	"associations":              true,
}

// TTLs of the generated table, documented on routes.Route.TTL.
const (
	EntityTTL = 60 * time.Second
	ListTTL   = 30 * time.Second
	QueryTTL  = 10 * time.Minute
	ConfigTTL = 10 * time.Minute
	StaticTTL = time.Hour // data that does not change (timezone list)
)

// Rules applies the policy rules to the operations.
func Rules(ops []Op) ([]Row, error) {
	posts := map[string]bool{}
	for _, op := range ops {
		if op.Method == "POST" {
			posts[op.Template] = true
		}
	}
	all := map[string]bool{}
	for _, op := range ops {
		all[op.Method+" "+op.Template] = true
	}
	for k := range links {
		if strings.Contains(k, " ") && !all[k] {
			return nil, fmt.Errorf("openapi: link key %q is not an operation of the specs", k)
		}
	}
	query := map[string]bool{}
	for _, q := range Queries {
		if !posts[q] {
			return nil, fmt.Errorf("openapi: query route %q is not a POST of the specs", q)
		}
		query[q] = true
	}
	rows := make([]Row, 0, len(ops))
	for _, op := range ops {
		r := Row{Op: op}
		segs := Segments(op.Template)
		r.Resource, r.Entity = family(segs)
		switch {
		case segs[0] == "oauth" || op.Method == "GET" && passGET.MatchString(op.Template):
			r.Policy = "Pass"
		case op.Method == "GET":
			r.Policy = "Read"
		case op.Method == "POST" && query[op.Template]:
			r.Policy = "Query"
		default:
			r.Policy = "Write"
		}
		switch r.Policy {
		case "Read", "Query":
			r.TTL = ttl(r, segs)
			if r.Entity != "" {
				r.Tags = []string{r.Resource + "/{" + r.Entity + "}", r.Resource + "/*"}
			} else {
				r.Tags = []string{r.Resource}
			}
		case "Write":
			r.Invalidates = []string{r.Resource}
			switch {
			case r.Entity != "":
				r.Invalidates = append(r.Invalidates, r.Resource+"/{"+r.Entity+"}")
			case !isCreate(op):
				// Upserts, bulk operations, sends: they change entities whose ids the
				// path does not name.
				r.Invalidates = append(r.Invalidates, r.Resource+"/*")
			}
			r.Invalidates = append(r.Invalidates, links[r.Resource]...)
			r.Invalidates = append(r.Invalidates, links[op.Method+" "+op.Template]...)
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// isCreate tells a POST that only adds an entity (so no cached entity can be wrong
// afterwards) from upserts and actions. Both the operationId and the summary must say
// create: the specs mislabel some operationIds (the bulk tag update is "create-association").
func isCreate(op Op) bool {
	id, sum := strings.ToLower(op.OperationID), strings.ToLower(op.Summary)
	return op.Method == "POST" && strings.HasPrefix(id, "create") && strings.HasPrefix(sum, "create") &&
		!strings.Contains(sum, "update") && !strings.Contains(id, "update")
}

func ttl(r Row, segs []string) time.Duration {
	switch {
	case r.Policy == "Query":
		return QueryTTL
	case r.Resource == "locations.timezones":
		return StaticTTL
	case configFamilies[r.Resource]:
		return ConfigTTL
	case r.Entity != "":
		return EntityTTL
	}
	return ListTTL
}

// family returns the invalidation family of a template's segments and its entity
// parameter name.
func family(segs []string) (fam, entity string) {
	n := 1
	fam = segs[0]
	found := false
	for _, f := range families {
		ps := Segments(f.prefix)
		if hasPrefix(segs, ps) {
			fam, n, found = f.family, len(ps), true
			break
		}
	}
	if !found && segs[0] == "locations" && len(segs) >= 3 && isParam(segs[1]) && !isParam(segs[2]) {
		fam, n = "locations."+segs[2], 3
	}
	if n < len(segs) && isParam(segs[n]) {
		entity = segs[n][1 : len(segs[n])-1]
	}
	return fam, entity
}

func hasPrefix(segs, prefix []string) bool {
	if len(segs) < len(prefix) {
		return false
	}
	for i, p := range prefix {
		if p == "{}" {
			if !isParam(segs[i]) {
				return false
			}
		} else if p != segs[i] {
			return false
		}
	}
	return true
}

func isParam(seg string) bool { return strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") }

// Segments splits a template into its path segments, ignoring a trailing slash.
func Segments(template string) []string {
	return strings.Split(strings.Trim(template, "/"), "/")
}
