package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/poll"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/webhook"
)

// TestEveryRedisValueIsSealed is item 4 of the write-safety issue: every path that writes
// to Redis runs — a miss, a hit from Redis, a stale-while-revalidate refresh, a
// stale-if-error answer, a fold shared across replicas, a replayed write, a batch, a merge,
// a bulk tag call, a warming run and a webhook — and then every key and value in Redis is scanned for
// the token, the location, the contacts' ids, names, emails and tags, and the names of
// GHL's fields. None may be there in the clear.
func TestEveryRedisValueIsSealed(t *testing.T) {
	fake, up := startStandIn(t, unlimited())
	rdb := redistest.Start(t)
	const loc = "locSealedQz7"
	token := fakeghl.Token("Location", loc, "app-sealed")
	leak := &secrets{m: map[string]string{}}
	leak.add(token, "token")
	for i, part := range strings.Split(token, ".") {
		leak.add(part, fmt.Sprintf("token part %d", i))
	}
	leak.add(loc, "location id")
	for _, f := range []string{`"firstName"`, `"lastName"`, `"email"`, `"tags"`, `"contact"`, `"locationId"`} {
		leak.add(f, "GHL field name")
	}
	var ids []string
	for i := range 8 {
		first, last, email := fmt.Sprintf("Sealfn%02dQv", i), fmt.Sprintf("Sealln%02dQv", i), fmt.Sprintf("seal%02d@sealed.example", i)
		ids = append(ids, newContact(t, up.URL, token, map[string]any{"locationId": loc, "firstName": first, "lastName": last, "email": email}))
		leak.add(first, "first name")
		leak.add(last, "last name")
		leak.add(email, "email")
	}
	for _, id := range ids {
		leak.add(id, "contact id")
	}
	leak.add("sealtagQv", "tag")

	t.Setenv("GHL_WARM_TOKEN", token)
	search := `{"locationId":"` + loc + `","pageLimit":5}`
	rs := startCacheReplicas(t, 2, up.URL, rdb,
		`GHLPROXY_CACHE_ROUTES=[{"route":"GET /contacts/{contactId}","ttl":"1s"}]`,
		"GHLPROXY_CACHE_STALE_WHILE_REVALIDATE=1s", "GHLPROXY_BATCH_BULK=true",
		// Long enough that the two updates of one contact merge and the five tag adds go
		// out as one bulk call, however loaded the machine.
		"GHLPROXY_BATCH_COALESCE=1s", "GHLPROXY_BATCH_LINGER=500ms",
		"GHLPROXY_WARM_INTERVAL=1h", standInKey, warmTargets(`{method: POST, path: /contacts/search, body: '`+search+`'}`))
	a, b := rs[0], rs[1]
	hdr := ghlHeaders(token)
	get := func(r *replica, id string) *http.Response {
		t.Helper()
		resp, body := call(t, http.DefaultClient, "GET", r.URL+"/contacts/"+id, "", hdr)
		if resp.StatusCode != 200 {
			t.Fatalf("GET /contacts/%s: %d %s", id, resp.StatusCode, body)
		}
		return resp
	}
	paths := map[string]bool{}

	// Warming, at start-up on each replica (one holds the lease).
	poll.Until(t, 10*time.Second, "a warming run", func() bool { return len(runs(t, a, ""))+len(runs(t, b, "")) > 0 })
	paths["warm"] = true

	// A miss on one replica (the token verified there), a hit from Redis on the other.
	if cs := cacheStatus(get(a, ids[0])); !strings.Contains(cs, "stored") {
		t.Fatalf("first read: Cache-Status %q", cs)
	}
	paths["miss"] = true
	if resp := get(b, ids[0]); !isHit(resp) {
		t.Fatalf("read on the other replica: Cache-Status %q", cacheStatus(resp))
	}
	paths["hit from redis"] = true
	get(b, ids[1]) // verifies the token on b too

	// Stale while revalidate: past the TTL, one refresh through the fold.
	poll.Until(t, 10*time.Second, "the entry to go stale", func() bool {
		return strings.HasPrefix(explainState(t, a, token, ids[0]), "stale (served while")
	})
	if cs := cacheStatus(get(a, ids[0])); !strings.Contains(cs, "fwd=stale") {
		t.Fatalf("stale read: Cache-Status %q", cs)
	}
	poll.Until(t, 10*time.Second, "the refresh to store a fresh entry", func() bool { return explainState(t, a, token, ids[0]) == "fresh" })
	paths["stale refresh"] = true

	// Stale if error: past both windows, GHL failing.
	get(a, ids[2])
	poll.Until(t, 10*time.Second, "the entry to be past its windows", func() bool {
		return strings.HasPrefix(explainState(t, a, token, ids[2]), "stale (served only if GHL fails)")
	})
	fake.SetErrorRate(1, http.StatusBadGateway)
	cs := cacheStatus(get(a, ids[2]))
	fake.SetErrorRate(0, 0)
	if !strings.Contains(cs, "stale-if-error") {
		t.Fatalf("read while GHL fails: Cache-Status %q", cs)
	}
	paths["stale if error"] = true

	// A fold shared across replicas: identical reads while GHL is slow.
	fake.SetExtraDelay(300 * time.Millisecond)
	var wg sync.WaitGroup
	shared := make([]string, 6)
	for i := range shared {
		wg.Go(func() {
			resp := get(rs[i%2], ids[3])
			shared[i] = resp.Header.Get("X-Ghlproxy-Dedupe")
		})
	}
	wg.Wait()
	fake.SetExtraDelay(0)
	if !strings.Contains(strings.Join(shared, ","), "shared") {
		t.Fatalf("no read shared the call: %v", shared)
	}
	paths["fold"] = true

	// A write and its replay, through both replicas.
	create := `{"locationId":"` + loc + `","firstName":"SealNewQv","email":"sealnew@sealed.example"}`
	leak.add("SealNewQv", "first name")
	leak.add("sealnew@sealed.example", "email")
	resp, body := call(t, http.DefaultClient, "POST", a.URL+"/contacts/", create, hdr)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	leak.add(contactIDOf(body), "contact id")
	if resp, _ := call(t, http.DefaultClient, "POST", b.URL+"/contacts/", create, hdr); resp.Header.Get("X-Ghlproxy-Dedupe") != "replay" {
		t.Fatalf("retried create: X-Ghlproxy-Dedupe %q", resp.Header.Get("X-Ghlproxy-Dedupe"))
	}
	paths["replay"] = true

	// A batch of updates to distinct contacts, a merge of two to one, a bulk tag call.
	answers := make([]answer, 0, 12)
	var mu sync.Mutex
	for i, id := range ids[4:] {
		name := fmt.Sprintf("SealUp%dQv", i)
		leak.add(name, "first name")
		wg.Go(func() {
			x := send(http.DefaultClient, "PUT", a.URL+"/contacts/"+id, `{"firstName":"`+name+`"}`, hdr, 30*time.Second, nil)
			mu.Lock()
			answers = append(answers, x)
			mu.Unlock()
		})
	}
	for _, body := range []string{`{"lastName":"SealMergeAQv"}`, `{"companyName":"SealMergeBQv"}`} {
		leak.add(strings.Split(body, `"`)[3], "merged field")
		wg.Go(func() {
			x := send(http.DefaultClient, "PUT", a.URL+"/contacts/"+ids[0], body, hdr, 30*time.Second, nil)
			mu.Lock()
			answers = append(answers, x)
			mu.Unlock()
		})
	}
	for _, id := range ids[:5] {
		wg.Go(func() {
			x := send(http.DefaultClient, "POST", b.URL+"/contacts/"+id+"/tags", `{"tags":["sealtagQv"]}`, hdr, 30*time.Second, nil)
			mu.Lock()
			answers = append(answers, x)
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, x := range answers {
		if x.Err != nil || x.Status/100 != 2 {
			t.Fatalf("write: %d %v %s", x.Status, x.Err, x.Body)
		}
		h := x.Header.Get("X-Ghlproxy-Batch")
		paths["batch"] = paths["batch"] || strings.Contains(h, "size=")
		paths["merge"] = paths["merge"] || strings.Contains(h, "merged=2")
		paths["bulk"] = paths["bulk"] || strings.Contains(h, "bulk=")
	}
	// A webhook from GHL (an edit in its UI), received by one replica: its id is remembered
	// and the location's scopes are read, on every replica.
	fake.SetWebhookURL(a.URL + webhook.Path)
	if _, err := fake.Edit("contacts", ids[7], map[string]any{"firstName": "SealUiQv"}, false); err != nil {
		t.Fatal(err)
	}
	leak.add("SealUiQv", "first name")
	d, _ := delivered(t, fake, 0, "ContactUpdate")
	leak.add(d.WebhookID, "webhook id")
	paths["webhook"] = d.Status == http.StatusNoContent

	for _, p := range []string{"warm", "miss", "hit from redis", "stale refresh", "stale if error", "fold", "replay", "batch", "merge", "bulk", "webhook"} {
		if !paths[p] {
			t.Errorf("the %s path did not run: what it writes to Redis is not scanned", p)
		}
	}

	keys, found := scanRedis(t, rdb, leak.m)
	t.Logf("scanned %d Redis keys for %d secrets", keys, len(leak.m))
	if len(found) > 0 {
		t.Errorf("plain text in Redis (%d findings, first %d):\n  %s", len(found), min(len(found), 20), strings.Join(found[:min(len(found), 20)], "\n  "))
	}
}
