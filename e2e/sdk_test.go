// Package e2e drives ghlproxy from the outside: real clients, the GHL stand-in behind a
// sidecar, and assertions on what the stand-in saw.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
)

// sdkVersion is the @gohighlevel/api-client version e2e/sdk/package.json pins.
const sdkVersion = "3.1.0"

// TestSDKContacts is the foundation's promise to an application using the official Node
// SDK: override the base URL, change nothing else, and every call works as before. The SDK
// gets, creates, updates and searches contacts through a sidecar in front of the stand-in;
// each answer it resolves with must equal what the stand-in holds, fetched directly.
func TestSDKContacts(t *testing.T) {
	sdkDir := sdkReady(t)
	fake := fakeghl.New(fakeghl.Config{Seed: 7})
	up := serveFake(t, fake)
	proxyURL := startSidecar(t, up)

	run := runID(t)
	token := "pit-" + run
	loc := "loc" + run
	seed := directJSON(t, up, token, "POST", "/contacts/", map[string]any{
		"locationId": loc, "firstName": "Seed", "lastName": "Contact " + run,
		"email": "seed." + run + "@example.com", "tags": []string{"seed"},
	}, http.StatusCreated)
	seedID := contactID(t, "seed", seed)

	out := drive(t, sdkDir, map[string]string{
		"MODE": "contacts", "SIDECAR_URL": proxyURL, "TOKEN": token, "LOCATION_ID": loc,
		"RUN": run, "SEED_CONTACT_ID": seedID,
	})
	if out.SDKVersion != sdkVersion {
		t.Fatalf("SDK version %q, want %q: run npm ci in e2e/sdk", out.SDKVersion, sdkVersion)
	}
	t.Logf("SDK sends: %+v", out.Calls)
	if out.BaseURL != proxyURL {
		t.Fatalf("SDK base URL %q, want the sidecar %q", out.BaseURL, proxyURL)
	}
	wantCalls := []string{"GET 200", "POST 201", "PUT 200", "GET 200", "POST 200"}
	var gotCalls []string
	for _, c := range out.Calls {
		gotCalls = append(gotCalls, c.Method+" "+jsonString(c.Status))
		if c.BaseURL != proxyURL {
			t.Errorf("%s %s went to %q, not the sidecar", c.Method, c.URL, c.BaseURL)
		}
	}
	if !reflect.DeepEqual(gotCalls, wantCalls) {
		t.Errorf("SDK calls (method, status) = %v, want %v", gotCalls, wantCalls)
	}

	// Every answer equals the stand-in's own, read directly once the SDK is done.
	sameJSON(t, "getContact(seed)", out.Results["seed"], directJSON(t, up, token, "GET", "/contacts/"+seedID, nil, http.StatusOK))
	id := contactID(t, "createContact", out.Results["created"])
	after := directJSON(t, up, token, "GET", "/contacts/"+id, nil, http.StatusOK)
	sameJSON(t, "getContact(created)", out.Results["after"], after)
	sameJSON(t, "updateContact's contact", field(out.Results["updated"], "contact"), field(after, "contact"))
	search := directJSON(t, up, token, "POST", "/contacts/search",
		map[string]any{"locationId": loc, "pageLimit": 50, "query": run}, http.StatusOK)
	sameJSON(t, "searchContactsAdvanced", out.Results["search"], search)

	// And the stand-in holds what the SDK sent.
	c, _ := field(after, "contact").(map[string]any)
	if c["firstName"] != "Ada" || c["lastName"] != "Byron "+run || c["email"] != "ada."+run+"@example.com" {
		t.Errorf("stored contact = %v, want Ada Byron %s, ada.%s@example.com", c, run, run)
	}
	if tags := jsonString(c["tags"]); tags != `["e2e","sdk","updated"]` {
		t.Errorf("stored tags = %s, want the updated ones", tags)
	}
	ids := map[string]bool{}
	for _, x := range asList(field(search, "contacts")) {
		m, _ := x.(map[string]any)
		id, _ := m["id"].(string)
		ids[id] = true
	}
	if len(ids) != 2 || !ids[seedID] || !ids[id] {
		t.Errorf("search found %v, want the seed %s and the SDK's contact %s", ids, seedID, id)
	}

	st := fake.Stats()
	for _, w := range []struct {
		label  string
		status int
		n      int64
	}{
		{"POST /contacts/", http.StatusCreated, 2}, // the seed and the SDK's
		{"PUT /contacts/{contactId}", http.StatusOK, 1},
		{"GET /contacts/{contactId}", http.StatusOK, 4}, // two by the SDK, two direct
		{"POST /contacts/search", http.StatusOK, 2},     // one by the SDK, one direct
	} {
		if got := st.Count(w.label, w.status); got != w.n {
			t.Errorf("stand-in saw %d × %s → %d, want %d (all routes: %v)", got, w.label, w.status, w.n, st.Routes)
		}
	}
	if st.Creates["contacts"] != 2 || st.TooMany != 0 {
		t.Errorf("stand-in: %d contacts created, %d 429s; want 2 and 0", st.Creates["contacts"], st.TooMany)
	}
}

// TestSDKRetriedCreateLeavesOneContact is the fold's promise (issue "dedupe"): the official
// SDK with rateLimitRetry on, retrying a create, leaves one contact.
//
// The scenario, and why it is this one. GHL has no idempotency key, so a create sent twice
// is two contacts (the body has no email or phone, so GHL's duplicate check does not
// catch it). The SDK resends a request only on a 429, and a 429 — from GHL or from the
// sidecar, which answers 429 only before forwarding — means nothing was created; so the
// SDK's own retry is safe only if the sidecar lets that resend through instead of
// replaying the 429 it folded. An application also retries by itself when it never saw
// an answer; that identical create must be answered from the fold window.
//
//  1. Another process of the same app spends the whole budget straight at the stand-in
//     (Limit 3 per 3 s), so the SDK's create through the sidecar is refused with a 429
//     that nothing can avoid.
//  2. The SDK waits X-RateLimit-Interval-Milliseconds and resends: the sidecar must forward
//     it (a replayed 429 would exhaust the SDK's retries) and the contact is created.
//  3. The application sends the same create again: the sidecar replays the first answer
//     (X-Ghlproxy-Dedupe: replay) with the same contact id.
//
// The stand-in must have created exactly one contact, and both SDK calls resolved with it.
func TestSDKRetriedCreateLeavesOneContact(t *testing.T) {
	sdkDir := sdkReady(t)
	const limit, window = 3, 3 * time.Second
	fake := fakeghl.New(fakeghl.Config{Seed: 11, Limit: limit, Window: window})
	up := serveFake(t, fake)
	proxyURL := startSidecar(t, up)

	run := runID(t)
	token := "pit-" + run
	loc := "loc" + run
	out := drive(t, sdkDir, map[string]string{
		"MODE": "retry", "SIDECAR_URL": proxyURL, "TOKEN": token, "LOCATION_ID": loc, "RUN": run,
		"BURN_URL": up, "BURN": jsonString(limit),
	})

	t.Logf("SDK sends: %+v", out.Calls)
	var creates []sdkCall
	for _, c := range out.Calls {
		if c.Method == "POST" && c.URL == "/contacts/" {
			creates = append(creates, c)
		}
	}
	// Three sends: the refused one, the SDK's resend, the application's retry. The
	// interceptor records the status the SDK finally resolved with on the last send of
	// each call.
	if len(creates) != 3 {
		t.Fatalf("SDK sent %d creates, want 3 (refused, SDK resend, app retry): %+v", len(creates), out.Calls)
	}
	if creates[2].Dedupe != "replay" && creates[2].Dedupe != "shared" {
		t.Errorf("the app's retry was answered with X-Ghlproxy-Dedupe %q, want replay", creates[2].Dedupe)
	}
	first := contactID(t, "first create", out.Results["first"])
	again := contactID(t, "retried create", out.Results["again"])
	if first != again {
		t.Errorf("the retried create resolved with contact %s, the first with %s: two contacts", again, first)
	}
	sameJSON(t, "the retried create", out.Results["again"], out.Results["first"])
	stored := directJSON(t, up, token, "GET", "/contacts/"+first, nil, http.StatusOK)
	sameJSON(t, "the created contact", field(out.Results["first"], "contact"), field(stored, "contact"))

	st := fake.Stats()
	if n := st.Creates["contacts"]; n != 1 {
		t.Errorf("stand-in created %d contacts, want 1 (writes: %v)", n, st.Writes)
	}
	if got := st.Count("POST /contacts/", http.StatusTooManyRequests); got != 1 {
		t.Errorf("stand-in refused %d creates with 429, want 1: the scenario did not exercise the SDK's retry (routes: %v)",
			got, st.Routes)
	}
	if got := st.Count("POST /contacts/", http.StatusCreated); got != 1 {
		t.Errorf("stand-in answered %d creates with 201, want 1", got)
	}
}

// sdkCall is one send the SDK made, as drive.mjs records it.
type sdkCall struct {
	Method  string `json:"method"`
	URL     string `json:"url"`
	BaseURL string `json:"baseURL"`
	Status  any    `json:"status"`
	Dedupe  string `json:"x-ghlproxy-dedupe"`
	Cache   string `json:"cache-status"`
}

type driveOutput struct {
	SDKVersion string         `json:"sdkVersion"`
	BaseURL    string         `json:"baseURL"`
	Calls      []sdkCall      `json:"calls"`
	Results    map[string]any `json:"results"`
}

// sdkReady finds node and npm, installs e2e/sdk's locked dependencies when they are
// missing or not the pinned version, and returns the directory. Without node or npm the
// test is skipped, except under CI, whose test script installs them.
func sdkReady(t *testing.T) string {
	t.Helper()
	for _, bin := range []string{"node", "npm"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not found under CI: scripts/test.sh must install it (apt-get install nodejs npm)", bin)
			}
			t.Skipf("%s not installed; run scripts/test.sh, which installs Node.js", bin)
		}
	}
	dir, err := filepath.Abs("sdk")
	if err != nil {
		t.Fatal(err)
	}
	if installedSDK(dir) == sdkVersion {
		return dir
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// npm ci installs exactly package-lock.json; --prefer-offline uses npm's cache when it can.
	cmd := exec.CommandContext(ctx, "npm", "ci", "--prefer-offline", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
	}
	if v := installedSDK(dir); v != sdkVersion {
		t.Fatalf("after npm ci, @gohighlevel/api-client is %q, want %s: package-lock.json is out of date", v, sdkVersion)
	}
	return dir
}

func installedSDK(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", "@gohighlevel", "api-client", "package.json"))
	if err != nil {
		return ""
	}
	var p struct{ Version string }
	_ = json.Unmarshal(b, &p)
	return p.Version
}

// serveFake serves fake on a local port until the test ends and returns its URL.
func serveFake(t *testing.T, fake *fakeghl.Server) string {
	t.Helper()
	srv := httptest.NewServer(fake)
	t.Cleanup(func() {
		fake.Close()
		srv.Close()
	})
	return srv.URL
}

// startSidecar runs a sidecar with the default configuration in front of upstream, the way
// `ghlproxy serve` builds it, and returns its proxy URL.
func startSidecar(t *testing.T, upstream string) string {
	t.Helper()
	return startReplica(t, testConfig(t, upstream)).URL
}

// drive runs drive.mjs with env and decodes its one line of JSON. A failure of the SDK
// fails the test with drive.mjs's own message.
func drive(t *testing.T, dir string, env map[string]string) driveOutput {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "drive.mjs")
	cmd.Dir = dir
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Logf("drive.mjs stderr:\n%s", s)
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ctx.Err() == nil {
			t.Fatalf("node drive.mjs (MODE=%s) failed: %v", env["MODE"], err)
		}
		t.Fatalf("node drive.mjs (MODE=%s): %v (timeout: %v)", env["MODE"], err, ctx.Err())
	}
	var out driveOutput
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("drive.mjs output is not one JSON object: %v\n%s", err, stdout.String())
	}
	return out
}

// directJSON sends one request straight to the stand-in, bypassing the sidecar, and
// decodes its JSON answer.
func directJSON(t *testing.T, base, token, method, path string, body any, want int) any {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Version", "2021-07-28")
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if res.StatusCode != want {
		t.Fatalf("%s %s directly: %d %s, want %d", method, path, res.StatusCode, b, want)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return v
}

// sameJSON fails the test when the SDK's result differs from the stand-in's answer.
func sameJSON(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s through the sidecar differs from the stand-in's:\n got  %s\n want %s", what, jsonString(got), jsonString(want))
	}
}

func contactID(t *testing.T, what string, v any) string {
	t.Helper()
	id, _ := field(field(v, "contact"), "id").(string)
	if id == "" {
		t.Fatalf("%s: no contact.id in %s", what, jsonString(v))
	}
	return id
}

func field(v any, key string) any {
	m, _ := v.(map[string]any)
	return m[key]
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// runID makes names and the token unique to one run, so nothing is shared by accident.
func runID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "r" + hex.EncodeToString(b)
}
