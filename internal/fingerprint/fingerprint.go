// Package fingerprint computes the identity of a request: two requests with the same
// fingerprint mean the same thing to GHL and may share one answer. The cache key and the
// fold key are both fingerprints, so the two can never disagree about what "identical" is.
package fingerprint

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"sort"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
)

// Request is what a fingerprint is made of.
type Request struct {
	Method   string
	Route    string // route template, or "" for unknown routes
	Path     string // escaped path as sent
	RawQuery string
	Version  string // the GHL Version header
	CredHash string // identity.Credential.Hash
	Body     []byte
	// JSON says the body is JSON and may be canonicalised; other bodies count byte for byte.
	JSON bool
}

// Of returns the fingerprint of r as 64 hex characters.
func Of(r Request) string {
	// The fields go through one buffer on the stack: this runs on every cache hit, where a
	// hash.Hash, its Sum and hex.EncodeToString cost four allocations.
	var stack [512]byte
	b := stack[:0]
	for _, s := range [...]string{r.Method, r.Route, r.Path, CanonicalQuery(r.RawQuery), r.Version, r.CredHash} {
		b = append(b, s...)
		b = append(b, 0)
	}
	var sum [sha256.Size]byte
	if len(r.Body) == 0 {
		sum = sha256.Sum256(b)
	} else {
		// A body counts in its canonical form when it has one (by the digest of that form),
		// else byte for byte; the first byte says which, so that no raw body shares a key
		// with a canonical one.
		h := sha256.New()
		h.Write(b)
		if d, ok := canonicalDigest(r.Body, r.JSON); ok {
			h.Write([]byte{'c'})
			h.Write(d[:])
		} else {
			h.Write([]byte{'r'})
			h.Write(r.Body)
		}
		h.Sum(sum[:0])
	}
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

var canonicalOptions = []jsontext.Options{
	jsontext.ReorderRawObjects(true),
	jsontext.CanonicalizeRawInts(false), jsontext.CanonicalizeRawFloats(false),
}

// canonicalDigest is the SHA-256 of CanonicalJSON(b) and a newline (the encoder ends every
// top-level value with one), computed without holding the canonical form beside b: the
// encoder streams it into the hash, buffering only the value it reorders. A 10 MiB search body lifts the heap by about twice its size, where a
// decoding into any took twenty times that (BenchmarkCanonicalDigest).
func canonicalDigest(b []byte, isJSON bool) (d [sha256.Size]byte, ok bool) {
	if !isJSON {
		return d, false
	}
	h := sha256.New()
	if jsontext.NewEncoder(h, canonicalOptions...).WriteValue(jsontext.Value(b)) != nil {
		return d, false
	}
	h.Sum(d[:0])
	return d, true
}

// CanonicalQuery sorts parameters by key and keeps the order of a repeated key's values,
// which is meaningful to some GHL routes (a repeated key is a list). "b=2&a=1" and
// "a=1&b=2" fold; "a=1&a=2" and "a=2&a=1" do not.
func CanonicalQuery(raw string) string {
	if raw == "" {
		return ""
	}
	parts := strings.Split(raw, "&")
	type kv struct {
		k, v string
		i    int
	}
	kvs := make([]kv, 0, len(parts))
	for i, p := range parts {
		if p == "" {
			continue
		}
		k, v, _ := strings.Cut(p, "=")
		// Unescape so that "a%20b" and "a+b" style differences in encoding of the same
		// value fold; a value that does not unescape is kept as sent.
		if uk, err := url.QueryUnescape(k); err == nil {
			k = uk
		}
		if uv, err := url.QueryUnescape(v); err == nil {
			v = uv
		}
		kvs = append(kvs, kv{k, v, i})
	}
	sort.SliceStable(kvs, func(a, b int) bool { return kvs[a].k < kvs[b].k })
	var sb strings.Builder
	for i, p := range kvs {
		if i > 0 {
			sb.WriteByte('&')
		}
		sb.WriteString(url.QueryEscape(p.k))
		sb.WriteByte('=')
		sb.WriteString(url.QueryEscape(p.v))
	}
	return sb.String()
}

// CanonicalJSON re-encodes one JSON document with object members in RFC 8785 order,
// strings in their shortest escaping and insignificant whitespace removed. Numbers keep
// their exact text, so 1 and 1.0 stay different, as they may be to GHL.
//
// It refuses — and the body then counts byte for byte — what has no single meaning: invalid
// UTF-8 or a lone surrogate (which a decoding into Go strings would map to U+FFFD, so that
// "\xff" and "\xfe" met), duplicate member names, and anything after the document.
//
// jsontext (github.com/go-json-experiment/json, the proposal that became encoding/json/v2)
// reformats the document in one pass over its bytes, reordering each object's members in
// its output, instead of building a tree of Go maps and values: memory stays a small
// multiple of the body, and the refusals above are its own validation.
func CanonicalJSON(b []byte) ([]byte, error) {
	return jsontext.AppendFormat(make([]byte, 0, len(b)), b, canonicalOptions...)
}
