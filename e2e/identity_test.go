package e2e

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
)

// explainOf asks a replica how it would handle GET path for the caller of hdr.
func explainOf(t *testing.T, r *replica, hdr http.Header, path string) map[string]any {
	t.Helper()
	resp, b := call(t, http.DefaultClient, "GET", r.URL+"/_ghlproxy/explain?path="+path, "", hdr)
	if resp.StatusCode != 200 {
		t.Fatalf("explain: %d %s", resp.StatusCode, b)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func tokensLeft(t *testing.T, ex map[string]any) float64 {
	t.Helper()
	rl, _ := ex["ratelimit"].(map[string]any)
	v, ok := rl["tokens"].(float64)
	if !ok {
		t.Fatalf("explain has no tokens for the scope: %v", ex["ratelimit"])
	}
	return v
}

// TestForgedClaimsSpendNoOneElsesBudget is item 6 of the write-safety issue. A token with
// the victim location's claims and a bad signature sends 45 requests (GHL refuses each
// with a 401). Its claims are unverified, so they spent a budget of the token's own: the
// victim's bucket is as full as before. A second real token of the location spends the
// location's bucket once GHL has answered it.
func TestForgedClaimsSpendNoOneElsesBudget(t *testing.T) {
	fake, up := startStandIn(t, fakeghl.Config{VerifyTokens: true, Limit: 1_000_000, Daily: 1 << 30})
	r := startReplica(t, testConfig(t, up.URL))
	victim := fakeghl.SignedToken("Location", "locVictim", "app-1")
	id := newContact(t, up.URL, victim, map[string]any{"locationId": "locVictim", "firstName": "Vic"})
	vh := ghlHeaders(victim)
	if resp, b := call(t, http.DefaultClient, "GET", r.URL+"/contacts/"+id, "", vh); resp.StatusCode != 200 {
		t.Fatalf("victim's read: %d %s", resp.StatusCode, b)
	}
	ex := explainOf(t, r, vh, "/contacts/"+id)
	before := tokensLeft(t, ex)

	forged := victim[:strings.LastIndexByte(victim, '.')+1] + "Zm9yZ2Vk"
	fh := ghlHeaders(forged)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 45 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Distinct paths: identical reads would fold into one call.
			resp, b := call(t, http.DefaultClient, "GET", r.URL+"/contacts/"+id+"?i="+strconv.Itoa(i), "", fh)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("forged token: %d %s; want GHL's 401", resp.StatusCode, b)
			}
		}()
	}
	wg.Wait()
	t.Logf("45 forged requests in %v", time.Since(start))
	after := tokensLeft(t, explainOf(t, r, vh, "/contacts/"+id))
	t.Logf("victim's bucket: %.1f tokens before the forged requests, %.1f after", before, after)
	if after < before-1 {
		t.Errorf("45 forged requests took the victim's bucket from %.1f to %.1f tokens", before, after)
	}
	if cred, _ := ex["credential"].(map[string]any); cred["claims_verified"] != true {
		t.Errorf("the victim's token is not verified after a 200: %v", cred)
	}
	if ex := explainOf(t, r, fh, "/contacts/"+id); ex["credential"].(map[string]any)["claims_verified"] != false {
		t.Error("the forged token counts as verified")
	}

	// A second real token of the location: its first request is its own, then it shares.
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"authClass":"Location","authClassId":"locVictim","oauthMeta":{"client":"app-1"},"iat":2}`))
	second := fakeghl.Sign(strings.SplitN(victim, ".", 2)[0] + "." + payload + ".x")
	sh := ghlHeaders(second)
	if resp, b := call(t, http.DefaultClient, "GET", r.URL+"/contacts/"+id, "", sh); resp.StatusCode != 200 {
		t.Fatalf("second token: %d %s", resp.StatusCode, b)
	}
	ex2, exv := explainOf(t, r, sh, "/contacts/"+id), explainOf(t, r, vh, "/contacts/"+id)
	if ex2["credential"].(map[string]any)["limit_key"] != exv["credential"].(map[string]any)["limit_key"] {
		t.Errorf("two verified tokens of one location spend different buckets: %v, %v", ex2["credential"], exv["credential"])
	}
	if n := fake.Stats().RouteCalls("GET /contacts/{contactId}"); n < 47 {
		t.Errorf("the stand-in saw %d reads; want the forged ones to have reached it (and been refused)", n)
	}
}

// TestBearerSpellingInvalidatesOneEntry is item 6's second half: a PUT sent with
// "bearer" drops the entry a GET sent with "Bearer" cached — one token, one credential.
func TestBearerSpellingInvalidatesOneEntry(t *testing.T) {
	_, up := startStandIn(t, unlimited())
	r := startReplica(t, testConfig(t, up.URL))
	const pit = "pit-7f3a9c2e-spelling"
	id := newContact(t, up.URL, pit, map[string]any{"locationId": "locSpell", "firstName": "Old"})
	get := func() contactAnswer {
		resp, b := call(t, http.DefaultClient, "GET", r.URL+"/contacts/"+id, "", http.Header{"Authorization": {"Bearer " + pit}, "Version": {"2021-07-28"}})
		if resp.StatusCode != 200 {
			t.Fatalf("GET: %d %s", resp.StatusCode, b)
		}
		return decodeContact(t, b)
	}
	get()
	if c := get(); c.Contact.FirstName != "Old" {
		t.Fatalf("warm-up read: %q", c.Contact.FirstName)
	}
	resp, b := call(t, http.DefaultClient, "PUT", r.URL+"/contacts/"+id, `{"firstName":"New"}`,
		http.Header{"Authorization": {"bearer   " + pit}, "Version": {"2021-07-28"}})
	if resp.StatusCode != 200 {
		t.Fatalf("PUT: %d %s", resp.StatusCode, b)
	}
	if c := get(); c.Contact.FirstName != "New" {
		t.Errorf("after a PUT spelled \"bearer\", the \"Bearer\" read still says %q", c.Contact.FirstName)
	}
}

// TestOversizedAuthorizationIsRefused is item 5a's limit: an Authorization header over 16
// KiB gets a sidecar-made 431 in GHL's shape, and nothing is remembered or sent.
func TestOversizedAuthorizationIsRefused(t *testing.T) {
	fake, up := startStandIn(t, unlimited())
	r := startReplica(t, testConfig(t, up.URL))
	tok := strings.Repeat("t", 512<<10)
	for i := range 20 {
		resp, b := call(t, http.DefaultClient, "GET", r.URL+"/contacts/abc", "", http.Header{"Authorization": {"Bearer " + tok + string(rune('a'+i))}})
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || resp.Header.Get(ghlerror.Header) != ghlerror.CauseHeadersTooLarge || !ghlShaped(b, 431) {
			t.Fatalf("512 KiB token: %d %q %s", resp.StatusCode, resp.Header.Get(ghlerror.Header), b)
		}
	}
	if n := fake.Stats().Calls; n != 0 {
		t.Errorf("%d calls reached the stand-in", n)
	}
}
