package fakeghl

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// addStateful installs the routes that keep state, over the generated answers.
func (s *Server) addStateful() {
	for _, h := range []struct {
		method, template string
		handle           handler
	}{
		{"POST", "/contacts/", createContact},
		{"GET", "/contacts/", listContacts},
		{"POST", "/contacts/search", searchContacts},
		{"POST", "/contacts/upsert", upsertContact},
		{"GET", "/contacts/{contactId}", getContact},
		{"PUT", "/contacts/{contactId}", updateContact},
		{"DELETE", "/contacts/{contactId}", deleteContact},
		{"POST", "/contacts/{contactId}/tags", addTags},
		{"DELETE", "/contacts/{contactId}/tags", removeTags},
		{"POST", "/contacts/bulk/tags/update/{type}", bulkTags},

		{"POST", "/opportunities/", createOpportunity},
		{"GET", "/opportunities/search", searchOpportunities},
		{"POST", "/opportunities/search", querySearchOpportunities},
		{"GET", "/opportunities/{id}", getOpportunity},
		{"PUT", "/opportunities/{id}", updateOpportunity},
		{"DELETE", "/opportunities/{id}", deleteOpportunity},
		{"PUT", "/opportunities/{id}/status", updateOpportunityStatus},

		{"POST", "/conversations/", createConversation},
		{"GET", "/conversations/search", searchConversations},
		{"GET", "/conversations/{conversationId}", getConversation},
		{"PUT", "/conversations/{conversationId}", updateConversation},
		{"DELETE", "/conversations/{conversationId}", deleteConversation},
	} {
		rt := s.table.Lookup(h.method, h.template)
		if rt == nil {
			panic("fakeghl: route table has no " + h.method + " " + h.template)
		}
		s.entries[rt].handle = h.handle
	}
}

const duplicateMessage = "This location does not allow duplicated contacts."

// duplicate finds another contact in loc with the same email (any case) or phone.
func duplicate(c *collection, loc string, fields map[string]any, self *record) (*record, string) {
	email, _ := fields["email"].(string)
	phone, _ := fields["phone"].(string)
	if email == "" && phone == "" {
		return nil, ""
	}
	for _, r := range c.list {
		if r == self || r.loc != loc {
			continue
		}
		if e, _ := r.fields["email"].(string); email != "" && strings.EqualFold(e, email) {
			return r, "email"
		}
		if p, _ := r.fields["phone"].(string); phone != "" && p == phone {
			return r, "phone"
		}
	}
	return nil, ""
}

func duplicateReply(r *record, field string) reply {
	b, _ := json.Marshal(map[string]any{
		"statusCode": http.StatusBadRequest,
		"message":    duplicateMessage,
		"meta":       map[string]string{"contactId": r.id, "matchingField": field},
	})
	return reply{status: http.StatusBadRequest, body: b}
}

// newRecord builds an entity from a create body. Call with st.mu held.
func (q *request) newRecord(loc string, body map[string]any, addedKey, updatedKey string) *record {
	r := &record{id: q.st.store.newID(q.seed), loc: loc, added: q.now, fields: make(map[string]any, len(body)+4)}
	for k, v := range body {
		r.fields[k] = v
	}
	r.fields["id"] = r.id
	r.fields["locationId"] = loc
	r.fields[addedKey] = stamp(q.now)
	r.fields[updatedKey] = stamp(q.now)
	return r
}

func createContact(q *request) reply {
	body, raw, loc, bad := q.bodyAt()
	if bad != nil {
		return *bad
	}
	st := q.st.store
	st.mu.Lock()
	defer st.mu.Unlock()
	if dup, field := duplicate(st.contacts, loc, body, nil); dup != nil {
		return duplicateReply(dup, field)
	}
	r := q.newContact(loc, body)
	q.logWrite(r.id, raw, http.StatusCreated, "contacts")
	q.emit(r, "ContactCreate")
	return wrap(http.StatusCreated, "contact", r.enc, "")
}

func (q *request) newContact(loc string, body map[string]any) *record {
	r := q.newRecord(loc, body, "dateAdded", "dateUpdated")
	if _, ok := r.fields["tags"]; !ok {
		r.fields["tags"] = []any{}
	}
	r.encode()
	q.st.store.contacts.add(r)
	return r
}

func getContact(q *request) reply {
	st := q.st.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	r, bad := q.find(st.contacts, "Contact not found")
	if bad != nil {
		return *bad
	}
	return wrap(http.StatusOK, "contact", r.enc, "")
}

func updateContact(q *request) reply {
	body, raw, bad := q.body()
	if bad != nil {
		return *bad
	}
	st := q.st.store
	st.mu.Lock()
	defer st.mu.Unlock()
	r, bad := q.find(st.contacts, "Contact not found")
	if bad != nil {
		return *bad
	}
	if dup, field := duplicate(st.contacts, r.loc, body, r); dup != nil {
		q.logWrite(r.id, raw, http.StatusBadRequest, "")
		return duplicateReply(dup, field)
	}
	r.merge(body, q.now, "dateUpdated")
	q.logWrite(r.id, raw, http.StatusOK, "")
	q.emit(r, contactEvents(body)...)
	return wrap(http.StatusOK, "contact", r.enc, `,"succeded":true`)
}

func upsertContact(q *request) reply {
	body, raw, loc, bad := q.bodyAt()
	if bad != nil {
		return *bad
	}
	st := q.st.store
	st.mu.Lock()
	defer st.mu.Unlock()
	trace := `,"traceId":"` + q.st.store.newID(q.seed) + `"`
	if r, _ := duplicate(st.contacts, loc, body, nil); r != nil {
		r.merge(body, q.now, "dateUpdated")
		q.logWrite(r.id, raw, http.StatusOK, "")
		q.emit(r, contactEvents(body)...)
		return wrap(http.StatusOK, "contact", r.enc, `,"new":false`+trace)
	}
	r := q.newContact(loc, body)
	q.logWrite(r.id, raw, http.StatusOK, "contacts")
	q.emit(r, "ContactCreate")
	return wrap(http.StatusOK, "contact", r.enc, `,"new":true`+trace)
}

func deleteContact(q *request) reply {
	return q.deleteFrom(q.st.store.contacts, "Contact not found", "ContactDelete")
}

func (q *request) deleteFrom(c *collection, notFound, deleted string) reply {
	st := q.st.store
	st.mu.Lock()
	defer st.mu.Unlock()
	r, bad := q.find(c, notFound)
	if bad != nil {
		return *bad
	}
	c.remove(r)
	q.logWrite(r.id, nil, http.StatusOK, "")
	q.emit(r, deleted)
	return reply{status: http.StatusOK, body: []byte(`{"succeded":true}`)}
}

func addTags(q *request) reply    { return q.changeTags(true) }
func removeTags(q *request) reply { return q.changeTags(false) }

func (q *request) changeTags(add bool) reply {
	body, raw, bad := q.body()
	if bad != nil {
		return *bad
	}
	st := q.st.store
	st.mu.Lock()
	defer st.mu.Unlock()
	r, bad := q.find(st.contacts, "Contact not found")
	if bad != nil {
		return *bad
	}
	list, _, _ := q.applyTags(r, strs(body["tags"]), add, false)
	status := http.StatusOK
	if add {
		status = http.StatusCreated
	}
	q.logWrite(r.id, raw, status, "")
	q.emit(r, "ContactTagUpdate")
	b, _ := json.Marshal(map[string]any{"tags": list})
	return reply{status: status, body: b}
}

// applyTags adds tags to r's (those it lacks, appended in order) or removes them (all of
// r's when all is set), and returns r's tags after, and those actually added or removed.
// Call with st.mu held.
func (q *request) applyTags(r *record, tags []string, add, all bool) (after []any, added, removed []string) {
	have := strs(r.fields["tags"])
	if all {
		removed, have = have, nil
	}
	for _, t := range tags {
		i := slices.Index(have, t)
		switch {
		case add && i < 0:
			have = append(have, t)
			added = append(added, t)
		case !add && i >= 0:
			have = slices.Delete(have, i, i+1)
			removed = append(removed, t)
		}
	}
	after = make([]any, len(have))
	for i, t := range have {
		after[i] = t
	}
	r.fields["tags"] = after
	r.fields["dateUpdated"] = stamp(q.now)
	r.encode()
	return after, added, removed
}

// bulkTags is POST /contacts/bulk/tags/update/{type}: the same tags added to (type add) or
// removed from (type remove, or all of them with removeAllTags) many contacts of one
// location, each as the single call would, with one entry per contact in the answer.
func bulkTags(q *request) reply {
	op := q.params[0].Value
	body, raw, loc, bad := q.bodyAt()
	if bad != nil {
		return *bad
	}
	ids, tags := strs(body["contacts"]), strs(body["tags"])
	all, _ := body["removeAllTags"].(bool)
	switch {
	case op != "add" && op != "remove":
		return reply{status: http.StatusUnprocessableEntity,
			body: []byte(`{"statusCode":422,"message":["type must be one of the following values: add, remove"],"error":"Unprocessable Entity"}`)}
	case len(ids) == 0:
		return reply{status: http.StatusUnprocessableEntity,
			body: []byte(`{"statusCode":422,"message":["contacts should not be empty"],"error":"Unprocessable Entity"}`)}
	case all && op != "remove":
		return errorReply(http.StatusBadRequest, "removeAllTags can only be used with remove type")
	case len(tags) == 0 && !all:
		return reply{status: http.StatusUnprocessableEntity,
			body: []byte(`{"statusCode":422,"message":["tags should not be empty"],"error":"Unprocessable Entity"}`)}
	}
	st := q.st.store
	st.mu.Lock()
	defer st.mu.Unlock()
	type entry struct {
		ContactID string `json:"contactId"`
		Message   string `json:"message"`
		Type      string `json:"type"`
		// any: an error entry has none of the three, a success entry has them all, even
		// empty.
		OldTags     any `json:"oldTags,omitempty"`
		TagsAdded   any `json:"tagsAdded,omitempty"`
		TagsRemoved any `json:"tagsRemoved,omitempty"`
	}
	entries := make([]entry, 0, len(ids))
	errors := 0
	for _, id := range ids {
		r := st.contacts.byID[id]
		switch {
		case r == nil:
			entries = append(entries, entry{ContactID: id, Message: "contact not found", Type: "error"})
			errors++
		case r.loc != loc:
			entries = append(entries, entry{ContactID: id, Message: "contact does not belong to location", Type: "error"})
			errors++
		default:
			old := strs(r.fields["tags"])
			_, added, removed := q.applyTags(r, tags, op == "add", all)
			q.logWrite(r.id, raw, http.StatusCreated, "")
			q.emit(r, "ContactTagUpdate")
			entries = append(entries, entry{ContactID: id, Message: "Tags updated", Type: "success",
				OldTags: append([]string{}, old...), TagsAdded: append([]string{}, added...), TagsRemoved: append([]string{}, removed...)})
		}
	}
	b, _ := json.Marshal(map[string]any{"succeded": true, "errorCount": errors, "responses": entries})
	return reply{status: http.StatusCreated, body: b}
}

// strs reads a JSON string or array of strings.
func strs(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// matchesQuery is GHL's free-text contact query: a case-insensitive substring of a name,
// email, phone or company.
func matchesQuery(r *record, query string) bool {
	if query == "" {
		return true
	}
	query = strings.ToLower(query)
	for _, k := range []string{"firstName", "lastName", "name", "contactName", "email", "phone", "companyName"} {
		if v, _ := r.fields[k].(string); v != "" && strings.Contains(strings.ToLower(v), query) {
			return true
		}
	}
	return false
}

// listContacts is the deprecated GET /contacts/: startAfterId paging with an absolute
// meta.nextPageUrl.
func listContacts(q *request) reply {
	loc, bad := q.location(nil)
	if bad != nil {
		return *bad
	}
	qs := q.r.URL.Query()
	limit := intArg(qs.Get("limit"), 20, 100)
	query := qs.Get("query")
	st := q.st.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	p := paginate(st.contacts.list, func(r *record) bool { return r.loc == loc && matchesQuery(r, query) },
		qs.Get("startAfterId"), 0, limit)

	b := append([]byte(`{"contacts":`), nil...)
	b = appendList(b, p.items, nil)
	b = append(b, ',')
	b = appendMeta(b, p, limit, q.base, "/contacts/", func(*record) url.Values {
		v := url.Values{"locationId": {loc}, "limit": {strconv.Itoa(limit)}}
		if query != "" {
			v.Set("query", query)
		}
		return v
	})
	b = append(b, '}')
	return reply{status: http.StatusOK, body: b}
}

// searchContacts is POST /contacts/search: query, filters (field/operator/value, and
// nested groups), pageLimit with page or searchAfter paging, total.
func searchContacts(q *request) reply {
	body, _, loc, bad := q.bodyAt()
	if bad != nil {
		return *bad
	}
	limit := intArg(body["pageLimit"], 20, 500)
	pageNo := intArg(body["page"], 1, 1<<30)
	query, _ := body["query"].(string)
	var after string
	if sa, ok := body["searchAfter"].([]any); ok && len(sa) == 2 {
		after, _ = sa[1].(string)
	}
	f := filter{Group: "AND", Filters: nil}
	if raw, err := json.Marshal(body["filters"]); err == nil {
		_ = json.Unmarshal(raw, &f.Filters)
	}
	st := q.st.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	p := paginate(st.contacts.list, func(r *record) bool {
		return r.loc == loc && matchesQuery(r, query) && f.match(r)
	}, after, (pageNo-1)*limit, limit)
	b := append([]byte(`{"contacts":`), nil...)
	b = appendList(b, p.items, func(b []byte, r *record) []byte {
		b = append(b, `,"searchAfter":[`...)
		b = append(b, millis(r.added)...)
		b = append(b, `,"`...)
		b = append(b, r.id...)
		return append(b, `"]`...)
	})
	b = append(b, `,"total":`...)
	b = strconv.AppendInt(b, int64(p.total), 10)
	b = append(b, '}')
	return reply{status: http.StatusOK, body: b}
}

// filter is one condition of a contact search, or a group of them.
type filter struct {
	Group    string   `json:"group"`
	Filters  []filter `json:"filters"`
	Field    string   `json:"field"`
	Operator string   `json:"operator"`
	Value    any      `json:"value"`
}

func (f filter) match(r *record) bool {
	if f.Field == "" {
		or := strings.EqualFold(f.Group, "OR")
		for _, c := range f.Filters {
			if c.match(r) == or {
				return or
			}
		}
		return !or || len(f.Filters) == 0
	}
	v, present := r.fields[f.Field]
	switch f.Operator {
	case "exists":
		return present && v != nil && v != ""
	case "not_exists":
		return !present || v == nil || v == ""
	case "not_eq", "not_contains":
		return !f.test(v)
	}
	return f.test(v)
}

// test is eq/contains: for tags any of the wanted tags is present; strings compare
// case-insensitively, contains as a substring.
func (f filter) test(v any) bool {
	want := strs(f.Value)
	if len(want) == 0 && f.Value != nil {
		want = []string{strings.Trim(string(mustJSON(f.Value)), `"`)}
	}
	have := strs(v)
	if len(have) == 0 && v != nil {
		have = []string{strings.Trim(string(mustJSON(v)), `"`)}
	}
	contains := strings.Contains(f.Operator, "contains")
	for _, w := range want {
		for _, h := range have {
			if strings.EqualFold(h, w) || contains && strings.Contains(strings.ToLower(h), strings.ToLower(w)) {
				return true
			}
		}
	}
	return false
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
