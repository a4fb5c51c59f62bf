package routes

import (
	"net/url"
	"strings"
)

// WriteThrough says how a write's answer stands in for the answer of a read of the same
// record (cache.write_through). Per GHL's specs these writes answer with the record the
// read returns, under the same field ({"contact": …}, {"opportunity": …}); POST /contacts/
// does not (its record lacks fields the read has), and is not listed.
type WriteThrough struct {
	// Read is the read's template, "/contacts/{contactId}"; its one parameter is the id.
	Read string
	// Field holds the record in both answers.
	Field string
	// IDParam is the write's path parameter with the record's id; "" when the id is the
	// record's own "id" (creates and upserts).
	IDParam string
}

var writeThroughs = map[string]WriteThrough{
	"PUT /contacts/{contactId}": {Read: "/contacts/{contactId}", Field: "contact", IDParam: "contactId"},
	"POST /contacts/upsert":     {Read: "/contacts/{contactId}", Field: "contact"},
	"PUT /opportunities/{id}":   {Read: "/opportunities/{id}", Field: "opportunity", IDParam: "id"},
	"POST /opportunities/":      {Read: "/opportunities/{id}", Field: "opportunity"},
}

// WriteThrough returns how the route's answer stands in for a read's, if it can.
func (r *Route) WriteThrough() (WriteThrough, bool) {
	if r == nil {
		return WriteThrough{}, false
	}
	wt, ok := writeThroughs[r.Method+" "+r.Template]
	return wt, ok
}

// ReadPath is the read's path for the record id, escaped as a client would send it.
func (wt WriteThrough) ReadPath(id string) string {
	i, j := strings.IndexByte(wt.Read, '{'), strings.IndexByte(wt.Read, '}')
	return wt.Read[:i] + url.PathEscape(id) + wt.Read[j+1:]
}
