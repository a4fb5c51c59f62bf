package routes

import (
	"strings"
	"testing"
)

// Every write listed for write-through is a write of the table, and its read a cached GET
// whose one parameter is the record's id.
func TestWriteThroughRoutes(t *testing.T) {
	tb := New()
	for name, wt := range writeThroughs {
		method, tmpl, _ := strings.Cut(name, " ")
		path := strings.NewReplacer("{contactId}", "c1", "{id}", "o1").Replace(tmpl)
		r, _ := tb.Match(method, path)
		if r == nil || r.Method+" "+r.Template != name || r.Policy != Write {
			t.Errorf("%s: the table has %+v", name, r)
			continue
		}
		if got, ok := r.WriteThrough(); !ok || got != wt {
			t.Errorf("%s: WriteThrough() = %+v, %v", name, got, ok)
		}
		read, params := tb.Match("GET", wt.ReadPath("rec/1"))
		if read == nil || read.Template != wt.Read || read.Policy != Read || read.TTL <= 0 {
			t.Errorf("%s: read %s is %+v, want a cached GET", name, wt.Read, read)
			continue
		}
		if len(params) != 1 || params[0].Value != "rec/1" {
			t.Errorf("%s: read path parameters %+v, want the id alone", name, params)
		}
	}
	if r, _ := tb.Match("POST", "/contacts/"); r == nil {
		t.Fatal("POST /contacts/ missing")
	} else if _, ok := r.WriteThrough(); ok {
		t.Error("POST /contacts/ is written through, but its answer is not the record GET returns")
	}
}
