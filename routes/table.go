package routes

//go:generate go run ./internal/gen -out table_gen.go

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// row is one line of the generated table (table_gen.go).
type row struct {
	method, template string
	policy           Policy
	ttl              time.Duration
	resource, entity string
	tags, drops      []string
}

// Table matches requests to routes. Build one with New, apply config overrides before
// serving (Override, and the policy fields of the routes Select and All return), then
// share it: Match, Lookup and All are safe for concurrent use once nothing changes the
// routes any more; Override and those fields are for start-up.
type Table struct {
	root   node
	routes []*Route
	byKey  map[string]*Route // "METHOD template"
}

// methods are the HTTP methods routes have; a node keeps one route per method.
const (
	mGET = iota
	mPOST
	mPUT
	mPATCH
	mDELETE
	nMethods
)

func methodIndex(m string) int {
	switch m {
	case "GET":
		return mGET
	case "POST":
		return mPOST
	case "PUT":
		return mPUT
	case "PATCH":
		return mPATCH
	case "DELETE":
		return mDELETE
	}
	return -1
}

// node is one path segment of the trie.
type node struct {
	static map[string]*node
	param  *node
	routes [nMethods]*Route
}

// New returns the built-in table: every operation of HighLevel's v2 and v3 OpenAPI specs,
// with the policy, TTL and invalidation rules of routes/internal/openapi/rules.go. Each
// call returns an independent table, so overrides on one do not leak into another.
func New() *Table {
	t := &Table{byKey: make(map[string]*Route, len(builtin)), routes: make([]*Route, 0, len(builtin))}
	for i := range builtin {
		b := &builtin[i]
		t.add(&Route{Method: b.method, Template: b.template, Policy: b.policy, TTL: b.ttl,
			Resource: b.resource, Entity: b.entity, TagPatterns: b.tags, InvalidatePatterns: b.drops})
	}
	for _, k := range mergeable {
		t.mustLookup(k).Merge = true
	}
	for k, op := range bulkTagOps {
		t.mustLookup(k).BulkTagOp = op
	}
	return t
}

// mustLookup is the route of "METHOD template" k, which the built-in table must have.
func (t *Table) mustLookup(k string) *Route {
	r := t.byKey[k]
	if r == nil {
		panic("routes: the generated table has no route " + k)
	}
	return r
}

// mergeable are the partial updates whose consecutive writes to one entity may merge (see
// Route.Merge).
var mergeable = []string{
	"PUT /contacts/{contactId}",
	"PUT /opportunities/{id}",
}

// BulkTagsPath is GHL's bulk tag endpoint, followed by its {type}: POST with
// {"contacts","tags","locationId"}.
const BulkTagsPath = "/contacts/bulk/tags/update/"

// bulkTagOps are the single-contact tag calls the bulk tag endpoint can do for many contacts
// at once, by its {type} (see Route.BulkTagOp).
var bulkTagOps = map[string]string{
	"POST /contacts/{contactId}/tags":   "add",
	"DELETE /contacts/{contactId}/tags": "remove",
}

func (t *Table) add(r *Route) {
	mi := methodIndex(r.Method)
	if mi < 0 {
		panic("routes: unsupported method " + r.Method) // generated table only has the five
	}
	segs := strings.Split(strings.Trim(r.Template, "/"), "/")
	n := &t.root
	for i, s := range segs {
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
			r.params = append(r.params, paramPos{index: i, name: s[1 : len(s)-1]})
			if n.param == nil {
				n.param = &node{}
			}
			n = n.param
			continue
		}
		if n.static == nil {
			n.static = map[string]*node{}
		}
		c := n.static[s]
		if c == nil {
			c = &node{}
			n.static[s] = c
		}
		n = c
	}
	r.segments = len(segs)
	if n.routes[mi] == nil { // the generator merged shapes already; first one wins
		n.routes[mi] = r
	}
	t.routes = append(t.routes, r)
	t.byKey[r.Method+" "+r.Template] = r
}

// Match returns the route of a request and its path parameters (unescaped), or nil when
// no route matches; the caller labels those OtherTemplate and treats them as Unknown.
// path is the escaped path (r.URL.EscapedPath()). One trailing slash is ignored, so
// "/contacts" and "/contacts/" both match "/contacts/". At each segment a static name
// wins over a parameter, backtracking when the static branch has no route for the
// method: GET /contacts/search/duplicate and GET /contacts/{contactId}/tasks both match.
// A route without parameters costs no allocation; one with parameters costs one (plus
// one per percent-escaped value).
func (t *Table) Match(method, path string) (*Route, Params) {
	mi := methodIndex(method)
	if mi < 0 || len(path) < 2 || path[0] != '/' {
		return nil, nil
	}
	p := path[1:]
	if p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	r := t.root.find(p, mi)
	if r == nil {
		return nil, nil
	}
	if len(r.params) == 0 {
		return r, nil
	}
	ps := make(Params, len(r.params))
	seg, j := 0, 0
	for seg < r.segments {
		s, rest, _ := strings.Cut(p, "/")
		if j < len(r.params) && r.params[j].index == seg {
			v := s
			if strings.IndexByte(s, '%') >= 0 {
				v, _ = url.PathUnescape(s) // find only accepted valid escapes
			}
			ps[j] = Param{Name: r.params[j].name, Value: v}
			j++
		}
		p = rest
		seg++
	}
	return r, ps
}

// find matches the path segments left (p has no leading slash) below n.
func (n *node) find(p string, mi int) *Route {
	seg, rest, more := strings.Cut(p, "/")
	if seg == "" {
		return nil
	}
	escaped := strings.IndexByte(seg, '%') >= 0
	if escaped && !validEscapes(seg) {
		return nil
	}
	if n.static != nil {
		key := seg
		if escaped {
			key, _ = url.PathUnescape(seg)
		}
		if c := n.static[key]; c != nil {
			if r := c.next(rest, more, mi); r != nil {
				return r
			}
		}
	}
	if n.param != nil {
		return n.param.next(rest, more, mi)
	}
	return nil
}

func (n *node) next(rest string, more bool, mi int) *Route {
	if !more {
		return n.routes[mi]
	}
	return n.find(rest, mi)
}

// validEscapes reports whether every '%' in s starts a two-digit hex escape.
func validEscapes(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
			i += 2
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// All returns every route of the table, sorted by template then method. The routes are
// the table's own: change them only at start-up, before serving (see Table).
func (t *Table) All() []*Route { return t.routes }

// Lookup returns the route of a method and template exactly as the specs spell it
// ("/contacts/" with its slash), or nil.
func (t *Table) Lookup(method, template string) *Route { return t.byKey[method+" "+template] }

// Path fills the route's template with parameter values, escaping them, so that
// Match(r.Method, r.Path(ps)) returns r and ps again. Parameters missing from ps are
// left empty.
func (r *Route) Path(ps Params) string {
	if len(r.params) == 0 {
		return r.Template
	}
	var b strings.Builder
	b.Grow(len(r.Template) + 16)
	tpl := r.Template
	for _, pp := range r.params {
		i := strings.Index(tpl, "{"+pp.name+"}")
		b.WriteString(tpl[:i])
		b.WriteString(url.PathEscape(ps.Get(pp.name)))
		tpl = tpl[i+len(pp.name)+2:]
	}
	b.WriteString(tpl)
	return b.String()
}

// ParsePolicy reads a policy name as config spells it: "read", "query", "write", "pass".
func ParsePolicy(s string) (Policy, error) {
	switch strings.ToLower(s) {
	case "read":
		return Read, nil
	case "query":
		return Query, nil
	case "write":
		return Write, nil
	case "pass":
		return Pass, nil
	}
	return Unknown, fmt.Errorf("unknown policy %q (want read, query, write or pass)", s)
}
