package routes_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/ghlproxy/ghlproxy/routes"
)

// mix is a realistic request mix: mostly contact and opportunity reads, searches,
// some writes, an oauth refresh and an unknown path.
var mix = []struct{ method, path string }{
	{"GET", "/contacts/Wx9kLp2QzR8sT4uV6yA1"},
	{"GET", "/contacts/Wx9kLp2QzR8sT4uV6yA1"},
	{"GET", "/contacts/"},
	{"POST", "/contacts/search"},
	{"GET", "/contacts/Wx9kLp2QzR8sT4uV6yA1/notes"},
	{"PUT", "/contacts/Wx9kLp2QzR8sT4uV6yA1"},
	{"POST", "/contacts/upsert"},
	{"GET", "/opportunities/pipelines"},
	{"POST", "/opportunities/search"},
	{"GET", "/opportunities/Pq7rSt8uVw9xYz0aBc1d"},
	{"GET", "/conversations/search"},
	{"GET", "/conversations/Ab1cD2eF3gH4iJ5kL6mN/messages"},
	{"POST", "/conversations/messages"},
	{"GET", "/locations/ve9EPM428h8vShlRW1KT/customFields"},
	{"GET", "/users/"},
	{"GET", "/calendars/events"},
	{"POST", "/oauth/token"},
	{"GET", "/not/a/ghl/route"},
}

func BenchmarkMatch(b *testing.B) {
	tbl := routes.New()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		m := mix[i%len(mix)]
		tbl.Match(m.method, m.path)
	}
}

// BenchmarkMatchRegexpScan is the peer: one anchored regexp per route, tried in order.
// Compare its ns/op with BenchmarkMatch's from the same run.
func BenchmarkMatchRegexpScan(b *testing.B) {
	type re struct {
		method string
		re     *regexp.Regexp
	}
	var res []re
	param := regexp.MustCompile(`\\\{[^}]*\\\}`)
	for _, r := range routes.New().All() {
		pat := param.ReplaceAllString(regexp.QuoteMeta(strings.TrimSuffix(r.Template, "/")), `([^/]+)`)
		res = append(res, re{r.Method, regexp.MustCompile("^" + pat + "/?$")})
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		m := mix[i%len(mix)]
		for _, r := range res {
			if r.method == m.method && r.re.MatchString(m.path) {
				break
			}
		}
	}
}
