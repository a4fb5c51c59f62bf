package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/poll"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// fault is one row of the fault matrix (issue 9, item 3).
type fault struct {
	name    string
	standIn fakeghl.Config
	env     []string // sidecar settings
	// store is what the replicas share: "" one Redis server, "sentinel" a primary and its
	// replica watched by a Redis Sentinel (redis.addrs with redis.master_name), "cluster" a
	// Redis Cluster of three masters with a replica each (redis.addrs), "proxied" one Redis
	// server that the replicas reach through a StallProxy, passing everything until armed.
	store string
	// processes: the replicas are `ghlproxy serve` processes of their own, so that a fault
	// can signal one.
	processes bool
	// The load goes in three waves. start switches the fault on once the first wave is on
	// its way and returns while the fault is on: the second wave meets it. heal ends the
	// fault and returns once it is over: the third wave meets what the fault left behind.
	// Both nil: the fault is in standIn or env from the start.
	start, heal func(t *testing.T, r *rig)
	// hangUp: clients give up after a few tens of milliseconds, mid-request.
	hangUp bool
	// tinyLimit, when set, is GHL's per-window limit for the load's credentials (not for
	// the seeding).
	tinyLimit int
	// resend: a client whose request got no answer at all sends it once more to the other
	// replica, as a Kubernetes Service sends new connections to the pods still serving.
	resend bool
	// degrades: the load must have met the fault on the shared store, so some rate-limit
	// decisions were made on the replicas' local fallback buckets.
	degrades bool
}

// rig is what a fault acts on.
type rig struct {
	up       *standIn
	rdb      *redistest.Server     // the one Redis server, when fault.store is ""
	sentinel *redistest.Sentinel   // when fault.store is "sentinel"
	cluster  *redistest.Cluster    // when fault.store is "cluster"
	stall    *redistest.StallProxy // in front of rdb, when fault.store is "proxied"
	procs    []*process            // the replicas, when fault.processes
	replicas []node
	// upstreamBusy is closed once the load's first calls have reached the stand-in.
	upstreamBusy chan struct{}
}

// node is one replica, in the test process or in a process of its own.
type node struct {
	URL, OpsURL string
	inProcess   bool
	stop        func()
}

// maxHeap bounds every replica's heap in use (and a replica process's resident set) after
// each row: generous, since the load is small, but it catches a fault that makes memory
// grow without bound (buffers piling up behind a stalled store, say).
const maxHeap = 256 << 20

// TestFaultMatrix drives a mixed load of three credentials (creates, partial updates and
// reads) through two replicas sharing a store (Redis, Sentinel or Cluster) in three waves
// around one fault, and checks for each: every client that did not hang up answered, no
// write lost or applied twice (the stand-in's write log against the clients' answers), no
// answer reaching a credential it was not made for (the stand-in's "_caller" in every
// body), no goroutine left behind once the replicas stop, and memory within maxHeap.
func TestFaultMatrix(t *testing.T) {
	for _, f := range []fault{
		{name: "upstream 5xx", start: func(t *testing.T, r *rig) { r.up.Fake.SetErrorRate(0.3, 0) }},
		{name: "connection resets", start: func(t *testing.T, r *rig) { r.up.Fake.SetResetRate(0.3) }},
		// GHL's long tail (median 150ms, p99 ≈ 525ms) against a 300ms transport timeout:
		// some calls time out mid-way, the rest answer slowly.
		{name: "slow upstream vs transport timeout", standIn: fakeghl.Config{Latency: 150 * time.Millisecond},
			env: []string{"GHLPROXY_TRANSPORT_TIMEOUT=300ms", "GHLPROXY_TRANSPORT_HEADER_TIMEOUT=300ms"}},
		// GHL grants 5 requests per window where the sidecar thinks 100: a storm of 429s.
		{name: "429 storm", standIn: fakeghl.Config{Window: 2 * time.Second}, tinyLimit: 5,
			env: []string{"GHLPROXY_RATELIMIT_MAX_WAIT=2s"}},
		{name: "clients hanging up", standIn: fakeghl.Config{Latency: 60 * time.Millisecond}, hangUp: true},
		{name: "redis down then restarted", standIn: fakeghl.Config{Latency: 50 * time.Millisecond}, degrades: true,
			start: func(t *testing.T, r *rig) { r.rdb.Stop() },
			heal: func(t *testing.T, r *rig) {
				time.Sleep(time.Second) // the fault's duration, not synchronisation
				r.rdb.Restart()
			}},
		// Redis holds every command for 5s, five times redis.timeout: each call the
		// sidecar makes waits out its timeout, and the commands it gave up on run late.
		{name: "redis slow", standIn: fakeghl.Config{Latency: 50 * time.Millisecond}, degrades: true,
			start: func(t *testing.T, r *rig) {
				if _, err := r.rdb.Do("CLIENT", "PAUSE", "5000", "ALL"); err != nil {
					t.Fatalf("CLIENT PAUSE: %v", err)
				}
			},
			heal: func(t *testing.T, r *rig) {
				// PING is held with the rest and answered when the pause ends.
				poll.Until(t, 30*time.Second, "Redis to answer again", func() bool {
					v, err := r.rdb.Do("PING")
					return err == nil && v == "PONG"
				})
			}},
		// Redis runs every command but its replies stop coming back (a loaded network, a
		// stalled proxy): what the replicas stored, invalidated or marked as sent may have
		// been applied although they saw a timeout. This is what left the soak's stale
		// reads; here it must leave no write lost or doubled and no answer misdirected.
		{name: "redis replies lost", store: "proxied", standIn: fakeghl.Config{Latency: 50 * time.Millisecond}, degrades: true,
			start: func(t *testing.T, r *rig) { r.stall.Arm() },
			heal: func(t *testing.T, r *rig) {
				// Until a write's invalidation went unconfirmed (the case that left stale
				// reads), then until every one was retried to Redis's confirmation.
				poll.Until(t, 30*time.Second, "a cache and a fold invalidation waiting for Redis", func() bool {
					return pendingInvalidations(t, r, "cache") > 0 && pendingInvalidations(t, r, "fold") > 0
				})
				r.stall.Release()
				poll.Until(t, 30*time.Second, "every invalidation confirmed once replies flow", func() bool {
					return pendingInvalidations(t, r, "cache")+pendingInvalidations(t, r, "fold") == 0
				})
			}},
		// The primary dies; the Sentinel promotes its replica, and the replicas must find
		// it (go-redis asks the Sentinel) and leave their fallbacks.
		{name: "redis sentinel failover", store: "sentinel", standIn: fakeghl.Config{Latency: 50 * time.Millisecond}, degrades: true,
			start: func(t *testing.T, r *rig) { r.sentinel.Primary.Stop() },
			heal: func(t *testing.T, r *rig) {
				took, ok := poll.Within(30*time.Second, func() bool {
					addr, err := r.sentinel.MasterAddr()
					return err == nil && addr == r.sentinel.Replica.Addr()
				})
				if !ok {
					t.Fatal("the Sentinel did not promote the replica within 30s")
				}
				t.Logf("the Sentinel promoted the replica %v after the primary died", took.Round(time.Millisecond))
				waitReady(t, r)
			}},
		// A master dies and the cluster marks it failed: with its slots uncovered every
		// node refuses commands (CLUSTERDOWN). Then its replica is let take over, as it
		// would have on its own, and the replicas must follow the new slot map.
		{name: "redis cluster failover", store: "cluster", standIn: fakeghl.Config{Latency: 50 * time.Millisecond}, degrades: true,
			start: func(t *testing.T, r *rig) {
				r.cluster.Nodes[0].Stop()
				poll.Until(t, 30*time.Second, "the cluster to mark the master failed", func() bool {
					info, err := r.cluster.Nodes[1].Do("CLUSTER", "INFO")
					return err == nil && strings.Contains(info, "cluster_state:fail")
				})
			},
			heal: func(t *testing.T, r *rig) {
				if _, err := r.cluster.Replicas[0].Do("CONFIG", "SET", "cluster-replica-no-failover", "no"); err != nil {
					t.Fatal(err)
				}
				took, ok := poll.Within(30*time.Second, func() bool {
					info, err := r.cluster.Replicas[0].Do("INFO", "replication")
					if err != nil || !strings.Contains(info, "role:master") {
						return false
					}
					info, err = r.cluster.Nodes[1].Do("CLUSTER", "INFO")
					return err == nil && strings.Contains(info, "cluster_state:ok")
				})
				if !ok {
					t.Fatal("the replica did not take over within 30s")
				}
				t.Logf("the replica took over %v after it was allowed to", took.Round(time.Millisecond))
				waitReady(t, r)
			}},
		// Replica 0 gets SIGTERM with calls in flight (GHL answers in 200ms): it answers
		// what it accepted and exits; what it no longer accepts goes to replica 1.
		{name: "SIGTERM under load", processes: true, resend: true, standIn: fakeghl.Config{Latency: 200 * time.Millisecond},
			env: []string{"GHLPROXY_SHUTDOWN_GRACE=20s"},
			start: func(t *testing.T, r *rig) {
				select {
				case <-r.upstreamBusy:
				case <-time.After(30 * time.Second):
					t.Fatal("the load's first calls did not reach the stand-in within 30s")
				}
				r.procs[0].Terminate()
				addr := strings.TrimPrefix(r.procs[0].URL, "http://")
				if _, ok := poll.Within(10*time.Second, func() bool {
					c, err := net.DialTimeout("tcp", addr, time.Second)
					if err == nil {
						c.Close()
					}
					return err != nil
				}); !ok {
					t.Fatal("replica 0 still accepts connections 10s after SIGTERM")
				}
			},
			heal: func(t *testing.T, r *rig) {
				if !r.procs[0].Wait(30 * time.Second) {
					t.Error("replica 0 did not exit within 30s of SIGTERM (grace 20s)")
				}
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
	resent         bool // sent again to the other replica after getting no answer
}

func faultRun(t *testing.T, f fault) {
	base := runtime.NumGoroutine()
	r := &rig{upstreamBusy: make(chan struct{})}
	env := []string{"GHLPROXY_REDIS_TIMEOUT=1s"}
	switch f.store {
	case "sentinel":
		r.sentinel = redistest.StartSentinel(t, "ghlproxy")
		env = append(env, "GHLPROXY_REDIS_ADDRS="+strings.Join(r.sentinel.Addrs(), ","), "GHLPROXY_REDIS_MASTER_NAME="+r.sentinel.Name)
	case "cluster":
		// The replicas take over only when the fault lets them (see its heal), so that the
		// load meets the cluster while it has lost a master.
		r.cluster = redistest.StartClusterWithReplicas(t, 3, "--cluster-replica-no-failover", "yes")
		env = append(env, "GHLPROXY_REDIS_ADDRS="+strings.Join(r.cluster.Addrs(), ","))
	case "proxied":
		r.rdb = redistest.Start(t)
		r.stall = redistest.StartPassProxy(t, r.rdb.Addr(), "")
		env = append(env, "GHLPROXY_REDIS_URL=redis://"+r.stall.Addr()+"/0")
	default:
		r.rdb = redistest.Start(t)
		env = append(env, "GHLPROXY_REDIS_URL="+r.rdb.URL())
	}
	env = append(env, f.env...)
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
	r.up = startLoggedStandIn(t, f.standIn)
	for range 2 {
		if f.processes {
			p := startProcess(t, r.up.URL, env...)
			r.procs = append(r.procs, p)
			r.replicas = append(r.replicas, node{URL: p.URL, OpsURL: p.OpsURL, stop: func() {
				p.Terminate()
				if !p.Wait(30 * time.Second) {
					t.Errorf("replica process %s did not exit within 30s of SIGTERM", p.URL)
				}
			}})
			continue
		}
		rep := startReplica(t, testConfig(t, r.up.URL, env...))
		r.replicas = append(r.replicas, node{URL: rep.URL, OpsURL: rep.OpsURL, inProcess: true, stop: rep.stop})
	}

	const perCred = 8
	var ops []*op
	for ci, c := range creds {
		for i := range perCred {
			// Seeded straight on the stand-in, before any fault is on, by another app of
			// the location: its own rate-limit scope, so the 429 storm's tiny window is
			// not spent before the load starts.
			seeder := fakeghl.Token("Location", c.loc, fmt.Sprintf("seeder-%d", ci))
			c.contacts = append(c.contacts, createContact(t, r.up.URL, seeder, c.loc, fmt.Sprintf("seed-%d-%d@example.com", ci, i)))
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
	var calls atomic.Int32
	r.up.Log.setOnArrive(func(arrival) {
		if calls.Add(1) == 3 {
			close(r.upstreamBusy)
		}
	})
	memBefore := memoryOf(t, r.replicas)
	routinesBefore := make([]float64, len(r.procs))
	for i, p := range r.procs {
		routinesBefore[i], _ = metricValue(t, p.OpsURL, "go_goroutines")
	}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: len(ops)}}
	rng := rand.New(rand.NewPCG(1, 2))
	var wg sync.WaitGroup
	defer wg.Wait() // a failed start or heal must not leave the load running into clean-up
	wave := func(w int) {
		for i, o := range ops {
			if i%3 != w {
				continue
			}
			timeout := 20 * time.Second
			if f.hangUp && i%2 == 0 {
				timeout = time.Duration(10+rng.IntN(80)) * time.Millisecond
				o.hungUp = true
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				o.answer = send(client, o.method, r.replicas[i%2].URL+o.path, o.body, ghlHeaders(o.cred.token), timeout, nil)
				if o.answer.Err != nil && f.resend && !o.hungUp {
					o.resent = true
					o.answer = send(client, o.method, r.replicas[(i+1)%2].URL+o.path, o.body, ghlHeaders(o.cred.token), timeout, nil)
				}
			}()
		}
	}
	wave(0)
	if f.start != nil {
		f.start(t, r)
	}
	wave(1)
	if f.heal != nil {
		f.heal(t, r)
	}
	wave(2)
	wg.Wait()

	// Writes the stand-in applied, by body.
	st := r.up.Fake.Stats()
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
		if o.resent {
			outcomes["resent to the other replica"]++
		}
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

	if f.degrades {
		var fallback float64
		for _, n := range r.replicas {
			v, _ := metricValue(t, n.OpsURL, "ghlproxy_ratelimit_fallback_decisions_total")
			fallback += v
		}
		t.Logf("rate-limit decisions on the local fallback: %.0f", fallback)
		if fallback == 0 {
			t.Error("no rate-limit decision fell back to the local buckets: the load never met the fault")
		}
	}
	checkMemory(t, r.replicas, memBefore, memoryOf(t, r.replicas))

	// Closing the clients' and the stand-in's connections ends the replicas' keep-alive
	// goroutines; what is left beyond the count before the load is a leak.
	client.CloseIdleConnections()
	r.up.Stop()
	for i, p := range r.procs {
		select {
		case <-p.exited:
			continue
		default:
		}
		var n float64
		if _, ok := poll.Within(10*time.Second, func() bool {
			n, _ = metricValue(t, p.OpsURL, "go_goroutines")
			return n <= routinesBefore[i]+10
		}); !ok {
			t.Errorf("replica process %d: %.0f goroutines 10s after the load, %.0f before", i, n, routinesBefore[i])
		} else {
			t.Logf("replica process %d: %.0f goroutines after the load, %.0f before", i, n, routinesBefore[i])
		}
	}
	for _, n := range r.replicas {
		n.stop()
	}
	http.DefaultClient.CloseIdleConnections()
	checkGoroutines(t, base, 5)
}

// waitReady waits until every replica's /readyz says it is back on the shared store.
// pendingInvalidations is the replicas' invalidations of stage (cache, fold) that Redis has
// not confirmed yet.
func pendingInvalidations(t *testing.T, r *rig, stage string) float64 {
	var sum float64
	for _, n := range r.replicas {
		v, _ := metricValue(t, n.OpsURL, `ghlproxy_invalidations_pending{stage="`+stage+`"}`)
		sum += v
	}
	return sum
}

func waitReady(t *testing.T, r *rig) {
	t.Helper()
	for i, n := range r.replicas {
		took, ok := poll.Within(30*time.Second, func() bool { return readyState(n.OpsURL) == "ready" })
		if !ok {
			t.Fatalf("replica %d not back on the shared store within 30s: %s", i, readyState(n.OpsURL))
		}
		t.Logf("replica %d ready %v later", i, took.Round(time.Millisecond))
	}
}

// memory is what a replica's /metrics says of its memory; ok is false when it did not answer
// (a replica that has exited).
type memory struct {
	heap, rss float64
	ok        bool
}

func memoryOf(t *testing.T, ns []node) []memory {
	t.Helper()
	ms := make([]memory, len(ns))
	for i, n := range ns {
		h, okh := metricValue(t, n.OpsURL, "go_memstats_heap_inuse_bytes")
		r, okr := metricValue(t, n.OpsURL, "process_resident_memory_bytes")
		ms[i] = memory{heap: h, rss: r, ok: okh && okr}
	}
	return ms
}

// checkMemory reports each replica's heap in use and resident set before and after the load,
// and fails when one is over maxHeap. Replicas in the test process share its heap, so one
// figure covers them all (and the stand-in, and the clients); its resident set also holds the
// race detector's shadow memory and is reported, not bounded.
func checkMemory(t *testing.T, ns []node, before, after []memory) {
	t.Helper()
	const mib = 1 << 20
	for i, n := range ns {
		if n.inProcess && i > 0 {
			break
		}
		who := fmt.Sprintf("replica process %d", i)
		if n.inProcess {
			who = "test process (both replicas, stand-in, clients)"
		}
		if !after[i].ok {
			t.Logf("%s: heap in use %.1f MiB, RSS %.1f MiB before the load; gone after", who, before[i].heap/mib, before[i].rss/mib)
			continue
		}
		t.Logf("%s: heap in use %.1f → %.1f MiB, RSS %.1f → %.1f MiB", who,
			before[i].heap/mib, after[i].heap/mib, before[i].rss/mib, after[i].rss/mib)
		if after[i].heap > maxHeap {
			t.Errorf("%s: heap in use %.1f MiB after the load, over %d MiB", who, after[i].heap/mib, maxHeap/mib)
		}
		if !n.inProcess && after[i].rss > maxHeap {
			t.Errorf("%s: RSS %.1f MiB after the load, over %d MiB", who, after[i].rss/mib, maxHeap/mib)
		}
	}
}

// TestEvictionPolicyIsReported is item 8h of the write-safety issue: a Redis that may evict
// keys (a maxmemory with an evicting policy) could drop a bucket or a fold marker, which
// would then read as a full bucket or a free lock. The sidecar says so in /readyz, its log
// and ghlproxy_redis_eviction_unsafe; with noeviction it reports nothing.
func TestEvictionPolicyIsReported(t *testing.T) {
	for _, c := range []struct {
		policy string
		unsafe bool
	}{{"allkeys-lru", true}, {"volatile-ttl", true}, {"noeviction", false}} {
		t.Run(c.policy, func(t *testing.T) {
			srv := redistest.Start(t, "--maxmemory", "64mb", "--maxmemory-policy", c.policy)
			_, up := startStandIn(t, unlimited())
			r := startReplica(t, testConfig(t, up.URL, "GHLPROXY_REDIS_URL="+srv.URL(), "GHLPROXY_REDIS_TIMEOUT=1s"))
			resp, b := call(t, http.DefaultClient, "GET", r.OpsURL+"/readyz", "", nil)
			var ready struct {
				Status string
				Checks map[string]string
			}
			if err := json.Unmarshal(b, &ready); err != nil || resp.StatusCode != 200 {
				t.Fatalf("/readyz: %d %s", resp.StatusCode, b)
			}
			got := ready.Checks["redis-eviction"]
			if unsafe := strings.HasPrefix(got, "unsafe") && strings.Contains(got, c.policy); unsafe != c.unsafe {
				t.Errorf("/readyz redis-eviction %q with maxmemory-policy %s", got, c.policy)
			}
			if c.unsafe && ready.Status != "degraded" {
				t.Errorf("/readyz status %q; want degraded", ready.Status)
			}
			v, _ := metricValue(t, r.OpsURL, "ghlproxy_redis_eviction_unsafe")
			if (v == 1) != c.unsafe {
				t.Errorf("ghlproxy_redis_eviction_unsafe = %v with maxmemory-policy %s", v, c.policy)
			}
		})
	}
}
