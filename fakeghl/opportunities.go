package fakeghl

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

func createOpportunity(q *request) reply {
	body, raw, loc, bad := q.bodyAt()
	if bad != nil {
		return *bad
	}
	st := q.st.store
	st.mu.Lock()
	defer st.mu.Unlock()
	r := q.newRecord(loc, body, "createdAt", "updatedAt")
	if _, ok := r.fields["status"]; !ok {
		r.fields["status"] = "open"
	}
	r.encode()
	st.opportunities.add(r)
	q.logWrite(r.id, raw, http.StatusCreated, "opportunities")
	q.emit(r, "OpportunityCreate")
	return wrap(http.StatusCreated, "opportunity", r.enc, "")
}

func getOpportunity(q *request) reply {
	st := q.st.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	r, bad := q.find(st.opportunities, "Opportunity not found")
	if bad != nil {
		return *bad
	}
	return wrap(http.StatusOK, "opportunity", r.enc, "")
}

func updateOpportunity(q *request) reply {
	r, rep := q.update(q.st.store.opportunities, "Opportunity not found", "updatedAt", opportunityEvents)
	if r == nil {
		return rep
	}
	return wrap(http.StatusOK, "opportunity", r.enc, "")
}

func updateOpportunityStatus(q *request) reply {
	r, rep := q.update(q.st.store.opportunities, "Opportunity not found", "updatedAt",
		func(map[string]any) []string { return []string{"OpportunityStatusUpdate"} })
	if r == nil {
		return rep
	}
	return reply{status: http.StatusOK, body: []byte(`{"succeded":true}`)}
}

func deleteOpportunity(q *request) reply {
	return q.deleteFrom(q.st.store.opportunities, "Opportunity not found", "OpportunityDelete")
}

// update merges the body into the record named by the first path parameter and reports
// the events of the change (events of the body). It returns the record's state after the
// merge, or nil and the error to answer.
func (q *request) update(c *collection, notFound, updatedKey string, events func(map[string]any) []string) (*record, reply) {
	body, raw, bad := q.body()
	if bad != nil {
		return nil, *bad
	}
	st := q.st.store
	st.mu.Lock()
	defer st.mu.Unlock()
	r, bad := q.find(c, notFound)
	if bad != nil {
		return nil, *bad
	}
	r.merge(body, q.now, updatedKey)
	q.logWrite(r.id, raw, http.StatusOK, "")
	q.emit(r, events(body)...)
	return &record{id: r.id, loc: r.loc, enc: r.enc}, reply{}
}

// opportunityFilter matches the common filters of both opportunity searches.
func opportunityFilter(loc, query, contact, status, pipeline string) func(*record) bool {
	query = strings.ToLower(query)
	return func(r *record) bool {
		if r.loc != loc {
			return false
		}
		if query != "" {
			name, _ := r.fields["name"].(string)
			if !strings.Contains(strings.ToLower(name), query) {
				return false
			}
		}
		for k, want := range map[string]string{"contactId": contact, "status": status, "pipelineId": pipeline} {
			if want != "" && want != "all" {
				if v, _ := r.fields[k].(string); v != want {
					return false
				}
			}
		}
		return true
	}
}

// searchOpportunities is GET /opportunities/search (location_id, q, startAfterId paging,
// absolute meta.nextPageUrl).
func searchOpportunities(q *request) reply {
	loc, bad := q.location(nil, "location_id")
	if bad != nil {
		return *bad
	}
	qs := q.r.URL.Query()
	limit := intArg(qs.Get("limit"), 20, 100)
	pageNo := intArg(qs.Get("page"), 1, 1<<30)
	st := q.st.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	p := paginate(st.opportunities.list,
		opportunityFilter(loc, qs.Get("q"), qs.Get("contact_id"), qs.Get("status"), qs.Get("pipeline_id")),
		qs.Get("startAfterId"), (pageNo-1)*limit, limit)
	b := append([]byte(`{"opportunities":`), nil...)
	b = appendList(b, p.items, nil)
	b = append(b, ',')
	b = appendMeta(b, p, limit, q.base, "/opportunities/search", func(*record) url.Values {
		v := url.Values{}
		for k, vs := range qs {
			v[k] = vs
		}
		v.Set("location_id", loc)
		v.Del("page")
		return v
	})
	b = append(b, `,"aggregations":{}}`...)
	return reply{status: http.StatusOK, body: b}
}

// querySearchOpportunities is POST /opportunities/search: locationId, query, limit, page.
func querySearchOpportunities(q *request) reply {
	body, _, loc, bad := q.bodyAt()
	if bad != nil {
		return *bad
	}
	limit := intArg(body["limit"], 20, 500)
	pageNo := intArg(body["page"], 1, 1<<30)
	query, _ := body["query"].(string)
	st := q.st.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	p := paginate(st.opportunities.list, opportunityFilter(loc, query, "", "", ""), "", (pageNo-1)*limit, limit)
	b := append([]byte(`{"opportunities":`), nil...)
	b = appendList(b, p.items, nil)
	b = append(b, `,"total":`...)
	b = strconv.AppendInt(b, int64(p.total), 10)
	b = append(b, `,"aggregations":{}}`...)
	return reply{status: http.StatusOK, body: b}
}

func createConversation(q *request) reply {
	body, raw, loc, bad := q.bodyAt()
	if bad != nil {
		return *bad
	}
	st := q.st.store
	st.mu.Lock()
	defer st.mu.Unlock()
	r := q.newRecord(loc, body, "dateAdded", "dateUpdated")
	r.fields["deleted"] = false
	r.encode()
	st.conversations.add(r)
	q.logWrite(r.id, raw, http.StatusCreated, "conversations")
	return wrap(http.StatusCreated, "conversation", r.enc, `,"success":true`)
}

func getConversation(q *request) reply {
	st := q.st.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	r, bad := q.find(st.conversations, "Conversation not found")
	if bad != nil {
		return *bad
	}
	return reply{status: http.StatusOK, body: append([]byte(nil), r.enc...)}
}

func updateConversation(q *request) reply {
	r, rep := q.update(q.st.store.conversations, "Conversation not found", "dateUpdated", conversationEvents)
	if r == nil {
		return rep
	}
	return wrap(http.StatusOK, "conversation", r.enc, `,"success":true`)
}

func deleteConversation(q *request) reply {
	return q.deleteFrom(q.st.store.conversations, "Conversation not found", "")
}

// searchConversations is GET /conversations/search: locationId, contactId, query, limit.
func searchConversations(q *request) reply {
	loc, bad := q.location(nil)
	if bad != nil {
		return *bad
	}
	qs := q.r.URL.Query()
	limit := intArg(qs.Get("limit"), 20, 100)
	contact, query := qs.Get("contactId"), strings.ToLower(qs.Get("query"))
	st := q.st.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	p := paginate(st.conversations.list, func(r *record) bool {
		if r.loc != loc {
			return false
		}
		if c, _ := r.fields["contactId"].(string); contact != "" && c != contact {
			return false
		}
		return query == "" || strings.Contains(strings.ToLower(string(r.enc)), query)
	}, "", 0, limit)
	b := append([]byte(`{"conversations":`), nil...)
	b = appendList(b, p.items, nil)
	b = append(b, `,"total":`...)
	b = strconv.AppendInt(b, int64(p.total), 10)
	b = append(b, '}')
	return reply{status: http.StatusOK, body: b}
}
