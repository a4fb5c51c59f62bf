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
	"github.com/ghlproxy/ghlproxy/internal/metrics"
)

// bulkInfo reads bulk=<k> from X-Ghlproxy-Batch (0 when absent).
func bulkInfo(h http.Header) int {
	n := 0
	for _, part := range strings.Split(h.Get("X-Ghlproxy-Batch"), ";") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(part), "bulk="); ok {
			_, _ = fmt.Sscan(v, &n)
		}
	}
	return n
}

// tagBurst sends one add-tags call per contact at once (after a barrier) to base.
func tagBurst(t *testing.T, base, token string, ids []string, tags string) []answer {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: len(ids)}}
	defer client.CloseIdleConnections()
	out := make([]answer, len(ids))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			<-start
			out[i] = send(client, "POST", base+"/contacts/"+id+"/tags", `{"tags":`+tags+`}`, ghlHeaders(token), 30*time.Second, nil)
		})
	}
	close(start)
	wg.Wait()
	return out
}

// TestBulkTagAdds: with batch.bulk on, N concurrent single tag adds of one tag set through a
// replica go upstream as ceil(N/batch.max) bulk calls; every caller gets its own contact's
// answer in the single call's shape (201 {"tags": its tags after}, or GHL's 400 for a
// contact that does not exist), and the contacts end with the same tags as N single calls
// through a replica with batch.bulk off give to their twins.
func TestBulkTagAdds(t *testing.T) {
	const n, maxGroup = 20, 5
	up := startLoggedStandIn(t, fakeghl.Config{Limit: 100000})
	// A linger far longer than the burst takes to arrive: every bulk call goes out full
	// (batch.max writes), so the count is exact. Nothing waits for it: 20 is a multiple of 5.
	bulk := startReplica(t, testConfig(t, up.URL, "GHLPROXY_BATCH_LINGER=10s", "GHLPROXY_BATCH_MAX=5", "GHLPROXY_BATCH_BULK=true"))
	single := startReplica(t, testConfig(t, up.URL, "GHLPROXY_BATCH_MAX=5"))
	token := fakeghl.Token("Location", "loc-bulk", "app-1")
	var viaBulk, viaSingle []string
	for i := range n {
		if i == 7 { // a contact that does not exist: its caller gets GHL's error
			viaBulk, viaSingle = append(viaBulk, "noSuchContact00000007"), append(viaSingle, "noSuchContact00000007")
			continue
		}
		viaBulk = append(viaBulk, createContact(t, up.URL, token, "loc-bulk", fmt.Sprintf("bulk%d@example.com", i)))
		viaSingle = append(viaSingle, createContact(t, up.URL, token, "loc-bulk", fmt.Sprintf("single%d@example.com", i)))
	}
	for i := range n { // distinct tags before, so each answer is about its own contact
		if i == 7 {
			continue
		}
		for _, id := range []string{viaBulk[i], viaSingle[i]} {
			resp, b := call(t, http.DefaultClient, "POST", up.URL+"/contacts/"+id+"/tags", fmt.Sprintf(`{"tags":["own%d"]}`, i), ghlHeaders(token))
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("seeding tags: %d %s", resp.StatusCode, b)
			}
		}
	}
	verifyToken(t, bulk, ghlHeaders(token), viaBulk[0])
	verifyToken(t, single, ghlHeaders(token), viaSingle[0])
	before := up.Fake.Stats()

	answers := tagBurst(t, bulk.URL, token, viaBulk, `["vip","synced"]`)
	after := up.Fake.Stats()
	bulkCalls := after.RouteCalls("POST /contacts/bulk/tags/update/{type}") - before.RouteCalls("POST /contacts/bulk/tags/update/{type}")
	singles := after.RouteCalls("POST /contacts/{contactId}/tags") - before.RouteCalls("POST /contacts/{contactId}/tags")
	t.Logf("%d tag adds through a replica with batch.bulk: %d bulk calls, %d single calls upstream", n, bulkCalls, singles)
	if want := int64((n + maxGroup - 1) / maxGroup); bulkCalls != want || singles != 0 {
		t.Errorf("%d bulk and %d single calls upstream, want %d bulk calls only", bulkCalls, singles, want)
	}
	if saved := testutil.ToFloat64(bulk.S.Metrics.UpstreamSaved.WithLabelValues(metrics.SavedBulk)); saved != float64(n-int(bulkCalls)) {
		t.Errorf("upstream_calls_saved_total{reason=bulk} = %v, want %d", saved, n-int(bulkCalls))
	}
	plain := tagBurst(t, single.URL, token, viaSingle, `["vip","synced"]`)
	if got := up.Fake.Stats().RouteCalls("POST /contacts/bulk/tags/update/{type}"); got != after.RouteCalls("POST /contacts/bulk/tags/update/{type}") {
		t.Errorf("the replica with batch.bulk off made %d bulk calls", got-after.RouteCalls("POST /contacts/bulk/tags/update/{type}"))
	}

	for i, a := range answers {
		p := plain[i]
		if a.Err != nil || p.Err != nil {
			t.Fatalf("tag add %d: %v / %v", i, a.Err, p.Err)
		}
		if m := callerMismatch("Bearer "+token, a.Status, a.Header, a.Body); m != "" {
			t.Errorf("tag add %d: %s", i, m)
		}
		if k := bulkInfo(a.Header); k != maxGroup {
			t.Errorf("tag add %d: X-Ghlproxy-Batch %q, want bulk=%d", i, a.Header.Get("X-Ghlproxy-Batch"), maxGroup)
		}
		if bulkInfo(p.Header) != 0 {
			t.Errorf("tag add %d with batch.bulk off: X-Ghlproxy-Batch %q", i, p.Header.Get("X-Ghlproxy-Batch"))
		}
		if i == 7 {
			if a.Status != http.StatusBadRequest || p.Status != http.StatusBadRequest || !ghlShaped(a.Body, http.StatusBadRequest) {
				t.Errorf("missing contact: %d %s via bulk, %d %s alone; want GHL's 400 both ways", a.Status, a.Body, p.Status, p.Body)
			}
			continue
		}
		var got, want struct{ Tags []string }
		_ = json.Unmarshal(a.Body, &got)
		_ = json.Unmarshal(p.Body, &want)
		if a.Status != http.StatusCreated || p.Status != http.StatusCreated || !slices.Equal(got.Tags, want.Tags) ||
			!slices.Equal(got.Tags, []string{fmt.Sprintf("own%d", i), "vip", "synced"}) {
			t.Errorf("tag add %d: %d %s via bulk, %d %s alone", i, a.Status, a.Body, p.Status, p.Body)
		}
		fb, fs := contactFields(t, up.URL, token, viaBulk[i])["tags"], contactFields(t, up.URL, token, viaSingle[i])["tags"]
		if fmt.Sprint(fb) != fmt.Sprint(fs) {
			t.Errorf("contact %d: tags %v after the bulk path, %v after single calls", i, fb, fs)
		}
	}
}
