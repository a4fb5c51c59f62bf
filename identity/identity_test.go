package identity

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

func jwt(claims map[string]any) string {
	b, _ := json.Marshal(claims)
	return "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString(b) + ".sig"
}

func TestScopes(t *testing.T) {
	r := NewResolver("s")
	loc := jwt(map[string]any{"authClass": "Location", "authClassId": "L1", "oauthMeta": map[string]any{"client": "app1"}})
	loc2 := jwt(map[string]any{"authClass": "Location", "authClassId": "L1", "oauthMeta": map[string]any{"client": "app1"}, "iat": 2})
	other := jwt(map[string]any{"authClass": "Location", "authClassId": "L1", "oauthMeta": map[string]any{"client": "app2"}})
	a, b, c := r.Resolve("Bearer "+loc), r.Resolve("Bearer "+loc2), r.Resolve("Bearer "+other)
	if a.Scope != "Location:L1 app:app1" || a.Scope != b.Scope || a.ScopeKey != b.ScopeKey {
		t.Fatalf("two tokens of one app and location: scopes %q %q", a.Scope, b.Scope)
	}
	if a.Hash == b.Hash || a.EncKey == b.EncKey {
		t.Fatal("two tokens share a credential hash or an encryption key")
	}
	if c.ScopeKey == a.ScopeKey {
		t.Fatal("two apps on one location share a scope: GHL counts them apart")
	}
	pit := r.Resolve("Bearer pit-1234")
	if !strings.HasPrefix(pit.Scope, "token:") || strings.Contains(pit.Scope, "pit-1234") {
		t.Fatalf("opaque token scope %q", pit.Scope)
	}
	if anon := r.Resolve(""); !anon.Anonymous {
		t.Fatal("empty header not anonymous")
	}
	if NewResolver("other").Resolve("Bearer pit-1234").Hash == pit.Hash {
		t.Fatal("hash not keyed by the secret")
	}
}

// FuzzResolve: any header resolves without panicking, and nothing derived from it that
// leaves the process (hash, scope key) contains the token.
func FuzzResolve(f *testing.F) {
	f.Add("Bearer " + jwt(map[string]any{"authClass": "Company", "authClassId": "C"}))
	f.Add("Bearer a.b.c")
	f.Add("bearer pit-xyz")
	f.Add("Basic Zm9vOmJhcg==")
	f.Add("Bearer ..")
	r := NewResolver("fuzz")
	f.Fuzz(func(t *testing.T, h string) {
		c := r.Resolve(h)
		tok := strings.TrimSpace(strings.TrimPrefix(h, "Bearer "))
		if len(tok) >= 8 && (strings.Contains(c.Hash, tok) || strings.Contains(c.ScopeKey, tok)) {
			t.Fatalf("token %q leaks into hash or scope key", tok)
		}
		if len(c.Hash) != 64 || len(c.ScopeKey) != 20 || c.Scope == "" {
			t.Fatalf("malformed credential %+v", c)
		}
	})
}
