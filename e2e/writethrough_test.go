package e2e

import (
	"encoding/json"
	"net/http"
	"reflect"
	"testing"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// cache.write_through on two replicas sharing Redis: after PUT /contacts/{id} and POST
// /contacts/upsert, the writer's next GET of the contact is a hit on either replica, no GET
// reaches the stand-in, and the answer is the one the stand-in's own GET gives (the
// assumption write-through rests on). Another credential of the same scope misses, as it
// does without write-through; with it off (the default) the writer misses too.
func TestWriteThrough(t *testing.T) {
	rdb := redistest.Start(t)
	fake, up := startStandIn(t, unlimited())
	rs := startCacheReplicas(t, 2, up.URL, rdb, "GHLPROXY_CACHE_WRITE_THROUGH=true")
	const loc = "loc-wt"
	tok, twin := twinToken(loc, 0), twinToken(loc, 1)
	upstreamGets := func() int64 { return fake.Stats().RouteCalls("GET /contacts/{contactId}") }
	// The stand-in's own answer to GET /contacts/{id}, decoded.
	direct := func(id string) map[string]any {
		t.Helper()
		v, _ := getContactJSON(t, up.URL, tok, id)
		return v
	}
	// A GET through r, decoded, with whether it was a hit.
	get := func(r *replica, token, id string) (map[string]any, bool) {
		t.Helper()
		return getContactJSON(t, r.URL, token, id)
	}

	id := newContact(t, up.URL, tok, map[string]any{"firstName": "Ann", "locationId": loc})
	get(rs[0], tok, id)  // cached before the write,
	get(rs[0], twin, id) // for both credentials
	putContact(t, rs[0], tok, id, `{"firstName":"Bea"}`)
	before := upstreamGets()
	for i, r := range rs {
		v, hit := get(r, tok, id)
		if !hit {
			t.Errorf("replica %d: the writer's GET after its PUT was not a hit", i)
		}
		if c, _ := v["contact"].(map[string]any); c["firstName"] != "Bea" {
			t.Fatalf("replica %d: GET after the PUT answered %v", i, v["contact"])
		}
	}
	if n := upstreamGets() - before; n != 0 {
		t.Errorf("%d GETs reached the stand-in after a written-through PUT", n)
	}
	want := direct(id)
	if got, _ := get(rs[1], tok, id); !reflect.DeepEqual(got, want) {
		t.Errorf("written-through answer differs from the stand-in's GET:\n got %v\nwant %v", got, want)
	}
	if _, hit := get(rs[1], twin, id); hit {
		t.Error("another credential of the scope got a hit after the write: it must miss")
	}

	// An upsert that updates the contact: the id comes from the answer's record.
	resp, b := call(t, http.DefaultClient, "POST", rs[1].URL+"/contacts/upsert",
		`{"locationId":"`+loc+`","email":"ann@example.com","firstName":"Cy"}`, ghlHeaders(tok))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		t.Fatalf("upsert: %d %s", resp.StatusCode, b)
	}
	var up1 struct{ Contact struct{ ID string } }
	if err := json.Unmarshal(b, &up1); err != nil || up1.Contact.ID == "" {
		t.Fatalf("upsert answer %s", b)
	}
	before = upstreamGets()
	if v, hit := get(rs[0], tok, up1.Contact.ID); !hit {
		t.Error("the writer's GET after its upsert was not a hit")
	} else if c, _ := v["contact"].(map[string]any); c["firstName"] != "Cy" {
		t.Errorf("GET after the upsert answered %v", v["contact"])
	}
	if n := upstreamGets() - before; n != 0 {
		t.Errorf("%d GETs reached the stand-in after a written-through upsert", n)
	}
	if got, _ := get(rs[0], tok, up1.Contact.ID); !reflect.DeepEqual(got, direct(up1.Contact.ID)) {
		t.Error("written-through upsert answer differs from the stand-in's GET")
	}
}

// getContactJSON is GET /contacts/{id} at base (a replica or the stand-in), decoded whole,
// and whether it was a cache hit.
func getContactJSON(t *testing.T, base, token, id string) (map[string]any, bool) {
	t.Helper()
	resp, b := call(t, http.DefaultClient, "GET", base+"/contacts/"+id, "", ghlHeaders(token))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/contacts/%s: %d %s", base, id, resp.StatusCode, b)
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v, isHit(resp)
}

// Off by default: the writer's GET after its PUT is a miss.
func TestWriteThroughOffByDefault(t *testing.T) {
	rdb := redistest.Start(t)
	_, up := startStandIn(t, unlimited())
	r := startCacheReplicas(t, 1, up.URL, rdb)[0]
	tok := fakeghl.Token("Location", "loc-wt-off", "")
	id := newContact(t, up.URL, tok, map[string]any{"firstName": "Ann", "locationId": "loc-wt-off"})
	getContact(t, r, tok, id)
	putContact(t, r, tok, id, `{"firstName":"Bea"}`)
	if resp, c := getContact(t, r, tok, id); isHit(resp) || c.Contact.FirstName != "Bea" {
		t.Errorf("without write-through: %s, firstName %q; want a miss answering Bea", cacheStatus(resp), c.Contact.FirstName)
	}
}
