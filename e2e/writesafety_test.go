package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/poll"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// writeRig is a stand-in and one or two sidecars in front of it: embedded, or two replicas
// sharing a Redis, so that the rule holds "on any replica".
type writeRig struct {
	up       *standIn
	replicas []*replica
}

func writeRigs(t *testing.T, env ...string) map[string]func(t *testing.T) *writeRig {
	return map[string]func(t *testing.T) *writeRig{
		"embedded": func(t *testing.T) *writeRig {
			up := startLoggedStandIn(t, unlimited())
			r := startReplica(t, testConfig(t, up.URL, env...))
			return &writeRig{up: up, replicas: []*replica{r, r}}
		},
		"redis, two replicas": func(t *testing.T) *writeRig {
			srv := redistest.Start(t)
			up := startLoggedStandIn(t, unlimited())
			var rs []*replica
			for range 2 {
				rs = append(rs, startReplica(t, testConfig(t, up.URL, append([]string{
					"GHLPROXY_REDIS_URL=" + srv.URL(), "GHLPROXY_REDIS_TIMEOUT=1s"}, env...)...)))
			}
			return &writeRig{up: up, replicas: rs}
		},
	}
}

// coalesce holds a partial update long enough for a second one, sent once the first is
// queued, to merge with it even on a loaded machine.
const coalesce = 3 * time.Second

// waitForQueued waits until the replica's batcher holds n writes.
func waitForQueued(t *testing.T, r *replica, n int) {
	t.Helper()
	g := r.S.Metrics.QueueDepth.WithLabelValues("batch")
	poll.Until(t, 10*time.Second, fmt.Sprintf("%d writes queued in the batcher", n), func() bool {
		return testutil.ToFloat64(g) >= float64(n)
	})
}

// verifyToken reads contact id through r, so that GHL has answered the token 2xx there: its
// calls then spend its claims' bucket together instead of going one at a time
// (identity.Credential.Admit), and concurrent writes can merge.
func verifyToken(t *testing.T, r *replica, hdr http.Header, id string) {
	t.Helper()
	if resp, b := call(t, http.DefaultClient, "GET", r.URL+"/contacts/"+id, "", hdr); resp.StatusCode != 200 {
		t.Fatalf("verifying the token: %d %s", resp.StatusCode, b)
	}
}

// contactOnStandIn reads a contact straight from the stand-in: what GHL holds.
func contactOnStandIn(t *testing.T, up, token, id string) map[string]any {
	t.Helper()
	resp, b := call(t, http.DefaultClient, "GET", up+"/contacts/"+id, "", ghlHeaders(token))
	if resp.StatusCode != 200 {
		t.Fatalf("GET /contacts/%s on the stand-in: %d %s", id, resp.StatusCode, b)
	}
	var v struct{ Contact map[string]any }
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v.Contact
}

// writesTo counts the writes of method that reached entity id on the stand-in, its
// creation left out.
func writesTo(st fakeghl.Stats, id, method string) int {
	n := 0
	for _, w := range st.Writes[id][1:] {
		if w.Method == method {
			n++
		}
	}
	return n
}

// TestLaterWriteEndsReplay is the write-safety issue's first item. dnd on, off, on within
// the fold window: the third is sent (not replayed from the first) and GHL ends with dnd
// on; the same for tag add, remove, add. A plain retry with nothing between is still
// replayed. With two replicas each write goes through the other one from the last.
func TestLaterWriteEndsReplay(t *testing.T) {
	for name, rig := range writeRigs(t) {
		t.Run(name, func(t *testing.T) {
			w := rig(t)
			token := fakeghl.Token("Location", "locWriteSafe", "app-1")
			id := newContact(t, w.up.URL, token, map[string]any{"locationId": "locWriteSafe", "firstName": "Dee"})
			hdr := ghlHeaders(token)
			steps := []struct {
				method, path, body string
				replay             bool // X-Ghlproxy-Dedupe: replay expected
			}{
				{"PUT", "/contacts/" + id, `{"dnd":true}`, false},
				{"PUT", "/contacts/" + id, `{"dnd":false}`, false},
				{"PUT", "/contacts/" + id, `{"dnd":true}`, false}, // identical to the first
				{"PUT", "/contacts/" + id, `{"dnd":true}`, true},  // a plain retry of the third
				{"POST", "/contacts/" + id + "/tags", `{"tags":["vip"]}`, false},
				{"DELETE", "/contacts/" + id + "/tags", `{"tags":["vip"]}`, false},
				{"POST", "/contacts/" + id + "/tags", `{"tags":["vip"]}`, false}, // identical to the add
				{"POST", "/contacts/" + id + "/tags", `{"tags":["vip"]}`, true},  // a plain retry of it
			}
			for i, s := range steps {
				r := w.replicas[i%len(w.replicas)]
				resp, b := call(t, http.DefaultClient, s.method, r.URL+s.path, s.body, hdr)
				if resp.StatusCode/100 != 2 {
					t.Fatalf("step %d %s %s %s: %d %s", i, s.method, s.path, s.body, resp.StatusCode, b)
				}
				if got := resp.Header.Get("X-Ghlproxy-Dedupe") == "replay"; got != s.replay {
					t.Fatalf("step %d %s %s %s: replayed %v, want %v (X-Ghlproxy-Dedupe %q)", i, s.method, s.path, s.body,
						got, s.replay, resp.Header.Get("X-Ghlproxy-Dedupe"))
				}
			}
			st := w.up.Fake.Stats()
			if puts, posts, dels := writesTo(st, id, "PUT"), writesTo(st, id, "POST"), writesTo(st, id, "DELETE"); puts != 3 || posts != 2 || dels != 1 {
				t.Errorf("the stand-in applied %d PUTs, %d tag adds, %d tag removes; want 3, 2, 1", puts, posts, dels)
			}
			c := contactOnStandIn(t, w.up.URL, token, id)
			if c["dnd"] != true {
				t.Errorf("GHL holds dnd %v; the app's last write said true", c["dnd"])
			}
			if tags, _ := c["tags"].([]any); !slices.Contains(tags, any("vip")) {
				t.Errorf("GHL holds tags %v; the app's last write added vip", c["tags"])
			}
		})
	}
}

// TestCreatesKeepTheirReplay: a create's retry is a duplicate whatever happened between, so
// writes to the new contact do not end the replay of the create, nor of a note created
// on it.
func TestCreatesKeepTheirReplay(t *testing.T) {
	for name, rig := range writeRigs(t) {
		t.Run(name, func(t *testing.T) {
			w := rig(t)
			token := fakeghl.Token("Location", "locCreates", "app-1")
			hdr := ghlHeaders(token)
			create := `{"locationId":"locCreates","firstName":"Cy","email":"cy@creates.example"}`
			resp, b := call(t, http.DefaultClient, "POST", w.replicas[0].URL+"/contacts/", create, hdr)
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("create: %d %s", resp.StatusCode, b)
			}
			id := contactIDOf(b)
			note := `{"body":"called back"}`
			if resp, b := call(t, http.DefaultClient, "POST", w.replicas[0].URL+"/contacts/"+id+"/notes", note, hdr); resp.StatusCode/100 != 2 {
				t.Fatalf("note: %d %s", resp.StatusCode, b)
			}
			if resp, b := call(t, http.DefaultClient, "PUT", w.replicas[1].URL+"/contacts/"+id, `{"firstName":"Cyd"}`, hdr); resp.StatusCode != 200 {
				t.Fatalf("update: %d %s", resp.StatusCode, b)
			}
			for _, retry := range []struct{ path, body string }{{"/contacts/", create}, {"/contacts/" + id + "/notes", note}} {
				resp, b := call(t, http.DefaultClient, "POST", w.replicas[1].URL+retry.path, retry.body, hdr)
				if resp.StatusCode/100 != 2 || resp.Header.Get("X-Ghlproxy-Dedupe") != "replay" {
					t.Errorf("retry of POST %s after an update: %d %q %s; want the first answer replayed", retry.path,
						resp.StatusCode, resp.Header.Get("X-Ghlproxy-Dedupe"), b)
				}
			}
			if n := w.up.Fake.Stats().Creates["contacts"]; n != 1 {
				t.Errorf("the stand-in created %d contacts, want 1", n)
			}
		})
	}
}

// TestMergedRefusalIsSplit is the write-safety issue's third item: two concurrent PUTs to
// one contact, one with another contact's email and one with a new first name, are merged
// (batch.coalesce holds the first until the second joins); GHL refuses the merged call
// for the email. Each write is then sent alone, in order: the email one gets its own 400,
// the other its 200, and a retry of the other is replayed its 200, not the merged 400.
func TestMergedRefusalIsSplit(t *testing.T) {
	for name, rig := range writeRigs(t, "GHLPROXY_BATCH_COALESCE="+coalesce.String()) {
		t.Run(name, func(t *testing.T) {
			w := rig(t)
			token := fakeghl.Token("Location", "locMergeSplit", "app-1")
			hdr := ghlHeaders(token)
			newContact(t, w.up.URL, token, map[string]any{"locationId": "locMergeSplit", "firstName": "Other", "email": "taken@split.example"})
			id := newContact(t, w.up.URL, token, map[string]any{"locationId": "locMergeSplit", "firstName": "Ann"})

			r := w.replicas[0] // one replica: the merge happens in its batcher
			verifyToken(t, r, hdr, id)
			bodies := []string{`{"email":"taken@split.example"}`, `{"firstName":"Bob"}`}
			answers := make([]answer, 2)
			client := &http.Client{}
			var wg sync.WaitGroup
			for i, body := range bodies {
				wg.Add(1)
				go func() {
					defer wg.Done()
					answers[i] = send(client, "PUT", r.URL+"/contacts/"+id, body, hdr, 30*time.Second, nil)
				}()
				if i == 0 {
					// The second joins while the first is held for coalescing: the stand-in
					// has seen nothing yet.
					waitForQueued(t, r, 1)
				}
			}
			wg.Wait()
			for i, a := range answers {
				if a.Err != nil {
					t.Fatalf("PUT %s: %v", bodies[i], a.Err)
				}
			}
			if answers[0].Status != http.StatusBadRequest || !strings.Contains(string(answers[0].Body), "duplicated") {
				t.Errorf("the email write got %d %s; want GHL's own 400 for it", answers[0].Status, answers[0].Body)
			}
			if answers[1].Status != http.StatusOK {
				t.Errorf("the first-name write got %d %s; want its own 200", answers[1].Status, answers[1].Body)
			}
			st := w.up.Fake.Stats()
			var seen []string
			for _, wr := range st.Writes[id][1:] { // its creation left out
				seen = append(seen, fmt.Sprintf("%s %d", wr.Method, wr.Status))
			}
			// The merged call (refused), then each alone in order.
			if want := []string{"PUT 400", "PUT 400", "PUT 200"}; !slices.Equal(seen, want) {
				t.Errorf("the stand-in saw %v, want %v", seen, want)
			}
			if c := contactOnStandIn(t, w.up.URL, token, id); c["firstName"] != "Bob" {
				t.Errorf("GHL holds firstName %v, want Bob", c["firstName"])
			}
			// Bob's retry: his own answer, replayed.
			resp, b := call(t, http.DefaultClient, "PUT", w.replicas[1].URL+"/contacts/"+id, bodies[1], hdr)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Ghlproxy-Dedupe") != "replay" {
				t.Errorf("retry of the first-name write: %d %q %s; want its 200 replayed", resp.StatusCode, resp.Header.Get("X-Ghlproxy-Dedupe"), b)
			}
		})
	}
}

// TestSupersededMergedWriteIsSentAgain: dnd on and dnd off, merged into one call; off is
// the entity's latest write. A retry of on is a new intent and is sent (GHL ends with dnd
// on); a retry of off is replayed.
func TestSupersededMergedWriteIsSentAgain(t *testing.T) {
	for name, rig := range writeRigs(t, "GHLPROXY_BATCH_COALESCE="+coalesce.String()) {
		t.Run(name, func(t *testing.T) {
			w := rig(t)
			token := fakeghl.Token("Location", "locSuperseded", "app-1")
			hdr := ghlHeaders(token)
			id := newContact(t, w.up.URL, token, map[string]any{"locationId": "locSuperseded", "firstName": "Sue"})
			r := w.replicas[0]
			verifyToken(t, r, hdr, id)
			on, off := `{"dnd":true}`, `{"dnd":false}`
			answers := make([]answer, 2)
			var wg sync.WaitGroup
			for i, body := range []string{on, off} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					answers[i] = send(http.DefaultClient, "PUT", r.URL+"/contacts/"+id, body, hdr, 30*time.Second, nil)
				}()
				if i == 0 {
					waitForQueued(t, r, 1)
				}
			}
			wg.Wait()
			for i, a := range answers {
				if a.Err != nil || a.Status != 200 {
					t.Fatalf("write %d: %d %v %s", i, a.Status, a.Err, a.Body)
				}
				if _, _, merged := batchInfo(a.Header); merged != 2 {
					t.Fatalf("write %d: X-Ghlproxy-Batch %q; want the two merged", i, a.Header.Get("X-Ghlproxy-Batch"))
				}
			}
			retryOff := send(http.DefaultClient, "PUT", w.replicas[1].URL+"/contacts/"+id, off, hdr, 30*time.Second, nil)
			if retryOff.Status != 200 || retryOff.Header.Get("X-Ghlproxy-Dedupe") != "replay" {
				t.Errorf("retry of the latest write: %d %q; want it replayed", retryOff.Status, retryOff.Header.Get("X-Ghlproxy-Dedupe"))
			}
			retryOn := send(http.DefaultClient, "PUT", w.replicas[1].URL+"/contacts/"+id, on, hdr, 30*time.Second, nil)
			if retryOn.Status != 200 || retryOn.Header.Get("X-Ghlproxy-Dedupe") != "" {
				t.Errorf("retry of the superseded write: %d %q; want it sent", retryOn.Status, retryOn.Header.Get("X-Ghlproxy-Dedupe"))
			}
			if c := contactOnStandIn(t, w.up.URL, token, id); c["dnd"] != true {
				t.Errorf("GHL holds dnd %v; the app's last write said true", c["dnd"])
			}
		})
	}
}

// TestAbandonedReadsSpendNothing is item 8b of the write-safety issue: with the bucket
// empty, 70 reads queue for a token and their clients give up after 300 ms. No caller is
// left, so none of them may spend a token or reach GHL later: the limiter's queue empties
// at once, and GHL sees at most the few that got a token before their client left.
func TestAbandonedReadsSpendNothing(t *testing.T) {
	env := []string{"GHLPROXY_RATELIMIT_RATE=600", "GHLPROXY_RATELIMIT_PER=1m", "GHLPROXY_RATELIMIT_BURST=5"}
	for name, rig := range writeRigs(t, env...) {
		t.Run(name, func(t *testing.T) {
			w := rig(t)
			r := w.replicas[0]
			token := fakeghl.Token("Location", "locAbandon", "app-1")
			hdr := ghlHeaders(token)
			for i := range 5 { // empty the bucket
				call(t, http.DefaultClient, "GET", r.URL+fmt.Sprintf("/contacts/drain%d", i), "", hdr)
			}
			const n = 70
			var wg sync.WaitGroup
			gaveUp := make([]bool, n)
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					a := send(http.DefaultClient, "GET", r.URL+fmt.Sprintf("/contacts/abandoned%d", i), "", hdr, 300*time.Millisecond, nil)
					gaveUp[i] = a.Err != nil
				}()
			}
			wg.Wait()
			left := 0
			for _, g := range gaveUp {
				if g {
					left++
				}
			}
			if left < n/2 {
				t.Fatalf("only %d of %d clients gave up: the bucket was not busy enough to test this", left, n)
			}
			// On a sidecar that keeps abandoned reads, they go out at 10 a second for 7 s.
			q := r.S.Metrics.QueueDepth.WithLabelValues("ratelimit")
			poll.Until(t, 3*time.Second, "the limiter's queue to empty", func() bool { return testutil.ToFloat64(q) == 0 })
			sent := int(w.up.Fake.Stats().RouteCalls("GET /contacts/{contactId}")) - 5
			t.Logf("%d clients gave up; %d abandoned reads reached GHL", left, sent)
			if sent > n-left+10 {
				t.Errorf("%d of the reads reached GHL although %d of their clients had gone", sent, left)
			}
		})
	}
}

// TestFoldOutlastsThirtySeconds is item 8a of the write-safety issue: a folded call is
// bounded by what transport.timeout and ratelimit.max_wait allow, not a fixed 30 s. GHL
// takes 31 s to answer a read; with transport.timeout 40s the caller gets the answer.
func TestFoldOutlastsThirtySeconds(t *testing.T) {
	t.Parallel()
	up := startLoggedStandIn(t, unlimited())
	r := startReplica(t, testConfig(t, up.URL, "GHLPROXY_TRANSPORT_TIMEOUT=40s", "GHLPROXY_TRANSPORT_HEADER_TIMEOUT=40s"))
	token := fakeghl.Token("Location", "locSlow", "app-1")
	id := newContact(t, up.URL, token, map[string]any{"locationId": "locSlow", "firstName": "Slo"})
	up.Fake.SetExtraDelay(31 * time.Second)
	a := send(http.DefaultClient, "GET", r.URL+"/contacts/"+id, "", ghlHeaders(token), 45*time.Second, nil)
	if a.Err != nil || a.Status != 200 {
		t.Fatalf("a read GHL answers in 31 s, with transport.timeout 40s: %d %v %s", a.Status, a.Err, a.Body)
	}
}

// TestShutdownWithinOneGrace is item 8g of the write-safety issue: a read in flight to a
// GHL that takes 20 s to answer, and a write queued behind an empty bucket, when the
// sidecar is told to stop with shutdown.grace 1.5s. Everything is over within that one
// period: the write is answered (not sent), the read ended, and Serve returns — not after
// a second period for the stages, nor after the read's own 20 s.
func TestShutdownWithinOneGrace(t *testing.T) {
	const grace = 1500 * time.Millisecond
	up := startLoggedStandIn(t, unlimited())
	r := startReplica(t, testConfig(t, up.URL, "GHLPROXY_SHUTDOWN_GRACE="+grace.String(),
		"GHLPROXY_RATELIMIT_RATE=6", "GHLPROXY_RATELIMIT_PER=1m", "GHLPROXY_RATELIMIT_BURST=7"))
	token := fakeghl.Token("Location", "locShutdown", "app-1")
	hdr := ghlHeaders(token)
	id := newContact(t, up.URL, token, map[string]any{"locationId": "locShutdown", "firstName": "Shu"})
	verifyToken(t, r, hdr, id)
	for i := range 4 { // the bucket but two tokens: the read's and a write's
		call(t, http.DefaultClient, "GET", r.URL+fmt.Sprintf("/contacts/drain%d", i), "", hdr)
	}
	other := newContact(t, up.URL, token, map[string]any{"locationId": "locShutdown", "firstName": "Oth"})
	up.Fake.SetExtraDelay(20 * time.Second)
	read := make(chan answer, 1)
	go func() {
		read <- send(http.DefaultClient, "GET", r.URL+"/contacts/"+id+"?slow=1", "", hdr, 30*time.Second, nil)
	}()
	poll.Until(t, 10*time.Second, "the read to reach the stand-in", func() bool {
		for _, a := range up.Log.arrivals() {
			if strings.Contains(a.Path, id) && a.Status == 0 {
				return true
			}
		}
		return false
	})
	// A write sent, GHL slow to answer it, and one queued behind the empty bucket.
	sent := make(chan answer, 1)
	go func() {
		sent <- send(http.DefaultClient, "PUT", r.URL+"/contacts/"+other, `{"firstName":"Slow"}`, hdr, 30*time.Second, nil)
	}()
	poll.Until(t, 10*time.Second, "the write to reach the stand-in", func() bool {
		for _, a := range up.Log.arrivals() {
			if a.Method == "PUT" && a.Status == 0 {
				return true
			}
		}
		return false
	})
	write := make(chan answer, 1)
	go func() {
		write <- send(http.DefaultClient, "PUT", r.URL+"/contacts/"+id, `{"firstName":"Late"}`, hdr, 30*time.Second, nil)
	}()
	waitForQueued(t, r, 1)

	start := time.Now()
	r.stop()
	took := time.Since(start)
	t.Logf("Serve returned %v after the stop", took.Round(time.Millisecond))
	if took > grace+time.Second {
		t.Errorf("shutting down took %v with shutdown.grace %v", took, grace)
	}
	if a := <-write; a.Err == nil && (a.Status/100 == 2 || strings.Contains(string(a.Body), "may have been applied")) {
		t.Errorf("the queued write was answered %d %s: it had no token, it was not sent", a.Status, a.Body)
	}
	if a := <-sent; a.Err == nil && (a.Status != http.StatusServiceUnavailable || !strings.Contains(string(a.Body), "may have been applied")) {
		t.Errorf("the write GHL was still answering got %d %s; want the sidecar's 503 saying it may have been applied", a.Status, a.Body)
	}
	if puts := writesTo(up.Fake.Stats(), id, "PUT"); puts != 0 {
		t.Errorf("%d PUTs reached the stand-in", puts)
	}
	if a := <-read; a.Err == nil && (a.Status != http.StatusServiceUnavailable || a.Header.Get("X-Ghlproxy-Error") != "shutting-down") {
		t.Errorf("the read in flight got %d %q %s; want the sidecar's 503 shutting-down", a.Status, a.Header.Get("X-Ghlproxy-Error"), a.Body)
	}
}
