package fingerprint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
)

func TestIdenticalMeansIdentical(t *testing.T) {
	base := Request{Method: "POST", Route: "/contacts/search", Path: "/contacts/search", RawQuery: "b=2&a=1",
		Version: "2021-07-28", CredHash: "c1", Body: []byte(`{"locationId":"L","pageLimit":10}`), JSON: true}
	same := []func(r *Request){
		func(r *Request) { r.RawQuery = "a=1&b=2" },
		func(r *Request) { r.Body = []byte("{ \"pageLimit\": 10,\n \"locationId\": \"L\" }") },
		func(r *Request) { r.RawQuery = "a=%31&b=2" },
	}
	differ := map[string]func(r *Request){
		"credential":          func(r *Request) { r.CredHash = "c2" },
		"version":             func(r *Request) { r.Version = "2021-04-15" },
		"body value":          func(r *Request) { r.Body = []byte(`{"locationId":"L","pageLimit":11}`) },
		"number spelling":     func(r *Request) { r.Body = []byte(`{"locationId":"L","pageLimit":10.0}`) },
		"repeated key order":  func(r *Request) { r.RawQuery = "a=1&a=2" },
		"path":                func(r *Request) { r.Path = "/contacts/search/" },
		"method":              func(r *Request) { r.Method = "PUT" },
		"non-JSON whitespace": func(r *Request) { r.JSON = false; r.Body = []byte(`{"locationId":"L", "pageLimit":10}`) },
	}
	want := Of(base)
	for i, m := range same {
		r := base
		m(&r)
		if got := Of(r); got != want {
			t.Errorf("same meaning #%d: fingerprints differ", i)
		}
	}
	for name, m := range differ {
		r := base
		m(&r)
		if Of(r) == want {
			t.Errorf("%s: a different request has the same fingerprint", name)
		}
	}
	a, b := base, base
	a.RawQuery, b.RawQuery = "a=1&a=2", "a=2&a=1"
	if Of(a) == Of(b) {
		t.Error("reordering a repeated key's values changes meaning, but fingerprints are equal")
	}
}

// FuzzCanonicalJSON: canonical form is stable (canonicalising it again changes nothing),
// means the same as the input, and never panics.
func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range []string{`{"b":1,"a":[1,2,{"d":true,"c":null}]}`, `"x"`, `1e400`, `{"a":1}{"b":2}`, `{"\u00e9":"\ud83d\ude00"}`, ` [ ] `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := CanonicalJSON(b)
		if err != nil {
			return
		}
		c2, err := CanonicalJSON(c)
		if err != nil || string(c2) != string(c) {
			t.Fatalf("not stable: %q -> %q -> %q (%v)", b, c, c2, err)
		}
		if !json.Valid(c) {
			t.Fatalf("canonical form is not JSON: %q -> %q", b, c)
		}
	})
}

// FuzzCanonicalQuery: canonicalising twice changes nothing, and never panics.
func FuzzCanonicalQuery(f *testing.F) {
	for _, s := range []string{"b=2&a=1", "a=1&a=2", "q=%zz", "=&&=x", "a+b=c%20d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		c := CanonicalQuery(q)
		if c2 := CanonicalQuery(c); c2 != c {
			t.Fatalf("not stable: %q -> %q -> %q", q, c, c2)
		}
	})
}

// TestOfByteStream pins what is hashed — each field NUL-terminated, then the (canonical)
// body — against a plain streaming computation: fingerprints are Redis keys shared by
// replicas of different versions, so a faster Of must give the same strings.
func TestOfByteStream(t *testing.T) {
	long := strings.Repeat("x", 600) // past Of's stack buffer
	for _, r := range []Request{
		{Method: "GET", Route: "/contacts/{contactId}", Path: "/contacts/abc", Version: "2021-07-28", CredHash: "c1"},
		{Method: "GET", Route: "", Path: "/x", RawQuery: "b=2&a=1", CredHash: "c2"},
		{Method: "POST", Route: "/contacts/search", Path: "/contacts/search", Version: "v3", CredHash: "c3",
			Body: []byte(`{"b":1, "a":[2,1]}`), JSON: true},
		{Method: "POST", Route: "/x", Path: "/x", CredHash: "c4", Body: []byte("not json"), JSON: true},
		{Method: "PUT", Route: "/y", Path: "/" + long, Version: long, CredHash: "c5", Body: []byte(long)},
	} {
		if got, want := Of(r), streamOf(r); got != want {
			t.Errorf("Of(%+v) = %s, want %s", r, got, want)
		}
	}
}

// streamOf is Of computed the plain way: each field NUL-terminated, then the body.
func streamOf(r Request) string {
	h := sha256.New()
	for _, s := range []string{r.Method, r.Route, r.Path, CanonicalQuery(r.RawQuery), r.Version, r.CredHash} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	if c, err := CanonicalJSON(r.Body); r.JSON && err == nil && len(r.Body) > 0 {
		d := sha256.Sum256(append(c, '\n'))
		h.Write([]byte{'c'})
		h.Write(d[:])
	} else if len(r.Body) > 0 {
		h.Write([]byte{'r'})
		h.Write(r.Body)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// FuzzOf builds keys from arbitrary requests: Of agrees with the plain computation (its
// stack buffer and body paths included), a request already in canonical form keeps its key,
// and a change of credential or path always changes it. Fields hold no NUL: net/http rejects
// control bytes in request lines and header values, and the path is the escaped one.
func FuzzOf(f *testing.F) {
	f.Add("GET", "/contacts/{contactId}", "/contacts/abc", "", "2021-07-28", "c1", []byte(nil), false)
	f.Add("POST", "/contacts/search", "/contacts/search", "b=2&a=1", "2021-07-28", "c2", []byte(`{"b":1, "a":[2,1]}`), true)
	f.Add("PUT", "/y", "/"+strings.Repeat("x", 600), "q=%zz", "v", "c3", []byte("not json"), true)
	f.Fuzz(func(t *testing.T, method, route, path, query, version, cred string, body []byte, isJSON bool) {
		for _, s := range []string{method, route, path, query, version, cred} {
			if strings.IndexByte(s, 0) >= 0 {
				return
			}
		}
		r := Request{Method: method, Route: route, Path: path, RawQuery: query, Version: version, CredHash: cred, Body: body, JSON: isJSON}
		key := Of(r)
		if want := streamOf(r); key != want {
			t.Fatalf("Of(%+v) = %s, plain computation %s", r, key, want)
		}
		c := r
		c.RawQuery = CanonicalQuery(query)
		if cb, err := CanonicalJSON(body); isJSON && err == nil && len(body) > 0 {
			c.Body = cb
		}
		if got := Of(c); got != key {
			t.Fatalf("canonical form of %+v has another key: %s, want %s", r, got, key)
		}
		other := r
		other.CredHash += "x"
		if Of(other) == key {
			t.Fatalf("another credential has the same key: %+v", r)
		}
		other = r
		other.Path += "x"
		if Of(other) == key {
			t.Fatalf("another path has the same key: %+v", r)
		}
	})
}

// BenchmarkOf is the key of a cache hit on GET /contacts/{contactId}.
func BenchmarkOf(b *testing.B) {
	r := Request{Method: "GET", Route: "/contacts/{contactId}", Path: "/contacts/ocQHyuzHvysMo5N5VsXc",
		Version: "2021-07-28", CredHash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
	b.ReportAllocs()
	for b.Loop() {
		_ = Of(r)
	}
}
