package fakeghl

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"
)

// record is one stateful entity: a contact, opportunity or conversation.
type record struct {
	id, loc string
	added   time.Time
	fields  map[string]any
	enc     []byte // fields as JSON, rebuilt on every change so reads only copy bytes
}

func (r *record) encode() { r.enc, _ = json.Marshal(r.fields) }

// merge applies a partial update: top-level fields replace, the later write wins; id and
// locationId never change.
func (r *record) merge(body map[string]any, now time.Time, updatedKey string) {
	for k, v := range body {
		if k == "id" || k == "locationId" {
			continue
		}
		r.fields[k] = v
	}
	r.fields[updatedKey] = stamp(now)
	r.encode()
}

// collection is one resource's entities, in creation order.
type collection struct {
	resource string
	byID     map[string]*record
	list     []*record
}

func (c *collection) add(r *record) {
	c.byID[r.id] = r
	c.list = append(c.list, r)
}

func (c *collection) remove(r *record) {
	delete(c.byID, r.id)
	if i := slices.Index(c.list, r); i >= 0 {
		c.list = slices.Delete(c.list, i, i+1)
	}
}

// store holds every entity. One lock: the stand-in's writes are rare next to its reads.
type store struct {
	mu            sync.RWMutex
	ids           uint64
	contacts      *collection
	opportunities *collection
	conversations *collection
}

func newStore() *store {
	mk := func(name string) *collection { return &collection{resource: name, byID: make(map[string]*record)} }
	return &store{contacts: mk("contacts"), opportunities: mk("opportunities"), conversations: mk("conversations")}
}

const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newID returns a 20-character GHL-looking id, reproducible from the seed. Call with
// st.mu held.
func (st *store) newID(seed uint64) string {
	st.ids++
	var b [20]byte
	x := splitmix(seed ^ splitmix(st.ids<<8|streamID))
	for i := range b {
		if i == 10 {
			x = splitmix(x)
		}
		b[i] = idAlphabet[x%uint64(len(idAlphabet))]
		x /= uint64(len(idAlphabet))
	}
	return string(b[:])
}

func stamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// visible says whether the caller may see a record: a Location token sees its location
// only; other tokens (Company, private integration) see every location, like an agency.
func (q *request) visible(r *record) bool {
	return q.c == nil || q.c.location == "" || q.c.location == r.loc
}

// location is the location a request works on: the token's, else locationId (or the
// given alternative key) from the body or query.
func (q *request) location(body map[string]any, keys ...string) (string, *reply) {
	var given string
	for _, k := range append(keys, "locationId") {
		if v, ok := body[k].(string); ok && v != "" {
			given = v
			break
		}
		if v := q.r.URL.Query().Get(k); v != "" {
			given = v
			break
		}
	}
	if q.c != nil && q.c.location != "" {
		if given != "" && given != q.c.location {
			rep := errorReply(http.StatusForbidden, "The token does not have access to this location.")
			return "", &rep
		}
		return q.c.location, nil
	}
	if given == "" {
		rep := reply{status: http.StatusUnprocessableEntity,
			body: []byte(`{"statusCode":422,"message":["locationId should not be empty"],"error":"Unprocessable Entity"}`)}
		return "", &rep
	}
	return given, nil
}

// maxBody bounds request bodies the stand-in reads.
const maxBody = 1 << 20

// body reads the request's JSON object. An empty body is an empty object.
func (q *request) body() (map[string]any, []byte, *reply) {
	raw, err := io.ReadAll(io.LimitReader(q.r.Body, maxBody))
	if err != nil {
		rep := errorReply(http.StatusBadRequest, "could not read the request body")
		return nil, nil, &rep
	}
	m := map[string]any{}
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			rep := errorReply(http.StatusBadRequest, "Unexpected token in JSON body")
			return nil, raw, &rep
		}
	}
	return m, raw, nil
}

// bodyAt reads the body and the location the request works on.
func (q *request) bodyAt() (map[string]any, []byte, string, *reply) {
	body, raw, bad := q.body()
	if bad != nil {
		return nil, nil, "", bad
	}
	loc, bad := q.location(body)
	return body, raw, loc, bad
}

// appendMeta appends GHL's startAfterId paging meta; next builds the query of the absolute
// nextPageUrl to the page after last.
func appendMeta(b []byte, p page, limit int, base, path string, next func(last *record) url.Values) []byte {
	b = append(b, `"meta":{"total":`...)
	b = strconv.AppendInt(b, int64(p.total), 10)
	b = append(b, `,"currentPage":`...)
	b = strconv.AppendInt(b, int64(p.start/limit+1), 10)
	if p.start >= limit {
		b = append(b, `,"prevPage":`...)
		b = strconv.AppendInt(b, int64(p.start/limit), 10)
	} else {
		b = append(b, `,"prevPage":null`...)
	}
	if !p.more {
		return append(b, `,"nextPageUrl":null,"startAfterId":null,"startAfter":null,"nextPage":null}`...)
	}
	last := p.items[len(p.items)-1]
	v := next(last)
	v.Set("startAfter", millis(last.added))
	v.Set("startAfterId", last.id)
	link, _ := json.Marshal(base + path + "?" + v.Encode())
	b = append(b, `,"nextPageUrl":`...)
	b = append(b, link...)
	b = append(b, `,"startAfterId":"`+last.id+`","startAfter":`+millis(last.added)...)
	b = append(b, `,"nextPage":`...)
	b = strconv.AppendInt(b, int64(p.start/limit+2), 10)
	return append(b, '}')
}

// logWrite records a write applied to entity id; created names the resource when the
// write created it.
func (q *request) logWrite(id string, raw []byte, status int, created string) {
	q.st.stats.write(id, Write{
		Method: q.r.Method, Path: q.r.URL.Path, BodyHash: bodyHash(raw), Status: status, Time: q.now,
	}, created)
}

// find returns the record named by the route's path parameter, or the error GHL gives.
func (q *request) find(c *collection, notFound string) (*record, *reply) {
	r := c.byID[q.params[0].Value]
	if r == nil {
		rep := errorReply(http.StatusBadRequest, notFound)
		return nil, &rep
	}
	if !q.visible(r) {
		rep := errorReply(http.StatusForbidden, "The token does not have access to this location.")
		return nil, &rep
	}
	return r, nil
}

// wrap builds {"key":<enc>,...extra} as a reply.
func wrap(status int, key string, enc []byte, extra string) reply {
	b := make([]byte, 0, len(key)+len(enc)+len(extra)+8)
	b = append(b, `{"`...)
	b = append(b, key...)
	b = append(b, `":`...)
	b = append(b, enc...)
	b = append(b, extra...)
	b = append(b, '}')
	return reply{status: status, body: b}
}

// appendList appends a JSON array of records, each with extra fields from more.
func appendList(b []byte, rs []*record, more func(b []byte, r *record) []byte) []byte {
	b = append(b, '[')
	for i, r := range rs {
		if i > 0 {
			b = append(b, ',')
		}
		if more == nil {
			b = append(b, r.enc...)
			continue
		}
		b = append(b, r.enc[:len(r.enc)-1]...)
		b = more(b, r)
		b = append(b, '}')
	}
	return append(b, ']')
}

// page is one page of records matching keep, after the record with id after (if any).
type page struct {
	items []*record
	total int
	start int // index of items[0] among the matches
	more  bool
}

func paginate(list []*record, keep func(*record) bool, after string, offset, limit int) page {
	var all []*record
	for _, r := range list {
		if keep(r) {
			all = append(all, r)
		}
	}
	p := page{total: len(all), start: offset}
	if after != "" {
		p.start = len(all)
		for i, r := range all {
			if r.id == after {
				p.start = i + 1
				break
			}
		}
	}
	if p.start > len(all) {
		p.start = len(all)
	}
	end := min(p.start+limit, len(all))
	p.items = all[p.start:end]
	p.more = end < len(all)
	return p
}

// intArg reads a number from the query or the body, bounded to [1, max].
func intArg(v any, def, max int) int {
	n := def
	switch x := v.(type) {
	case float64:
		n = int(x)
	case string:
		if i, err := strconv.Atoi(x); err == nil {
			n = i
		}
	}
	if n < 1 {
		n = def
	}
	return min(n, max)
}

func millis(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }
