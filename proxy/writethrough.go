package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/ghlproxy/ghlproxy/cache"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
	"github.com/ghlproxy/ghlproxy/routes"
)

// writeOnly are the fields of a write's answer that the read's answer does not have.
var writeOnly = map[string]bool{"succeded": true, "succeeded": true, "new": true, "traceId": true}

// writeThrough stores a successful write's answer as the answer of the read of the same
// record, for the writing credential (cache.write_through): the next read of it is a hit
// instead of a miss. inv is the write's own invalidation; the cache refuses the store if
// anything else invalidated the record meanwhile (cache.Cache.SetAfter), and then the next
// read is a miss, as without write-through. It returns whether the answer was stored.
func (h *Handler) writeThrough(ctx context.Context, r *http.Request, x *exchange, resp *upstream.Response, inv cache.Invalidation) bool {
	wt, ok := x.route.WriteThrough()
	if !ok || !h.cfg.WriteThrough || resp.Status < 200 || resp.Status > 299 {
		return false
	}
	body, id, ok := readAnswer(resp.Body, wt, x.params.Get(wt.IDParam))
	if !ok {
		h.wtRefused.Inc()
		return false
	}
	path := wt.ReadPath(id)
	route, params := h.cfg.Routes.Match(http.MethodGet, path)
	if route == nil || route.Template != wt.Read || route.TTL <= 0 {
		return false
	}
	rx := x.derive()
	rx.route, rx.params, rx.label, rx.policy, rx.bodyJSON = route, params, route.Template, route.Policy, false
	key := keyOf(http.MethodGet, path, "", rx, nil, false) // a GET of the record: no query, no body
	hdr := resp.Header.Clone()
	hdr.Del("Content-Length")
	read := &upstream.Response{Status: http.StatusOK, Header: hdr, Body: body, Date: resp.Date, Sent: resp.Sent}
	tags := h.scopedTags(rx, route.Tags(params))
	err := h.cfg.Cache.SetAfter(ctx, key, x.cred, read, h.policy(rx, http.StatusOK, tags), inv)
	switch {
	case err == nil:
		h.wtStored.Inc()
		return true
	case errors.Is(err, cache.ErrInvalidated):
		h.cfg.Log.Debug("write-through not stored: the record was invalidated meanwhile", "route", x.label)
	case errors.Is(err, cache.ErrExpired):
	default:
		h.cfg.Log.Warn("write-through store failed", "route", x.label, "err", err)
	}
	h.wtRefused.Inc()
	return false
}

// readAnswer turns a write's answer into the read's: the same top-level fields in the same
// order, less those only a write answers with. id is the record's id from the write's path,
// or "" to take it from the record. ok is false when the answer has no record with an id.
func readAnswer(b []byte, wt routes.WriteThrough, id string) (out []byte, recID string, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, "", false
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	found := false
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, "", false
		}
		name, _ := t.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, "", false
		}
		if writeOnly[name] {
			continue
		}
		if name == wt.Field {
			var rec struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(raw, &rec) != nil || rec.ID == "" || (id != "" && rec.ID != id) {
				return nil, "", false // not the record, or another one than the path names
			}
			found, recID = true, rec.ID
		}
		if buf.Len() > 1 {
			buf.WriteByte(',')
		}
		k, _ := json.Marshal(name)
		buf.Write(k)
		buf.WriteByte(':')
		buf.Write(raw)
	}
	buf.WriteByte('}')
	return buf.Bytes(), recID, found
}
