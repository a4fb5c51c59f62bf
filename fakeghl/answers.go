package fakeghl

//go:generate go run ./internal/answergen -out answers_gen.go

import (
	"net/http"
	"strings"

	"github.com/ghlproxy/ghlproxy/routes"
)

// answerRow is one generated answer (answers_gen.go).
type answerRow struct {
	method, template string
	v3               bool
	status           int
	body             string
}

// answer is a generated success answer for one operation.
type answer struct {
	status int
	body   []byte
}

// addGenerated attaches the generated answers to the routes of the table. Templates that
// the table merged under another parameter name are found by matching a filled-in path.
func (s *Server) addGenerated() {
	for i := range generatedAnswers {
		a := &generatedAnswers[i]
		rt := s.table.Lookup(a.method, a.template)
		if rt == nil {
			rt, _ = s.table.Match(a.method, fillTemplate(a.template))
		}
		e := s.entries[rt]
		if e == nil {
			continue
		}
		v := 0
		if a.v3 {
			v = 1
		}
		if e.answers[v] == nil {
			e.answers[v] = &answer{status: a.status, body: []byte(a.body)}
		}
	}
}

// fillTemplate replaces each {param} with a value no static segment has.
func fillTemplate(template string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(template, '{')
		j := strings.IndexByte(template, '}')
		if i < 0 || j < i {
			b.WriteString(template)
			return b.String()
		}
		b.WriteString(template[:i])
		b.WriteString("fakeghl-param")
		template = template[j+1:]
	}
}

// generated answers with the v3 spec's example when the request says Version: v3 and the
// route has one, else the v2 example.
func (e *entry) generated(version string) reply {
	a := e.answers[0]
	if (version == "v3" || a == nil) && e.answers[1] != nil {
		a = e.answers[1]
	}
	if a == nil {
		return reply{status: http.StatusOK, body: []byte("{}")}
	}
	return reply{status: a.status, body: a.body}
}

// entry is what the stand-in attaches to one route of the table.
type entry struct {
	label  string // "GET /contacts/{contactId}": the Stats key
	handle handler
	// answers are the generated bodies for the v2 (index 0) and v3 (index 1) specs.
	answers [2]*answer
}

// newEntries makes an entry for every route of the table.
func newEntries(t *routes.Table) map[*routes.Route]*entry {
	m := make(map[*routes.Route]*entry, len(t.All()))
	for _, r := range t.All() {
		m[r] = &entry{label: r.Method + " " + r.Template}
	}
	return m
}
