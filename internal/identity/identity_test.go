package identity

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
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

// TestBearerSpellingIsOneCredential: the Bearer scheme is case-insensitive and its spacing
// free, to GHL as to HTTP; every spelling of one token is one credential, with one hash,
// scope and key (so a "bearer" write invalidates a "Bearer" read's entry).
func TestBearerSpellingIsOneCredential(t *testing.T) {
	r := NewResolver("s")
	want := r.Resolve("Bearer pit-abc123")
	for _, h := range []string{"bearer pit-abc123", "BEARER pit-abc123", "Bearer  pit-abc123", " Bearer pit-abc123 ", "Bearer\tpit-abc123", "bEaReR   pit-abc123"} {
		c := r.Resolve(h)
		if c.Hash != want.Hash || c.ScopeKey != want.ScopeKey || c.EncKey != want.EncKey || c.LimitKey() != want.LimitKey() {
			t.Errorf("%q is another credential than %q", h, "Bearer pit-abc123")
		}
	}
	if r.Resolve("Bearer pit-abc124").Hash == want.Hash {
		t.Error("another token has the same hash")
	}
	if r.Resolve("Basic cGl0LWFiYzEyMw==").Hash == want.Hash {
		t.Error("another scheme has the same hash")
	}
}

// TestUnverifiedClaimsSpendTheirOwnBudget is item 6 of the write-safety issue: until GHL
// answers a JWT 2xx its claims are the token's word only, so it spends a budget of its own;
// after that, its claims' — which other tokens of the location share.
func TestUnverifiedClaimsSpendTheirOwnBudget(t *testing.T) {
	r := NewResolver("s")
	claims := map[string]any{"authClass": "Location", "authClassId": "victim", "oauthMeta": map[string]any{"client": "app1"}}
	real, forged := r.Resolve("Bearer "+jwt(claims)), r.Resolve("Bearer "+jwt(claims)+"forged")
	if real.ScopeKey != forged.ScopeKey {
		t.Fatal("two tokens of one location's claims have different scopes: invalidation would not reach both")
	}
	if real.LimitKey() == real.ScopeKey || forged.LimitKey() == real.ScopeKey || real.LimitKey() == forged.LimitKey() {
		t.Fatal("an unverified token spends its claims' budget, or another token's")
	}
	if real.Verified() || forged.Verified() {
		t.Fatal("verified before GHL answered")
	}
	real.MarkVerified()
	if !real.Verified() || real.LimitKey() != real.ScopeKey {
		t.Fatalf("verified token spends %s, want its claims' %s", real.LimitKey(), real.ScopeKey)
	}
	if forged.Verified() || forged.LimitKey() == real.ScopeKey {
		t.Fatal("verifying one token verified another")
	}
	pit := r.Resolve("Bearer pit-xyz")
	if !pit.Verified() || pit.LimitKey() != pit.ScopeKey {
		t.Fatal("an opaque token's scope is its own: nothing to verify")
	}
}

// TestAdmitOneUnverifiedAtATime: an unverified token's calls go one at a time; the moment
// one is answered 2xx, every call waiting goes, even while the first is still out (a long
// download must not hold them), and later calls do not wait at all.
func TestAdmitOneUnverifiedAtATime(t *testing.T) {
	r := NewResolver("s")
	c := r.Resolve("Bearer " + jwt(map[string]any{"authClass": "Location", "authClassId": "L"}))
	release, err := c.Admit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	const waiting = 3
	admitted := make(chan error, waiting)
	entered := make(chan struct{}, waiting)
	for range waiting {
		go func() {
			entered <- struct{}{}
			rel, err := c.Admit(context.Background())
			if err == nil {
				rel()
			}
			admitted <- err
		}()
	}
	for range waiting {
		<-entered
	}
	select {
	case err := <-admitted:
		t.Fatalf("a call was admitted while the first unverified one is out: %v", err)
	default:
	}
	// A waiter that arrived and gave up is not admitted either.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Admit(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("an unverified call with its context gone: %v", err)
	}
	if n := c.MarkVerified(); n != 1 {
		t.Fatalf("MarkVerified reported %d unverified calls, want 1", n)
	}
	for range waiting { // released by the verification, the first call still out
		select {
		case err := <-admitted:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("calls waiting for an unverified token were not let go when it was verified")
		}
	}
	release()
	release() // harmless
	if n := c.MarkVerified(); n != 0 {
		t.Fatalf("a second MarkVerified reported %d calls to charge", n)
	}
}

// TestMemoBoundedInBytes is item 5a of the write-safety issue: credentials are remembered
// within a bound of bytes, whatever the tokens' sizes and number; those in use stay.
func TestMemoBoundedInBytes(t *testing.T) {
	r := NewResolver("s")
	hot := r.Resolve("Bearer hot-token")
	big := strings.Repeat("x", MaxAuthorizationBytes-100)
	for i := range 2000 {
		r.Resolve("Bearer " + big + strconv.Itoa(i))
		if i%100 == 0 {
			if r.Resolve("Bearer hot-token") != hot {
				t.Fatal("a credential in use was forgotten")
			}
		}
	}
	r.mu.RLock()
	held := r.cur.bytes + r.old.bytes
	r.mu.RUnlock()
	if held > 2*memoBytes {
		t.Fatalf("the memo holds %d bytes after 2000 distinct %d-byte headers; bound %d", held, len(big), 2*memoBytes)
	}
}
