package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/poll"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// What one request costs Redis (docs/architecture.md, "What a request costs Redis"): the
// commands the sidecar sends for it, counted by Redis itself (MONITOR) on two replicas
// sharing one Redis, with the sidecar's own periodic traffic (coherence pings, the replica
// registry) left out. Commands a script runs inside Redis are not counted; the EVALSHA that
// runs it is, and no script may go as EVAL (its whole text). The bounds are the most a
// request of each kind costs today — a miss 5, a write 6 when no token lease is at hand
// and GHL's daily count is due (ratelimit.lease, scope.news) — so that a change that costs
// Redis more work fails here; the README's table lists them next to the targets.
func TestRedisCommandsPerRequest(t *testing.T) {
	rdb := redistest.Start(t)
	_, up := startStandIn(t, unlimited())
	rs := startCacheReplicas(t, 2, up.URL, rdb)
	tok := fakeghl.Token("Location", "loc-cmds", "")
	mon := monitor(t, rdb.Addr())
	// First requests load the scripts and teach the limiter GHL's headers: not counted.
	warm := newContact(t, up.URL, tok, map[string]any{"firstName": "W", "locationId": "loc-cmds"})
	for _, r := range rs {
		getContact(t, r, tok, warm)
	}
	putContact(t, rs[0], tok, warm, `{"firstName":"W2"}`)
	mon.count(t)

	id := newContact(t, up.URL, tok, map[string]any{"firstName": "A", "locationId": "loc-cmds"})
	steps := []struct {
		name string
		max  int
		do   func()
	}{
		// The first request of a scope after a quiet spell: no lease at hand, and GHL's
		// daily count not told for a second (ratelimit.lease, scope.news) add one each.
		// The cache's store and the fold's finish are one script run (luapipe.Steps).
		{"miss", 5, func() { getContact(t, rs[0], tok, id) }},
		{"hit from Redis", 1, func() { getContact(t, rs[1], tok, id) }},
		{"hit from memory", 0, func() { getContact(t, rs[1], tok, id) }},
		// The cache's and the fold's invalidations are one script run (luapipe.Steps).
		{"write", 6, func() { putContact(t, rs[0], tok, id, `{"firstName":"B"}`) }},
		// Nothing trails a request after its answer: what a step sends is all in its count.
		{"after the write", 0, func() {}},
	}
	for _, s := range steps {
		s.do()
		got := mon.count(t)
		t.Logf("%-16s %2d commands: %s", s.name, len(got), strings.Join(got, " "))
		if len(got) > s.max {
			t.Errorf("%s: %d Redis commands, want at most %d: %v", s.name, len(got), s.max, got)
		}
		for _, c := range got {
			if strings.HasPrefix(c, "eval(") {
				t.Errorf("%s: a script sent in full (EVAL) with its scripts cached: %v", s.name, got)
				break
			}
		}
	}
}

func putContact(t *testing.T, r *replica, tok, id, body string) {
	t.Helper()
	resp, b := call(t, http.DefaultClient, "PUT", r.URL+"/contacts/"+id, body, ghlHeaders(tok))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT /contacts/%s: %d %s", id, resp.StatusCode, b)
	}
}

// redisMonitor reads a MONITOR connection.
type redisMonitor struct {
	conn  net.Conn
	lines chan string
	addr  string
	seq   int
}

func monitor(t *testing.T, addr string) *redisMonitor {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	m := &redisMonitor{conn: c, lines: make(chan string, 4096), addr: addr}
	fmt.Fprintf(c, "MONITOR\r\n")
	go func() {
		defer close(m.lines)
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			m.lines <- strings.TrimSpace(l)
		}
	}()
	if l := <-m.lines; l != "+OK" {
		t.Fatalf("MONITOR: %q", l)
	}
	return m
}

// count returns the commands sent since the last count, by name (the script's first line
// for an EVAL), up to a marker the test sends itself: MONITOR lists commands in the order
// Redis ran them, so everything the sidecar sent before the marker is in.
func (m *redisMonitor) count(t *testing.T) []string {
	t.Helper()
	m.seq++
	marker := fmt.Sprintf("ghlproxy-test-marker-%d", m.seq)
	c, err := net.Dial("tcp", m.addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "ECHO %s\r\n", marker)
	_, _ = bufio.NewReader(c).ReadString('\n')
	c.Close()
	var got []string
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-m.lines:
			if !ok {
				t.Fatal("MONITOR connection closed")
			}
			if strings.Contains(l, marker) {
				return got
			}
			if name, ok := sidecarCommand(l); ok {
				got = append(got, name)
			}
		case <-timeout:
			t.Fatalf("marker %s never came through MONITOR", marker)
		}
	}
}

// sidecarCommand parses one MONITOR line and says whether a request sent it: not a
// command run inside a script, nor the sidecar's own periodic traffic.
var hashTag = regexp.MustCompile(`\{([a-z]+):[0-9a-f]+\}|:[0-9a-f]{16,}$`)

func sidecarCommand(l string) (string, bool) {
	if strings.Contains(l, "[0 lua]") || !strings.HasPrefix(l, "+") {
		return "", false
	}
	i := strings.Index(l, "] \"")
	if i < 0 {
		return "", false
	}
	args := strings.SplitN(l[i+3:], "\" \"", 5)
	name := strings.ToLower(strings.TrimSuffix(args[0], "\""))
	rest := strings.Join(args[1:], " ")
	// Named with the key's kind, its hash tag without the hash: evalsha(fold:lock).
	key := ""
	switch {
	case (name == "evalsha" || name == "eval") && len(args) > 3:
		key = args[3]
	case len(args) > 1:
		key = args[1]
	}
	if key = hashTag.ReplaceAllString(strings.TrimSuffix(key, "\""), "$1"); key != "" {
		name += "(" + strings.TrimPrefix(key, "ghlproxy:") + ")"
	}
	switch {
	case name == "spublish" && strings.Contains(rest, "}:ping:"), // coherence heartbeat
		strings.Contains(rest, "{replicas}:live"), // replica registry
		name == "ping", name == "hello", name == "client", name == "info":
		return "", false
	}
	return name, true
}

// A read's answer is stored once (issue 14, item 1): after a miss on one replica, one key in
// Redis is as long as the answer — the cache's entry — and the fold's record of the call
// holds no answer of its own, only the kind and the leader's token (dedupe's recCached),
// which tells waiters on other replicas to take the answer from the cache.
func TestReadAnswerStoredOnce(t *testing.T) {
	rdb := redistest.Start(t)
	_, up := startStandIn(t, unlimited())
	rs := startCacheReplicas(t, 2, up.URL, rdb)
	tok := fakeghl.Token("Location", "loc-once", "")
	long := strings.Repeat("x", 4096) // the answer outweighs every other value
	id := newContact(t, up.URL, tok, map[string]any{"firstName": long, "locationId": "loc-once"})
	resp, _ := getContact(t, rs[0], tok, id)
	if cs := cacheStatus(resp); !strings.Contains(cs, "stored") {
		t.Fatalf("the miss: Cache-Status %q, want the answer stored", cs)
	}
	if resp, _ := getContact(t, rs[1], tok, id); !isHit(resp) {
		t.Fatalf("the other replica: Cache-Status %q, want a hit", cacheStatus(resp))
	}
	ctx := context.Background()
	cl := redis.NewClient(&redis.Options{Addr: rdb.Addr()})
	defer cl.Close()
	keys, err := cl.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	var big, records []string
	for _, k := range keys {
		if cl.Type(ctx, k).Val() != "string" {
			continue
		}
		v := cl.Get(ctx, k).Val()
		if len(v) >= len(long) {
			big = append(big, k)
		}
		if strings.Contains(k, "{fold:") && strings.HasSuffix(k, ":result") {
			records = append(records, k)
			if len(v) != 17 || v[0] != 'C' {
				t.Errorf("fold record %s holds %d bytes (kind %q), want 17: the kind and a token", k, len(v), v[:1])
			}
		}
	}
	if len(big) != 1 || !strings.HasPrefix(big[0], "ghlproxy:{c:") {
		t.Errorf("keys as long as the answer: %v, want the cache's entry alone", big)
	}
	if len(records) == 0 {
		t.Error("no fold record of the read: the test would pass without the fold")
	}
}

// With the fold's finish of a miss in the cache's store run (dedupe.Attempt.FinishStep; that
// it is one command, TestRedisCommandsPerRequest counts), a waiter on another replica still
// shares the call: it reads the answer the leader stored in the cache, and GHL gets one
// request.
func TestMissSharedAcrossReplicasWithOneStore(t *testing.T) {
	rdb := redistest.Start(t)
	_, up := startStandIn(t, unlimited())
	var arrived atomic.Int64
	release := make(chan struct{})
	gate := httptest.NewServer(func() http.Handler {
		target, _ := url.Parse(up.URL)
		rp := httputil.NewSingleHostReverseProxy(target)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/contacts/") {
				arrived.Add(1)
				<-release
			}
			rp.ServeHTTP(w, r)
		})
	}())
	t.Cleanup(gate.Close)
	rs := startCacheReplicas(t, 2, gate.URL, rdb)
	// Registered after the replicas, so it runs before they stop: a test that fails early
	// does not leave them waiting on the gate.
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open)
	tok := fakeghl.Token("Location", "loc-shared", "")
	id := newContact(t, up.URL, tok, map[string]any{"firstName": "Shared", "locationId": "loc-shared"})
	mon := monitor(t, rdb.Addr())

	get := func(r *replica) <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			ch <- send(http.DefaultClient, "GET", r.URL+"/contacts/"+id, "", ghlHeaders(tok), 30*time.Second, nil)
		}()
		return ch
	}
	leader := get(rs[0])
	poll.Until(t, 10*time.Second, "the leader's call at GHL", func() bool { return arrived.Load() == 1 })
	mon.count(t) // the leader's commands so far
	waiter := get(rs[1])
	// The waiter's acquire (four keys and more; the leader's lease renewals have two) found
	// the leader's marker: it waits for the call.
	acquire := regexp.MustCompile(`"evalsha" "[0-9a-f]{40}" "([0-9]+)" "ghlproxy:\{fold:`)
	deadline := time.After(10 * time.Second)
	for found := false; !found; {
		select {
		case l := <-mon.lines:
			if m := acquire.FindStringSubmatch(l); m != nil {
				n, _ := strconv.Atoi(m[1])
				found = n >= 4
			}
		case <-deadline:
			t.Fatal("the waiter never looked for the leader's call in Redis")
		}
	}
	open()
	a, b := <-leader, <-waiter
	for name, x := range map[string]answer{"leader": a, "waiter": b} {
		if x.Err != nil || x.Status != http.StatusOK {
			t.Fatalf("%s: %d %v %s", name, x.Status, x.Err, x.Body)
		}
	}
	if string(a.Body) != string(b.Body) || b.Header.Get("X-Ghlproxy-Dedupe") != "shared" {
		t.Fatalf("waiter: X-Ghlproxy-Dedupe %q, same body %v; want the leader's answer, shared",
			b.Header.Get("X-Ghlproxy-Dedupe"), string(a.Body) == string(b.Body))
	}
	if n := arrived.Load(); n != 1 {
		t.Fatalf("GHL got %d reads of the contact, want 1", n)
	}
	// The fold's record is the answerless one: what the waiter shared came from the
	// cache's entry, not from a copy of the answer in the fold's record.
	cl := redis.NewClient(&redis.Options{Addr: rdb.Addr()})
	defer cl.Close()
	keys, err := cl.Keys(context.Background(), "ghlproxy:{fold:*}:result").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("fold records: %v %v, want the one call's", keys, err)
	}
	if v := cl.Get(context.Background(), keys[0]).Val(); len(v) != 17 || v[0] != 'C' {
		t.Fatalf("the fold's record holds %d bytes (kind %q), want 17: the kind and the token", len(v), v[:min(1, len(v))])
	}
}
