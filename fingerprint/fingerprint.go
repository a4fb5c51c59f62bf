// Package fingerprint computes the identity of a request: two requests with the same
// fingerprint mean the same thing to GHL and may share one answer. The cache key and the
// fold key are both fingerprints, so the two can never disagree about what "identical" is.
package fingerprint

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"sort"
	"strings"
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
		h := sha256.New()
		h.Write(b)
		if c, ok := canonicalBody(r.Body, r.JSON); ok {
			h.Write(c)
		} else {
			h.Write(r.Body)
		}
		h.Sum(sum[:0])
	}
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

func canonicalBody(b []byte, isJSON bool) ([]byte, bool) {
	if !isJSON {
		return nil, false
	}
	c, err := CanonicalJSON(b)
	return c, err == nil
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

// CanonicalJSON re-encodes a JSON document with object keys sorted and insignificant
// whitespace removed. Numbers keep their exact text (json.Number), so 1 and 1.0 stay
// different, as they may be to GHL.
func CanonicalJSON(b []byte) ([]byte, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, &json.SyntaxError{Offset: d.InputOffset()}
	}
	var out bytes.Buffer
	// encoding/json sorts map keys, which is exactly the canonical form we need.
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(out.Bytes(), "\n"), nil
}
