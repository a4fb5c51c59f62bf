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
	// TTL is the default cache lifetime for Read and Query routes (config may override).
	TTL time.Duration
	// Resource is the family used for invalidation, e.g. "contacts", "opportunities".
	Resource string
	// Entity is the path parameter that names the entity the route reads or writes
	// (e.g. "contactId"), or "" when it has none (lists, searches, creates).
	Entity string
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
