package proxy

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"slices"

	"github.com/ghlproxy/ghlproxy/batcher"
	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
	"github.com/ghlproxy/ghlproxy/routes"
)

// bulkTags returns how a single add-tags or remove-tags call on contact id may share one
// call to GHL's bulk tag endpoint with others, or nil when it may not. It may when the
// bulk call provably does the same to each contact: the body is exactly {"tags":[...]}
// (no other field, no query string), and the token is bound to one location (the bulk
// body needs a locationId; for agency tokens the sidecar does not know it). Calls share a
// bulk call only with the same credential, Version, operation and tag list (order
// included: GHL appends added tags in the order given).
func (h *Handler) bulkTags(r *http.Request, x *exchange, id string, body []byte) *batcher.Bulk {
	op := x.route.BulkTagOp
	if op == "" || x.cred.Class != "Location" || x.cred.ClassID == "" || r.URL.RawQuery != "" || !x.bodyJSON {
		return nil
	}
	var in map[string]json.RawMessage
	var tags []string
	if json.Unmarshal(body, &in) != nil || len(in) != 1 || json.Unmarshal(in["tags"], &tags) != nil || len(tags) == 0 {
		return nil
	}
	canon, _ := json.Marshal(tags)
	loc := x.cred.ClassID
	return &batcher.Bulk{
		Key: x.cred.Hash + "|" + x.version + "|" + op + "|" + loc + "|" + string(canon),
		ID:  id,
		Send: func(ctx context.Context, ids []string) ([]*upstream.Response, error) {
			return h.sendBulkTags(ctx, r, x, op, loc, tags, ids)
		},
	}
}

// sendBulkTags makes the bulk call for ids and answers each id as its single call would.
func (h *Handler) sendBulkTags(ctx context.Context, r *http.Request, x *exchange, op, loc string, tags, ids []string) ([]*upstream.Response, error) {
	body, err := json.Marshal(map[string]any{"contacts": ids, "tags": tags, "locationId": loc})
	if err != nil {
		return nil, err
	}
	out := r.Clone(ctx)
	out.Method = http.MethodPost
	out.URL.Path, out.URL.RawPath, out.URL.RawQuery = routes.BulkTagsPath+op, "", ""
	out.Header.Set("Content-Type", "application/json")
	bx := x.derive()
	bx.label = routes.BulkTagsPath + "{type}"
	bx.route, bx.params = h.cfg.Routes.Match(out.Method, out.URL.EscapedPath())
	if bx.route != nil {
		bx.label = bx.route.Template
	}
	resp, err := h.roundTrip(ctx, nil, out, bx, body)
	if err != nil {
		return nil, err
	}
	if resp.Status < 200 || resp.Status > 299 {
		// No answer per contact to split out: the batcher decides whose it is.
		return nil, &batcher.BulkRefused{Resp: resp}
	}
	return splitBulkTags(resp, op, ids), nil
}

// bulkEntry is one contact's entry in the bulk tag endpoint's answer (UpdateTagsResponseDTO).
type bulkEntry struct {
	ContactID   string   `json:"contactId"`
	Message     string   `json:"message"`
	Type        string   `json:"type"`
	OldTags     []string `json:"oldTags"`
	TagsAdded   []string `json:"tagsAdded"`
	TagsRemoved []string `json:"tagsRemoved"`
}

// splitBulkTags turns a 2xx bulk answer into the single call's answer for each id: a
// success entry becomes {"tags": the contact's tags after the call} with add-tags' 201 or
// remove-tags' 200 (the tags before, with those added appended or those removed taken
// out, which is what the single call answers); an error entry becomes a GHL-shaped 400
// with the entry's message. Fields of the bulk answer other than its own three (a traceId,
// say) are kept in both. An id the answer has no entry for gets a 502: GHL took the call
// and may have applied it.
func splitBulkTags(resp *upstream.Response, op string, ids []string) []*upstream.Response {
	var all map[string]json.RawMessage
	var entries []bulkEntry
	if json.Unmarshal(resp.Body, &all) != nil || json.Unmarshal(all["responses"], &entries) != nil {
		all, entries = nil, nil
	}
	delete(all, "succeded")
	delete(all, "errorCount")
	delete(all, "responses")
	okStatus := http.StatusCreated
	if op == "remove" {
		okStatus = http.StatusOK
	}
	used := make([]bool, len(entries))
	answers := make([]*upstream.Response, len(ids))
	for i, id := range ids {
		status, cause := http.StatusBadGateway, ghlerror.CauseUpstreamUnreachable
		b := ghlerror.Body(status, "GHL's bulk tag answer has no entry for this contact: the tags may have been applied; read the contact before retrying")
		for j, e := range entries {
			if used[j] || e.ContactID != id {
				continue
			}
			used[j], cause = true, ""
			one := make(map[string]any, len(all)+3)
			for k, v := range all {
				one[k] = v
			}
			if e.Type == "success" {
				tags := append([]string{}, e.OldTags...)
				if op == "add" {
					for _, t := range e.TagsAdded {
						if !slices.Contains(tags, t) {
							tags = append(tags, t)
						}
					}
				} else {
					tags = slices.DeleteFunc(tags, func(t string) bool { return slices.Contains(e.TagsRemoved, t) })
				}
				one["tags"] = tags
				status = okStatus
			} else {
				status = http.StatusBadRequest
				maps.Copy(one, ghlerror.Fields(status, e.Message))
			}
			b, _ = json.Marshal(one)
			break
		}
		hdr := resp.Header.Clone()
		hdr.Set("Content-Type", "application/json; charset=utf-8")
		if cause != "" {
			hdr.Set(ghlerror.Header, cause)
		}
		answers[i] = &upstream.Response{Status: status, Header: hdr, Body: b, Date: resp.Date}
	}
	return answers
}
