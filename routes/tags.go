package routes

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Tags returns the invalidation tags a cached answer of this route carries, given the
// parameters of its match. Tags carry no scope: the caller prefixes them with the
// credential's scope key. The built-in scheme, for a family F:
//
//   - "F" is the collection tag: lists and queries carry it (GET /contacts/,
//     POST /contacts/search), and every write in F drops it;
//   - "F/<id>" is one entity: reads of an entity and its sub-resources carry it
//     (GET /contacts/{contactId}, GET /contacts/{contactId}/notes), and writes to that
//     entity or its sub-resources drop it (PUT /contacts/{contactId}, POST
//     /contacts/{contactId}/tags);
//   - "F/*" is every entity of F: entity reads carry it too, and writes that change
//     entities the path does not name drop it (POST /contacts/upsert, bulk updates,
//     POST /conversations/messages). Plain creates (POST /contacts/) do not: a new
//     entity makes no cached entity wrong.
//
// Some writes also drop another family's collection tag where GHL links them (tagging
// a contact adds location tags). Values are path-escaped, so a tag never holds a slash
// or space from a parameter. Tags returns nil for routes that are not cached.
func (r *Route) Tags(p Params) []string {
	if r.Policy != Read && r.Policy != Query {
		return nil
	}
	return expand(r.TagPatterns, p)
}

// Invalidates returns the tags a successful write of this route drops (see Tags), or nil
// for routes that are not writes.
func (r *Route) Invalidates(p Params) []string {
	if r.Policy != Write {
		return nil
	}
	return expand(r.InvalidatePatterns, p)
}

// EntityTags returns the tags of the one entity a write changes in place ("F/<id>" and
// "F/*", the tags a read of that entity carries), or nil when it changes none in place.
// The fold puts them on the write's replay, so that a later write to the same entity,
// which drops "F/<id>", or one to entities the path does not name, which drops "F/*",
// ends it: after dnd on, off, a retry of "on" is a new intent, and is sent.
//
// Writes in place are the PUTs, PATCHes and DELETEs of an entity or its sub-resources, and
// the POSTs of stateSets. Every other POST creates something (a note, a task, a payment, a
// post): a retry of it is a duplicate whatever happened in between, so its replay lasts
// the whole window.
func (r *Route) EntityTags(p Params) []string {
	if r.Policy != Write || r.Entity == "" || r.Resource == "" {
		return nil
	}
	if r.Method == "POST" && !stateSets[r.Template] {
		return nil
	}
	id := p.Get(r.Entity)
	if id == "" {
		return nil
	}
	return []string{r.Resource + "/" + url.PathEscape(id), r.Resource + "/*"}
}

// stateSets are the POST routes that set state of an entity rather than create one, and
// that are idempotent: adding tags or followers to a contact, followers to an opportunity,
// voiding an invoice. A later write can undo what they did (remove the tag again), and
// sending one twice does no harm. Enrolling a contact in a campaign or a workflow is not
// among them: GHL may run the workflow again for a second enrolment, so a retry of one is
// replayed for the whole window, like a create, whatever came between — a later write to
// the contact, or GHL's webhook for the enrolment itself.
var stateSets = map[string]bool{
	"/contacts/{contactId}/tags":      true,
	"/contacts/{contactId}/followers": true,
	"/opportunities/{id}/followers":   true,
	"/invoices/{invoiceId}/void":      true,
}

// EveryScope is the scope of entity tags (see ScopedTag).
const EveryScope = "*"

// ScopedTag is the stored form of route tag t in scope scopeKey (a credential's ScopeKey):
// prefixed with a scope, and hashed, because route tags carry ids from paths
// (contacts/<id>) and the stages keep tags in Redis key names and pub/sub messages. The
// collection tags of a family ("contacts", "contacts/*") are the scope's own, so a write
// through one location's token drops that location's lists and searches for every
// credential of it and nobody else's. An entity's tag ("contacts/<id>") is the same in every
// scope (EveryScope): GHL's ids are unique, so a write through any credential, or a webhook
// from GHL, drops every copy of that entity.
func ScopedTag(scopeKey, t string) string {
	if IsEntityTag(t) {
		scopeKey = EveryScope
	}
	sum := sha256.Sum256([]byte(t))
	return scopeKey + ":" + hex.EncodeToString(sum[:12])
}

// IsEntityTag says whether tag names one entity ("contacts/<id>") by an id GHL made,
// unique across locations, rather than a family's collection ("contacts") or every entity
// of it ("contacts/*"), or an entity of a family named by a name that every location may
// use (localNames).
func IsEntityTag(tag string) bool {
	i := strings.LastIndexByte(tag, '/')
	return i > 0 && tag[i+1:] != "*" && i < len(tag)-1 && !localNames[tag[:i]]
}

// localNames are the families whose tags take a name from the path, not an id: an object's
// schema key ("custom_objects.pet", or "contact" in every location) and a conversation
// channel's type ("SMS"). Their tags stay in the scope that wrote them.
var localNames = map[string]bool{
	"objects":                        true,
	"locations.conversationChannels": true,
}

func expand(patterns []string, p Params) []string {
	if len(patterns) == 0 {
		return nil
	}
	out := make([]string, len(patterns))
	for i, pat := range patterns {
		if strings.IndexByte(pat, '{') < 0 {
			out[i] = pat
			continue
		}
		var b strings.Builder
		for {
			open := strings.IndexByte(pat, '{')
			if open < 0 {
				break
			}
			end := strings.IndexByte(pat[open:], '}') + open
			b.WriteString(pat[:open])
			b.WriteString(url.PathEscape(p.Get(pat[open+1 : end])))
			pat = pat[end+1:]
		}
		b.WriteString(pat)
		out[i] = b.String()
	}
	return out
}

// Override changes one route of the table, as config key cache.routes asks. Zero
// fields keep the table's value.
type Override struct {
	// TTL replaces the cache lifetime (Read and Query routes).
	TTL time.Duration
	// Policy replaces the policy: Read only on GET, Query only on POST, Write not on GET.
	// Routes under /oauth/ stay Pass whatever config says.
	Policy Policy
	// Invalidates, when not nil, replaces the tag patterns a write drops, e.g.
	// ["contacts", "contacts/{contactId}", "opportunities"]; "{name}" must be a path
	// parameter of the template.
	Invalidates []string
}

// Override applies o to the route of method and template (spelled as in the specs, e.g.
// "/contacts/{contactId}"); an empty method means every method the template has. It
// changes the table in place: call it before the table is shared.
func (t *Table) Override(template, method string, o Override) error {
	rs := t.Select(method, template)
	if len(rs) == 0 {
		return fmt.Errorf("cache.routes: no route %s %s in the table", method, template)
	}
	for _, r := range rs {
		if err := r.check(o); err != nil {
			return fmt.Errorf("cache.routes: %s %s: %w", r.Method, r.Template, err)
		}
	}
	for _, r := range rs {
		r.apply(o)
	}
	return nil
}

// Select returns the route of method and template, or with method "" the routes of
// template under every method, as configuration keys name routes ("METHOD template" or
// "template"; see config.SplitRoute).
func (t *Table) Select(method, template string) []*Route {
	if method != "" {
		if r := t.Lookup(strings.ToUpper(method), template); r != nil {
			return []*Route{r}
		}
		return nil
	}
	var rs []*Route
	for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		if r := t.Lookup(m, template); r != nil {
			rs = append(rs, r)
		}
	}
	return rs
}

func (r *Route) check(o Override) error {
	if o.TTL < 0 {
		return fmt.Errorf("ttl %v is negative", o.TTL)
	}
	if o.Policy != Unknown && o.Policy != r.Policy {
		switch {
		case strings.HasPrefix(r.Template, "/oauth/"):
			return fmt.Errorf("routes under /oauth/ are always pass")
		case o.Policy == Read && r.Method != "GET":
			return fmt.Errorf("policy read needs GET")
		case o.Policy == Query && r.Method != "POST":
			return fmt.Errorf("policy query needs POST")
		case o.Policy == Write && r.Method == "GET":
			return fmt.Errorf("policy write needs POST, PUT, PATCH or DELETE")
		}
	}
	for _, pat := range o.Invalidates {
		if pat == "" {
			return fmt.Errorf("empty invalidation tag")
		}
		for rest := pat; ; {
			open := strings.IndexByte(rest, '{')
			if open < 0 {
				break
			}
			end := strings.IndexByte(rest[open:], '}')
			if end < 0 {
				return fmt.Errorf("invalidation tag %q: unclosed {", pat)
			}
			name := rest[open+1 : open+end]
			if !r.hasParam(name) {
				return fmt.Errorf("invalidation tag %q: %q is not a parameter of the template", pat, name)
			}
			rest = rest[open+end+1:]
		}
	}
	return nil
}

func (r *Route) hasParam(name string) bool {
	for _, p := range r.params {
		if p.name == name {
			return true
		}
	}
	return false
}

func (r *Route) apply(o Override) {
	if o.Policy != Unknown && o.Policy != r.Policy {
		r.Policy = o.Policy
		// A route that changes kind gets the default tags of its new kind.
		switch r.Policy {
		case Read, Query:
			if r.TTL == 0 {
				r.TTL = 30 * time.Second
				if r.Policy == Query {
					r.TTL = 10 * time.Minute
				}
			}
			if r.TagPatterns == nil {
				r.TagPatterns = []string{r.Resource}
				if r.Entity != "" {
					r.TagPatterns = []string{r.Resource + "/{" + r.Entity + "}", r.Resource + "/*"}
				}
			}
		case Write:
			if r.InvalidatePatterns == nil {
				r.InvalidatePatterns = []string{r.Resource, r.Resource + "/*"}
				if r.Entity != "" {
					r.InvalidatePatterns = []string{r.Resource, r.Resource + "/{" + r.Entity + "}"}
				}
			}
		}
	}
	if o.TTL > 0 {
		r.TTL = o.TTL
	}
	if o.Invalidates != nil {
		r.InvalidatePatterns = append([]string(nil), o.Invalidates...)
	}
}
