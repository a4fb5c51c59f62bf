// Package routes is the GHL route table: it matches a request's method and path to the
// operation template it belongs to (built from HighLevel's OpenAPI specs) and says how the
// sidecar treats it: read, read-only POST (query), write, pass-through or unknown, the
// default cache TTL, and which cached answers a write makes wrong.
package routes

import "time"

// Policy is how the pipeline handles a route.
type Policy uint8

const (
	// Unknown routes are not in the table: forwarded untouched, still rate limited, and
	// labelled "other" in metrics.
	Unknown Policy = iota
	// Read is a GET: cached, folded.
	Read
	// Query is a POST that only reads (e.g. /contacts/search): cached by its canonical
	// body, folded.
	Query
	// Write changes state: folded within the window (so retries replay), batched,
	// and it invalidates what it changed.
	Write
	// Pass is everything under /oauth/: never cached, folded, batched, replayed or limited.
	Pass
)

func (p Policy) String() string {
	switch p {
	case Read:
		return "read"
	case Query:
		return "query"
	case Write:
		return "write"
	case Pass:
		return "pass"
	}
	return "unknown"
}

// OtherTemplate is the route label of requests that match no route.
const OtherTemplate = "other"

// Route is one operation of the API.
type Route struct {
	Method   string // GET, POST, PUT, PATCH, DELETE
	Template string // "/contacts/{contactId}": the metric label
	Policy   Policy
	// TTL is the default cache lifetime for Read and Query routes (config may override),
	// zero for the others. The built-in table uses:
	//   - 10m for queries (read-only POSTs such as /contacts/search);
	//   - 10m for configuration-like families that change rarely and mostly by hand:
	//     custom fields and values, location tags, templates and permissions, pipelines,
	//     lost reasons, users, calendars (not their events), locations, object schemas,
	//     associations; 1h for /locations/{locationId}/timezones;
	//   - 60s for other reads of one entity (Entity set: /contacts/{contactId}/notes);
	//   - 30s for other lists (/contacts/, /conversations/search, /calendars/events).
	// Writes through the sidecar drop what they change at once, so the TTL mostly
	// bounds staleness after changes made elsewhere (the GHL UI, workflows, other apps).
	TTL time.Duration
	// Resource is the invalidation family, normally the first path segment ("contacts",
	// "opportunities", "conversations", "locations"). Exceptions (reviewed in
	// routes/internal/openapi/rules.go): /locations/{locationId}/<sub> is
	// "locations.<sub>" (e.g. "locations.customValues", "locations.tags"), except
	// customFields, which shares "custom-fields" with /custom-fields/; appointments and
	// free slots are "calendars.events"; pipelines are "opportunities.pipelines";
	// custom object records are "objects.records"; task search is "contacts", because
	// tasks are written under /contacts/{contactId}/tasks.
	Resource string
	// Entity is the path parameter right after the family's prefix, naming the entity the
	// route reads or writes: "contactId" for /contacts/{contactId} and for its
	// sub-resources (/contacts/{contactId}/notes/{id}: a note write changes that
	// contact), or "" when it has none (lists, searches, creates, /contacts/business/{id}).
	Entity string
	// TagPatterns are the invalidation tags a cached answer of this route carries, and
	// InvalidatePatterns the tags a successful write drops; "{name}" stands for the
	// value of path parameter name. See Tags and Invalidates for the scheme.
	TagPatterns, InvalidatePatterns []string

	// The rest is the route's policy past its tags. New sets what is a fact about GHL
	// (Merge, BulkTagOp) and leaves the others zero; whoever serves with the table resolves
	// them once, at start-up, from its configuration (internal/sidecar), and the proxy
	// reads them off the route.

	// StaleWhileRevalidate and StaleIfError: how long past its TTL a cached answer is
	// served while one refresh runs, and when GHL fails (cache.stale_*, cache.routes).
	StaleWhileRevalidate, StaleIfError time.Duration
	// Fold: identical requests of the route fold into one upstream call (dedupe.methods,
	// dedupe.routes); FoldWindow: how long a finished call's answer is then replayed, 0 for
	// not at all (concurrent calls still share one).
	Fold       bool
	FoldWindow time.Duration
	// Merge: a partial update whose consecutive writes to one entity may merge into one
	// call (batch.merge): GHL applies its top-level fields one by one, later wins, arrays
	// and objects replaced whole, so two such writes in a row equal one of their union.
	// Creates, deletes and anything with list semantics (tags, followers) do not merge.
	Merge bool
	// BulkTagOp is the {type} of GHL's bulk tag endpoint (BulkTagsPath) that does this
	// single-contact tag call for many contacts at once ("add", "remove"), or "".
	BulkTagOp string

	params   []paramPos // path parameters in path order
	segments int        // number of path segments, trailing slash ignored
}

// paramPos is a path parameter of a template and the index of its segment.
type paramPos struct {
	index int
	name  string
}

// Param is one path parameter of a match.
type Param struct{ Name, Value string }

// Params are the path parameters of a match, in path order.
type Params []Param

// Get returns the value of the named parameter, or "".
func (ps Params) Get(name string) string {
	for _, p := range ps {
		if p.Name == name {
			return p.Value
		}
	}
	return ""
}
