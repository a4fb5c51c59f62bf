package webhook

import (
	"net/url"
	"strings"

	"github.com/ghlproxy/ghlproxy/routes"
)

// effect is one thing an event changed, in the route table's terms: what a successful write
// of route (a "METHOD template" of the table) with the given path parameters would have
// made wrong — or, with entity set, only that one entity's own tag. Parameters and the
// entity's id are read from the event's fields ("id", "appointment.contactId").
type effect struct {
	route  string
	params map[string]string // path parameter -> event field
	entity string            // a family ("contacts"): just "<family>/<id>"
	field  string            // the event field holding the entity's id
}

func via(route string, params ...string) effect {
	e := effect{route: route}
	if len(params) > 0 {
		e.params = map[string]string{}
		for i := 0; i+1 < len(params); i += 2 {
			e.params[params[i]] = params[i+1]
		}
	}
	return e
}

func entity(family, field string) effect { return effect{entity: family, field: field} }

// events maps the webhook types GHL documents for the families the sidecar caches to what
// each changed. Every event also names its location (locationId), whose scopes the
// collection tags are dropped for. Types not listed are answered 2xx and counted as
// unknown.
var events = map[string][]effect{
	"ContactCreate":    {via("POST /contacts/")},
	"ContactUpdate":    {via("PUT /contacts/{contactId}", "contactId", "id")},
	"ContactDelete":    {via("DELETE /contacts/{contactId}", "contactId", "id")},
	"ContactTagUpdate": {via("POST /contacts/{contactId}/tags", "contactId", "id")},
	"ContactDndUpdate": {via("PUT /contacts/{contactId}", "contactId", "id")},

	"OpportunityCreate":              {via("POST /opportunities/"), entity("contacts", "contactId")},
	"OpportunityUpdate":              {via("PUT /opportunities/{id}", "id", "id")},
	"OpportunityDelete":              {via("DELETE /opportunities/{id}", "id", "id"), entity("contacts", "contactId")},
	"OpportunityStatusUpdate":        {via("PUT /opportunities/{id}/status", "id", "id")},
	"OpportunityStageUpdate":         {via("PUT /opportunities/{id}", "id", "id")},
	"OpportunityMonetaryValueUpdate": {via("PUT /opportunities/{id}", "id", "id")},
	"OpportunityAssignedToUpdate":    {via("PUT /opportunities/{id}", "id", "id")},

	// Appointments nest their fields under "appointment"; a contact's appointments are read
	// under the contact.
	"AppointmentCreate": {via("POST /calendars/events/appointments"), entity("contacts", "appointment.contactId")},
	"AppointmentUpdate": {via("PUT /calendars/events/appointments/{eventId}", "eventId", "appointment.id"), entity("contacts", "appointment.contactId")},
	"AppointmentDelete": {via("PUT /calendars/events/appointments/{eventId}", "eventId", "appointment.id"), entity("contacts", "appointment.contactId")},

	// Tasks and notes are a contact's sub-resources: their writes drop the contact.
	"TaskCreate":   {via("POST /contacts/{contactId}/tasks", "contactId", "contactId")},
	"TaskComplete": {via("PUT /contacts/{contactId}/tasks/{taskId}", "contactId", "contactId", "taskId", "id")},
	"TaskDelete":   {via("DELETE /contacts/{contactId}/tasks/{taskId}", "contactId", "contactId", "taskId", "id")},
	"NoteCreate":   {via("POST /contacts/{contactId}/notes", "contactId", "contactId")},
	"NoteUpdate":   {via("PUT /contacts/{contactId}/notes/{id}", "contactId", "contactId", "id", "id")},
	"NoteDelete":   {via("DELETE /contacts/{contactId}/notes/{id}", "contactId", "contactId", "id", "id")},

	// A message changes its conversation (its messages, its last message, unread count).
	"InboundMessage":           {via("PUT /conversations/{conversationId}", "conversationId", "conversationId")},
	"OutboundMessage":          {via("PUT /conversations/{conversationId}", "conversationId", "conversationId")},
	"ConversationUnreadUpdate": {via("PUT /conversations/{conversationId}", "conversationId", "id")},
}

// Types lists the event types the receiver applies, for metrics labels and docs.
func Types() []string {
	out := make([]string, 0, len(events))
	for t := range events {
		out = append(out, t)
	}
	return out
}

// field reads a string field of an event by a dotted path ("appointment.contactId").
func field(ev map[string]any, path string) string {
	var v any = ev
	for _, part := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = m[part]
	}
	s, _ := v.(string)
	return s
}

// tagsOf is what event ev changed, as route tags (not yet scoped): the invalidations of its
// effects' routes, whose parameters the event names. An effect whose parameter the event
// lacks contributes nothing (it could not say which entity).
func tagsOf(t *routes.Table, typ string, ev map[string]any) []string {
	var tags []string
	seen := map[string]bool{}
	add := func(tag string) {
		if !seen[tag] {
			seen[tag] = true
			tags = append(tags, tag)
		}
	}
	for _, e := range events[typ] {
		if e.entity != "" {
			if id := field(ev, e.field); id != "" {
				add(e.entity + "/" + url.PathEscape(id)) // as the route table spells ids in tags
			}
			continue
		}
		method, template, _ := strings.Cut(e.route, " ")
		r := t.Lookup(method, template)
		if r == nil {
			continue // a route config turned into something else: nothing to say
		}
		ps := make(routes.Params, 0, len(e.params))
		complete := true
		for name, f := range e.params {
			v := field(ev, f)
			if v == "" {
				complete = false
				break
			}
			ps = append(ps, routes.Param{Name: name, Value: v})
		}
		if !complete {
			continue
		}
		for _, tag := range r.Invalidates(ps) {
			add(tag)
		}
	}
	return tags
}
