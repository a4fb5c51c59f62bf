package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// fault is one row of the fault matrix (issue 9, item 3).
type fault struct {
	name    string
	standIn fakeghl.Config
	env     []string // sidecar settings
	// start switches the fault on once the load is running; it returns when the fault has
	// run its course (nil: the fault is in standIn or env from the start).
	start func(t *testing.T, up *standIn, rdb *redistest.Server)
	// hangUp: clients give up after a few tens of milliseconds, mid-request.
	hangUp bool
	// tinyLimit, when set, is GHL's per-window limit for the load's credentials (not for
	// the seeding).
	tinyLimit int
}

// TestFaultMatrix drives a mixed load of three credentials (creates, partial updates and
// reads) through two replicas sharing Redis while one fault is on, and checks for each:
// no write lost or applied twice (the stand-in's write log against the clients' answers),
// no answer reaching a credential it was not made for (the stand-in's "_caller" in every
// body), and no goroutine left behind once the replicas stop.
func TestFaultMatrix(t *testing.T) {
	for _, f := range []fault{
		{name: "upstream 5xx", start: func(t *testing.T, up *standIn, _ *redistest.Server) { up.Fake.SetErrorRate(0.3, 0) }},
		{name: "connection resets", start: func(t *testing.T, up *standIn, _ *redistest.Server) { up.Fake.SetResetRate(0.3) }},
		// GHL's long tail (median 150ms, p99 ≈ 525ms) against a 300ms transport timeout:
		// some calls time out mid-way, the rest answer slowly.
		{name: "slow upstream vs transport timeout", standIn: fakeghl.Config{Latency: 150 * time.Millisecond},
			env: []string{"GHLPROXY_TRANSPORT_TIMEOUT=300ms", "GHLPROXY_TRANSPORT_HEADER_TIMEOUT=300ms"}},
		// GHL grants 5 requests per window where the sidecar thinks 100: a storm of 429s.
		{name: "429 storm", standIn: fakeghl.Config{Window: 2 * time.Second}, tinyLimit: 5,
			env: []string{"GHLPROXY_RATELIMIT_MAX_WAIT=2s"}},
		{name: "clients hanging up", standIn: fakeghl.Config{Latency: 60 * time.Millisecond}, hangUp: true},
		{name: "redis down then restarted", standIn: fakeghl.Config{Latency: 50 * time.Millisecond},
			start: func(t *testing.T, _ *standIn, rdb *redistest.Server) {
				rdb.Stop()
				time.Sleep(time.Second) // the fault's duration, not synchronisation
				rdb.Restart()
			}},
	} {
		t.Run(f.name, func(t *testing.T) { faultRun(t, f) })
	}
}

// credential is one caller of the fault load.
type credential struct {
	token, loc string
	contacts   []string
}

// op is one request of the load and what came of it.
type op struct {
	cred           *credential
	method, path   string
	body, bodyHash string
	answer         answer
	hungUp         bool
}

func faultRun(t *testing.T, f fault) {
	base := runtime.NumGoroutine()
	rdb := redistest.Start(t)
	if f.standIn.Limit == 0 {
		f.standIn.Limit = 100000
	}
	// Two apps on one location (two scopes, two callers) and a private token of another.
	creds := []*credential{
		{token: fakeghl.Token("Location", "loc-f1", "app-1"), loc: "loc-f1"},
		{token: fakeghl.Token("Location", "loc-f1", "app-2"), loc: "loc-f1"},
		{token: "pit-fault-matrix", loc: "loc-f2"},
	}
	if f.tinyLimit > 0 {
		f.standIn.Limits = map[string]int{}
		for _, c := range creds {
			f.standIn.Limits[fakeghl.ScopeOf("Bearer "+c.token)] = f.tinyLimit
		}
	}
	up := startLoggedStandIn(t, f.standIn)
	env := append([]string{"GHLPROXY_REDIS_URL=" + rdb.URL(), "GHLPROXY_REDIS_TIMEOUT=1s"}, f.env...)
	rs := []*replica{startReplica(t, testConfig(t, up.URL, env...)), startReplica(t, testConfig(t, up.URL, env...))}

	const perCred = 8
	var ops []*op
	for ci, c := range creds {
		for i := range perCred {
			// Seeded straight on the stand-in, before any fault is on, by another app of
			// the location: its own rate-limit scope, so the 429 storm's tiny window is
			// not spent before the load starts.
			seeder := fakeghl.Token("Location", c.loc, fmt.Sprintf("seeder-%d", ci))
			c.contacts = append(c.contacts, createContact(t, up.URL, seeder, c.loc, fmt.Sprintf("seed-%d-%d@example.com", ci, i)))
		}
		for i, id := range c.contacts {
			ops = append(ops,
				&op{cred: c, method: "PUT", path: "/contacts/" + id, body: fmt.Sprintf(`{"firstName":"F-%d-%d"}`, ci, i)},
				&op{cred: c, method: "GET", path: "/contacts/" + id})
			if i%2 == 0 {
				ops = append(ops, &op{cred: c, method: "POST", path: "/contacts/",
					body: fmt.Sprintf(`{"locationId":%q,"email":"new-%d-%d@example.com"}`, c.loc, ci, i)})
			}
		}
	}
	for _, o := range ops {
		if o.body != "" {
			sum := sha256.Sum256([]byte(o.body))
			o.bodyHash = hex.EncodeToString(sum[:8])
		}
	}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: len(ops)}}
	faultDone := make(chan struct{})
	if f.start != nil {
		go func() { defer close(faultDone); f.start(t, up, rdb) }()
	} else {
		close(faultDone)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var wg sync.WaitGroup
	for i, o := range ops {
		timeout := 20 * time.Second
		if f.hangUp && i%2 == 0 {
			timeout = time.Duration(10+rng.IntN(80)) * time.Millisecond
			o.hungUp = true
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.answer = send(client, o.method, rs[i%2].URL+o.path, o.body, ghlHeaders(o.cred.token), timeout, nil)
		}()
	}
	wg.Wait()
	<-faultDone

	// Writes the stand-in applied, by body.
	st := up.Fake.Stats()
	applied := map[string]int{}
	for _, ws := range st.Writes {
		for _, w := range ws {
			if w.Status >= 200 && w.Status < 300 {
				applied[w.BodyHash]++
			}
		}
	}
	outcomes := map[string]int{}
	for i, o := range ops {
		a := o.answer
		switch {
		case a.Err != nil:
			outcomes["no answer"]++
			if !o.hungUp {
				t.Errorf("op %d %s %s: no answer: %v", i, o.method, o.path, a.Err)
			}
		case a.Header.Get("X-Ghlproxy-Error") != "":
			outcomes[fmt.Sprintf("%d %s", a.Status, a.Header.Get("X-Ghlproxy-Error"))]++
		default:
			outcomes[fmt.Sprintf("%d", a.Status)]++
		}
		if a.Err == nil {
			if m := callerMismatch("Bearer "+o.cred.token, a.Status, a.Header, a.Body); m != "" {
				t.Errorf("op %d %s %s: %s", i, o.method, o.path, m)
			}
		}
		if o.body == "" || o.method == "GET" {
			continue
		}
		n := applied[o.bodyHash]
		switch {
		case n > 1:
			t.Errorf("op %d %s %s applied %d times", i, o.method, o.path, n)
		case a.Err == nil && a.Status >= 200 && a.Status < 300 && n != 1:
			t.Errorf("op %d %s %s answered %d but applied %d times: lost", i, o.method, o.path, a.Status, n)
		case a.Err == nil && a.Status >= 300 && a.Header.Get("X-Ghlproxy-Error") == "" && n != 0:
			t.Errorf("op %d %s %s: GHL answered %d yet the write was applied", i, o.method, o.path, a.Status)
		}
	}
	t.Logf("%d requests: %v; upstream %d calls, %d 429s", len(ops), outcomes, st.Calls, st.TooMany)

	client.CloseIdleConnections()
	for _, r := range rs {
		r.stop()
	}
	up.Stop()
	http.DefaultClient.CloseIdleConnections()
	checkGoroutines(t, base, 5)
}
