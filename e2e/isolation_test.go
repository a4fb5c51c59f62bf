package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// isoCred is one credential of the isolation test and what it created.
type isoCred struct {
	token, auth, loc string
	ids              []string
}

// secrets is every string that must never appear in Redis, with what it is.
type secrets struct {
	mu sync.Mutex
	m  map[string]string
}

func (s *secrets) add(v, what string) {
	s.mu.Lock()
	s.m[v] = what
	s.mu.Unlock()
}

// TestCacheIsolation is the isolation "done when" of the cache issue: 50 credentials ×
// 200 contacts, mixed reads and writes through three replicas sharing one Redis. No answer
// carries another credential's data — the stand-in marks every body with its caller, and
// every contact in it with its location — and afterwards a scan of every key and value in
// Redis finds no token (whole, or any of its parts) and no contact field in plain text.
//
// The credentials come in pairs that share a location (same claims, another signature):
// the same scope, the same contacts and the same paths, so only the credential in the key
// keeps their entries apart, and a write through one must invalidate for both.
//
// The issue asks for 100k operations (GHLPROXY_LONG=1); by default 3k, which keeps the
// test under a minute on a loaded two-core machine with the race detector.
func TestCacheIsolation(t *testing.T) {
	const (
		locations   = 25
		perLocation = 2
		contacts    = 200 // per credential
		workers     = 32
	)
	ops := 3_000
	if longRuns() {
		ops = 100_000
	}
	fake, up := startStandIn(t, unlimited())
	rdb := redistest.Start(t)
	rs := startCacheReplicas(t, 3, up.URL, rdb)

	leak := &secrets{m: map[string]string{}}
	var creds []*isoCred
	for l := range locations {
		loc := fmt.Sprintf("locIso%02dQz", l)
		for v := range perLocation {
			tok := twinToken(loc, v)
			c := &isoCred{token: tok, auth: "Bearer " + tok, loc: loc}
			creds = append(creds, c)
			leak.add(tok, "token")
			leak.add(c.auth, "Authorization header")
			for i, part := range strings.Split(tok, ".") {
				leak.add(part, fmt.Sprintf("token part %d", i))
			}
		}
		leak.add(loc, "location id")
	}

	// 10,000 contacts straight on the stand-in, 32 at a time.
	start := time.Now()
	var seedErr atomic.Value
	forEach(len(creds)*contacts, workers, func(n int) {
		c := creds[n%len(creds)]
		ci := n / len(creds)
		name := fmt.Sprintf("Fn%02dx%03dQv", n%len(creds), ci)
		last := fmt.Sprintf("Ln%02dx%03dQv", n%len(creds), ci)
		fields := map[string]any{"locationId": c.loc, "firstName": name, "lastName": last}
		// The stand-in checks every create with an email or phone against every contact
		// for duplicates: one in ten carries them, which keeps seeding linear enough.
		var email, phone string
		if ci%10 == 0 {
			email, phone = fmt.Sprintf("iso%02d.%03d@isolation.example", n%len(creds), ci), fmt.Sprintf("+1555%07d", n)
			fields["email"], fields["phone"] = email, phone
		}
		body, _ := json.Marshal(fields)
		// Straight into the stand-in's handler: no sidecar, and no socket either.
		req := httptest.NewRequest(http.MethodPost, "/contacts/", strings.NewReader(string(body)))
		req.Header.Set("Authorization", c.auth)
		req.Header.Set("Version", "2021-07-28")
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		fake.ServeHTTP(rec, req)
		b := rec.Body.Bytes()
		if rec.Code != http.StatusCreated {
			seedErr.Store(fmt.Sprintf("seeding: %d %s", rec.Code, b))
			return
		}
		var out struct{ Contact struct{ ID string } }
		_ = json.Unmarshal(b, &out)
		leak.add(name, "first name")
		leak.add(last, "last name")
		if email != "" {
			leak.add(email, "email")
			leak.add(phone, "phone")
		}
		leak.add(out.Contact.ID, "contact id")
		leak.mu.Lock()
		c.ids = append(c.ids, out.Contact.ID)
		leak.mu.Unlock()
	})
	if e := seedErr.Load(); e != nil {
		t.Fatal(e)
	}
	// What each credential may read: its location's contacts, its twin's included.
	byLoc, hot := map[string][]string{}, map[string][]string{}
	for _, c := range creds {
		byLoc[c.loc] = append(byLoc[c.loc], c.ids...)
		hot[c.loc] = append(hot[c.loc], c.ids[:5]...)
	}
	t.Logf("seeded %d credentials × %d contacts in %v", len(creds), contacts, time.Since(start).Round(time.Millisecond))

	queries := []string{"fn0", "fn1", "x00", "qv"}
	var (
		checked, hits, writes atomic.Int64
		byKind                sync.Map // kind -> *atomic.Int64
		failMu                sync.Mutex
		failures              []string
	)
	fail := func(s string) {
		failMu.Lock()
		if len(failures) < 20 {
			failures = append(failures, s)
		}
		failMu.Unlock()
	}
	count := func(kind string) {
		v, _ := byKind.LoadOrStore(kind, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	start = time.Now()
	forEach(ops, workers, func(n int) {
		rnd := rand.New(rand.NewPCG(uint64(n), 4))
		c := creds[rnd.IntN(len(creds))]
		r := rs[rnd.IntN(len(rs))]
		ids := byLoc[c.loc]
		id := ids[rnd.IntN(len(ids))]
		if rnd.IntN(100) < 80 {
			id = hot[c.loc][rnd.IntN(len(hot[c.loc]))] // most reads are of a few contacts
		}
		var method, path, body, kind string
		switch p := rnd.IntN(100); {
		case p < 72:
			kind, method, path = "get", http.MethodGet, "/contacts/"+id
		case p < 76:
			kind, method, path = "search", http.MethodPost, "/contacts/search"
			body = fmt.Sprintf(`{"locationId":%q,"query":%q,"pageLimit":20}`, c.loc, queries[rnd.IntN(len(queries))])
		case p < 80:
			kind, method, path = "list", http.MethodGet, "/contacts/?locationId="+c.loc+"&limit=20"
		case p < 98:
			id = ids[rnd.IntN(len(ids))] // writes go anywhere in the location
			name := fmt.Sprintf("Up%05dx%02dQv", n, rnd.IntN(100))
			leak.add(name, "first name")
			kind, method, path = "put", http.MethodPut, "/contacts/"+id
			body = `{"firstName":"` + name + `"}`
		default:
			name, email := fmt.Sprintf("New%05dQv", n), fmt.Sprintf("new%05d@isolation.example", n)
			leak.add(name, "first name")
			leak.add(email, "email")
			kind, method, path = "create", http.MethodPost, "/contacts/"
			body = fmt.Sprintf(`{"locationId":%q,"firstName":%q,"email":%q}`, c.loc, name, email)
		}
		status, b, hdr, err := doH(method, r.URL+path, body, c.auth)
		if err != nil {
			fail(fmt.Sprintf("%s %s: %v", method, path, err))
			return
		}
		checked.Add(1)
		count(kind)
		if status >= 300 {
			fail(fmt.Sprintf("%s %s: %d %s", method, path, status, b))
			return
		}
		if m := callerMismatch(c.auth, status, hdr, b); m != "" {
			fail(fmt.Sprintf("%s %s through %s: %s", method, path, r.URL, m))
			return
		}
		if strings.Contains(hdr.Get("Cache-Status"), "; hit") {
			hits.Add(1)
		}
		if method != http.MethodGet && kind != "search" {
			writes.Add(1)
		}
		if m := foreignLocation(b, c.loc); m != "" {
			fail(fmt.Sprintf("%s %s through %s: %s", method, path, r.URL, m))
		}
	})
	elapsed := time.Since(start)
	kinds := map[string]int64{}
	byKind.Range(func(k, v any) bool { kinds[k.(string)] = v.(*atomic.Int64).Load(); return true })
	t.Logf("%d operations through 3 replicas in %v (%.0f/s), %d answers checked: %v; %d cache hits, %d writes; %d calls reached the stand-in",
		ops, elapsed.Round(time.Millisecond), float64(ops)/elapsed.Seconds(), checked.Load(), kinds, hits.Load(), writes.Load(), fake.Stats().Calls)
	if len(failures) > 0 {
		t.Fatalf("%d problems (first %d):\n  %s", checked.Load(), len(failures), strings.Join(failures, "\n  "))
	}
	if hits.Load() == 0 {
		t.Fatalf("no cache hit in the run: isolation of the cache was not tested")
	}

	// Everything in Redis, key names included, against every secret.
	keys, found := scanRedis(t, rdb, leak.m)
	t.Logf("scanned %d Redis keys for %d secrets (tokens and their parts, location ids, contact ids, names, emails, phones)", keys, len(leak.m))
	if len(found) > 0 {
		t.Errorf("plain text in Redis (%d findings, first %d):\n  %s", len(found), min(len(found), 20), strings.Join(found[:min(len(found), 20)], "\n  "))
	}
}

// foreignLocation describes a contact in answer b that belongs to another location than
// loc, or returns "".
func foreignLocation(b []byte, loc string) string {
	var v struct {
		Contact  *struct{ LocationID string }  `json:"contact"`
		Contacts []struct{ LocationID string } `json:"contacts"`
	}
	if json.Unmarshal(b, &v) != nil {
		return ""
	}
	if v.Contact != nil && v.Contact.LocationID != "" && v.Contact.LocationID != loc {
		return "answer holds a contact of location " + v.Contact.LocationID + ", asked by " + loc
	}
	for _, c := range v.Contacts {
		if c.LocationID != loc {
			return "list holds a contact of location " + c.LocationID + ", asked by " + loc
		}
	}
	return ""
}

// scanRedis reads every key of rdb — its name and, by type, its whole value — and
// returns how many keys it read and a line for each secret found in one.
//
// Secrets are printable ASCII, so one can only occur inside a run of printable bytes at
// least as long as itself; sealed values are random bytes, whose printable runs are short.
// So every printable run of a key is cut into windows of each secret length and looked up
// in a set: complete, and linear in what Redis holds.
func scanRedis(t *testing.T, rdb *redistest.Server, needles map[string]string) (int, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := redis.NewClient(&redis.Options{Addr: rdb.Addr(), ReadTimeout: 10 * time.Second})
	defer cl.Close()
	lengths := map[int]bool{}
	shortest := 1 << 30
	for s := range needles {
		lengths[len(s)] = true
		shortest = min(shortest, len(s))
	}
	var found []string
	look := func(key, typ string, hay []byte) {
		for _, run := range printableRuns(hay, shortest) {
			for l := range lengths {
				for i := 0; i+l <= len(run); i++ {
					if what, ok := needles[string(run[i:i+l])]; ok {
						found = append(found, fmt.Sprintf("%s %q in key %q (%s)", what, run[i:i+l], key, typ))
					}
				}
			}
		}
	}
	n := 0
	var cursor uint64
	for {
		keys, next, err := cl.Scan(ctx, cursor, "*", 1000).Result()
		if err != nil {
			t.Fatalf("SCAN: %v", err)
		}
		types := make([]*redis.StatusCmd, len(keys))
		pipe := cl.Pipeline()
		for i, k := range keys {
			types[i] = pipe.Type(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("TYPE: %v", err)
		}
		vals := make([]redis.Cmder, len(keys))
		pipe = cl.Pipeline()
		for i, k := range keys {
			switch types[i].Val() {
			case "string":
				vals[i] = pipe.Get(ctx, k)
			case "hash":
				vals[i] = pipe.HGetAll(ctx, k)
			case "set":
				vals[i] = pipe.SMembers(ctx, k)
			case "zset":
				vals[i] = pipe.ZRange(ctx, k, 0, -1)
			case "list":
				vals[i] = pipe.LRange(ctx, k, 0, -1)
			case "stream":
				vals[i] = pipe.XRange(ctx, k, "-", "+")
			case "none": // expired between SCAN and TYPE
			default:
				t.Fatalf("key %s of type %s: the scan cannot read it", k, types[i].Val())
			}
		}
		if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
			t.Fatalf("reading values: %v", err)
		}
		for i, k := range keys {
			n++
			var buf bytes.Buffer
			buf.WriteString(k)
			buf.WriteByte(0)
			switch v := vals[i].(type) {
			case *redis.StringCmd:
				buf.WriteString(v.Val())
			case *redis.MapStringStringCmd:
				for f, x := range v.Val() {
					buf.WriteString(f + "\x00" + x + "\x00")
				}
			case *redis.StringSliceCmd:
				for _, x := range v.Val() {
					buf.WriteString(x + "\x00")
				}
			case *redis.XMessageSliceCmd:
				for _, m := range v.Val() {
					for f, x := range m.Values {
						fmt.Fprintf(&buf, "%s\x00%v\x00", f, x)
					}
				}
			}
			look(k, types[i].Val(), buf.Bytes())
		}
		cursor = next
		if cursor == 0 {
			break
		}
	}
	if n == 0 {
		t.Fatalf("Redis holds no key: nothing was scanned")
	}
	return n, found
}

// printableRuns returns the runs of printable ASCII in b at least min bytes long.
func printableRuns(b []byte, min int) [][]byte {
	var runs [][]byte
	start := -1
	for i := 0; i <= len(b); i++ {
		if i < len(b) && b[i] >= 0x20 && b[i] < 0x7f {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 && i-start >= min {
			runs = append(runs, b[start:i])
		}
		start = -1
	}
	return runs
}

// forEach calls f(0..n-1) on workers goroutines.
func forEach(n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// isoClient is shared by the workers: enough idle connections that 32 of them do not
// churn through ephemeral ports.
var isoClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}

// doH makes one GHL request from a worker goroutine (call needs the test's goroutine).
func doH(method, url, body, auth string) (int, []byte, http.Header, error) {
	var rd *strings.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	var req *http.Request
	var err error
	if rd != nil {
		req, err = http.NewRequest(method, url, rd)
	} else {
		req, err = http.NewRequest(method, url, nil)
	}
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", auth)
	req.Header.Set("Version", "2021-07-28")
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := isoClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes(), resp.Header, err
}
