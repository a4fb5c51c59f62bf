package routes_test

import (
	"reflect"
	"testing"

	"github.com/ghlproxy/ghlproxy/routes"
)

// FuzzMatch: Match never panics, and a match round-trips: filling the template with the
// parameters and matching again gives the same route and parameters.
func FuzzMatch(f *testing.F) {
	for _, m := range mix {
		f.Add(m.method, m.path)
	}
	tbl := routes.New()
	f.Fuzz(func(t *testing.T, method, path string) {
		r, ps := tbl.Match(method, path)
		if r == nil {
			return
		}
		if r.Method != method {
			t.Fatalf("%s %s matched a %s route", method, path, r.Method)
		}
		again := r.Path(ps)
		r2, ps2 := tbl.Match(method, again)
		if r2 != r || !reflect.DeepEqual(ps, ps2) {
			t.Fatalf("%s %s -> %s %v; %s -> %v %v", method, path, r.Template, ps, again, r2, ps2)
		}
		for _, p := range ps {
			if p.Value == "" {
				t.Fatalf("%s %s: empty parameter %s", method, path, p.Name)
			}
		}
	})
}
