// Command mix seeds the GHL stand-in for the benchmarks and drives the mixed workload.
//
//	mix seed --upstream URL --out DIR     create contacts and tokens; write DIR/hits.txt
//	                                      (the wrk read mix) and DIR/mix.json (the mixed one)
//	mix run --target URL[,URL...] --seed DIR/mix.json --clients 250 --duration 20s [--stats URL]
//	                                      closed-loop clients with think time; prints JSON
//	mix report --raw bench/out/raw --out bench/out
//	                                      results.md and gnuplot scripts from run.sh's raw files
//	mix floor --mode proxy|cache --listen ADDR --upstream URL
//	                                      the Go floor peers: a plain ReverseProxy, a bare cache
//
// The mixed workload is what one app's users do to a CRM: each client holds one
// location's token and loops read / think, where a request is a read of a hot contact
// (Zipf over the location's contacts), a contact search (a few distinct queries per
// location, JSON keys in random order), or an update of a contact. Every answer is
// checked: a body carrying another caller's marker is a leak, and a read that returns a
// contact older than a write acknowledged before the read began is a stale read.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: mix seed|run|report|floor [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "seed":
		err = seed(os.Args[2:])
	case "run":
		err = run(os.Args[2:])
	case "report":
		err = report(os.Args[2:])
	case "floor":
		err = floor(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q (seed, run, report or floor)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mix:", err)
		os.Exit(1)
	}
}

// Seed is what seed writes and run reads.
type Seed struct {
	Version   string     `json:"version"`
	Locations []Location `json:"locations"`
}

// Location is one sub-account: its contacts and the tokens bound to it. Tokens of one
// location share GHL's per-location budget.
type Location struct {
	ID       string   `json:"id"`
	Tokens   []string `json:"tokens"`
	Contacts []string `json:"contacts"`
}

const version = "2021-07-28"

func seed(args []string) error {
	fs := flag.NewFlagSet("seed", flag.ExitOnError)
	upstream := fs.String("upstream", "http://127.0.0.1:8081", "the stand-in")
	contacts := fs.Int("contacts", 200, "contacts in all, spread evenly over the locations")
	locations := fs.Int("locations", 2, "locations (each is one rate-limit scope)")
	perLoc := fs.Int("tokens-per-location", 2, "location tokens per location for the mixed workload")
	readTokens := fs.Int("read-tokens", 4, "opaque (private integration) tokens for the read mix; they see every location")
	out := fs.String("out", ".", "directory for hits.txt and mix.json")
	_ = fs.Parse(args)

	s := Seed{Version: version}
	for l := range *locations {
		loc := Location{ID: fmt.Sprintf("benchLoc%02d", l)}
		for t := range *perLoc {
			// Same claims, different signature: distinct credentials in one scope.
			tok := fakeghl.Token("Location", loc.ID, "benchApp")
			tok = tok[:strings.LastIndexByte(tok, '.')+1] + fmt.Sprintf("sig%d", t)
			loc.Tokens = append(loc.Tokens, "Bearer "+tok)
		}
		s.Locations = append(s.Locations, loc)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	// The stand-in enforces GHL's per-scope limit, so seeding spreads its creates over
	// throwaway tokens, 50 each.
	for i := range *contacts {
		l := &s.Locations[i%len(s.Locations)]
		auth := fmt.Sprintf("Bearer pit-bench-seed-%d", i/50)
		body := fmt.Sprintf(`{"locationId":%q,"firstName":"C%d","email":"c%d@x.io"}`, l.ID, i, i)
		b, status, err := do(client, "POST", *upstream+"/contacts/", auth, body)
		if err != nil || status != http.StatusCreated {
			return fmt.Errorf("create contact %d: status %d, %v: %s", i, status, err, b)
		}
		var r struct {
			Contact struct{ ID string } `json:"contact"`
		}
		if err := json.Unmarshal(b, &r); err != nil || r.Contact.ID == "" {
			return fmt.Errorf("create contact %d: no id in %s", i, b)
		}
		l.Contacts = append(l.Contacts, r.Contact.ID)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	// hits.txt: the read mix for wrk, every contact × every read token, one
	// "path<TAB>authorization" per line, shuffled so neighbours differ in both.
	var lines []string
	for t := range *readTokens {
		auth := fmt.Sprintf("Bearer pit-bench-read-%d-0123456789abcdef", t)
		for _, l := range s.Locations {
			for _, c := range l.Contacts {
				lines = append(lines, "/contacts/"+c+"\t"+auth)
			}
		}
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
	if err := os.WriteFile(filepath.Join(*out, "hits.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(s, "", " ")
	return os.WriteFile(filepath.Join(*out, "mix.json"), b, 0o644)
}

func do(c *http.Client, method, url, auth, body string) ([]byte, int, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Authorization", auth)
	req.Header.Set("Version", version)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

// Result is what run prints.
type Result struct {
	Clients  int     `json:"clients"`
	Seconds  float64 `json:"seconds"`
	Requests int64   `json:"requests"`
	RPS      float64 `json:"rps"`
	// Latencies in µs: every answer, and by kind.
	All    Dist `json:"all"`
	Hits   Dist `json:"hits"` // answers with Cache-Status "hit" (the sidecar's only)
	Reads  Dist `json:"reads"`
	Search Dist `json:"search"`
	Writes Dist `json:"writes"`
	// Creates are POST /contacts/, each timed from its first attempt to its last answer:
	// a client retries one that timed out (--attempt-timeout) or got a 429 or 5xx, with the
	// same body, as an SDK does. CreateDup counts creates whose retry was answered with
	// GHL's duplicate-contact 400: an earlier attempt was applied, and the app was told it
	// failed. A create whose every attempt timed out cannot be told either way.
	Creates   Dist  `json:"creates"`
	CreateDup int64 `json:"createDup"`
	// Status counts answers by status; 0 is a transport error.
	Status map[int]int64 `json:"status"`
	// Leaks: bodies carrying another credential's caller marker. Stale: reads older than
	// a write acknowledged before they began.
	Leaks int64 `json:"leaks"`
	Stale int64 `json:"stale"`
	// How long after the newer update's acknowledgement the stalest of the stale reads
	// began, and how many began more than 1 s after it (replicas promise to drop an entry
	// another replica invalidated within 1 s).
	StaleMaxLagMs float64 `json:"staleMaxLagMs"`
	StaleOver1s   int64   `json:"staleOver1s"`
	// Upstream is the stand-in's count over the measured window, when --stats is given.
	UpstreamCalls int64    `json:"upstreamCalls"`
	Upstream429   int64    `json:"upstream429"`
	UpstreamShare float64  `json:"upstreamShare"`
	Errors        []string `json:"errors,omitempty"`
	// The workload, for the report's caption.
	Workload Workload `json:"workload"`
}

// Workload describes what run did.
type Workload struct {
	Locations, TokensPerLocation, ContactsPerLocation, Queries int
	Think, Warmup, AttemptTimeout                              string
	Search, Write, Create                                      float64
}

// Dist is a latency distribution summary in µs.
type Dist struct {
	N          int64              `json:"n"`
	P50        float64            `json:"p50"`
	P90        float64            `json:"p90"`
	P99        float64            `json:"p99"`
	P999       float64            `json:"p999"`
	Max        float64            `json:"max"`
	Percentile map[string]float64 `json:"percentile,omitempty"`
}

type recorder struct {
	mu   sync.Mutex
	lat  map[string][]float64
	stat map[int]int64
	errs []string
}

func (r *recorder) add(kind string, us float64, status int, hit bool, errMsg string) {
	r.mu.Lock()
	r.lat["all"] = append(r.lat["all"], us)
	r.lat[kind] = append(r.lat[kind], us)
	if hit {
		r.lat["hits"] = append(r.lat["hits"], us)
	}
	r.stat[status]++
	if errMsg != "" && len(r.errs) < 5 {
		r.errs = append(r.errs, errMsg)
	}
	r.mu.Unlock()
}

func dist(v []float64, full bool) Dist {
	if len(v) == 0 {
		return Dist{}
	}
	slices.Sort(v)
	q := func(p float64) float64 { return v[min(len(v)-1, int(math.Ceil(p*float64(len(v))))-1+boolInt(p == 0))] }
	d := Dist{N: int64(len(v)), P50: q(0.5), P90: q(0.9), P99: q(0.99), P999: q(0.999), Max: v[len(v)-1]}
	if full {
		d.Percentile = map[string]float64{}
		for _, p := range []float64{0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999} {
			d.Percentile[strconv.FormatFloat(p*100, 'f', -1, 64)] = q(p)
		}
	}
	return d
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// written tracks, per contact, the update every later read must see: one acknowledged by
// a 2xx answer while no other update of that contact was in flight, so the order in which
// upstream applied concurrent updates cannot make a fresh read look stale.
type written struct {
	mu       sync.Mutex
	ack      map[string]int64
	inflight map[string]int
	acks     map[string][]ackAt // the last acknowledgements per contact, oldest first
}

type ackAt struct {
	seq int64
	at  time.Time
}

// lag is how long before start the first acknowledged update newer than seen was
// acknowledged: how stale a read that returned seen is. Past the kept history it is a
// lower bound.
func (w *written) lag(id string, seen int64, start time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.acks[id] {
		if a.seq > seen {
			return start.Sub(a.at)
		}
	}
	return 0
}

func (w *written) get(id string) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ack[id]
}

func (w *written) send(id string) {
	w.mu.Lock()
	w.inflight[id]++
	w.mu.Unlock()
}

func (w *written) done(id string, seq int64, ok bool) {
	w.mu.Lock()
	w.inflight[id]--
	if ok && w.inflight[id] == 0 && seq > w.ack[id] {
		w.ack[id] = seq
		h := append(w.acks[id], ackAt{seq, time.Now()})
		w.acks[id] = h[max(0, len(h)-32):]
	}
	w.mu.Unlock()
}

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	target := fs.String("target", "http://127.0.0.1:8080",
		"where to send the workload; a comma-separated list spreads each request over replicas at random, so a read often follows a write made through another replica")
	seedFile := fs.String("seed", "mix.json", "mix.json written by seed")
	clients := fs.Int("clients", 250, "concurrent clients, each on its own connection")
	duration := fs.Duration("duration", 20*time.Second, "measured time")
	warmup := fs.Duration("warmup", 5*time.Second, "unmeasured time before it")
	think := fs.Duration("think", 2*time.Second, "mean think time between a client's requests (exponential)")
	searchShare := fs.Float64("search", 0.08, "share of requests that are contact searches")
	writeShare := fs.Float64("write", 0.02, "share of requests that are contact updates")
	createShare := fs.Float64("create", 0, "share of requests that are contact creates, retried by the client on a timeout, 429 or 5xx")
	attemptTimeout := fs.Duration("attempt-timeout", 5*time.Second, "a create's per-attempt timeout, after which the client retries it")
	queries := fs.Int("queries", 2, "distinct searches per location")
	stats := fs.String("stats", "", "the stand-in's base URL, for upstream calls and 429s over the measured window")
	timeout := fs.Duration("timeout", 60*time.Second, "per-request timeout")
	staleLog := fs.String("stale-log", "", "a file for one line per stale read (when, target, contact, the update seen and the one expected, lag, Cache-Status) and per update (when, target, contact, sequence, status, duration)")
	_ = fs.Parse(args)

	raw, err := os.ReadFile(*seedFile)
	if err != nil {
		return err
	}
	var s Seed
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("%s: %w", *seedFile, err)
	}
	targets := strings.Split(*target, ",")
	var staleOut io.Writer = io.Discard
	if *staleLog != "" {
		f, err := os.Create(*staleLog)
		if err != nil {
			return err
		}
		defer f.Close()
		staleOut = f
	}
	markers := map[string]string{}
	for _, l := range s.Locations {
		for _, t := range l.Tokens {
			markers[t] = fakeghl.CallerOf(t)
		}
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        *clients * 2,
		MaxIdleConnsPerHost: *clients * 2,
		IdleConnTimeout:     time.Minute,
	}
	client := &http.Client{Transport: tr, Timeout: *timeout}

	var (
		measuring atomic.Bool
		rec       = &recorder{lat: map[string][]float64{}, stat: map[int]int64{}}
		leaks     atomic.Int64
		stale     atomic.Int64
		dups      atomic.Int64
		seq       atomic.Int64
		acked     = &written{ack: map[string]int64{}, inflight: map[string]int{}, acks: map[string][]ackAt{}}
		lagMu     sync.Mutex
		staleLags []time.Duration
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for c := range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			loc := s.Locations[c%len(s.Locations)]
			auth := loc.Tokens[(c/len(s.Locations))%len(loc.Tokens)]
			zipf := rand.NewZipf(rng, 1.1, 1, uint64(len(loc.Contacts)-1))
			// Spread the first requests over the first think time.
			sleep(ctx, time.Duration(rng.Float64()*float64(*think)))
			for ctx.Err() == nil {
				p := rng.Float64()
				var kind, method, path, body string
				var contact string
				var wseq int64
				if p < *createShare {
					us, status, dup, msg := create(ctx, client, targets[rng.IntN(len(targets))], auth, s.Version,
						fmt.Sprintf(`{"locationId":%q,"firstName":"New","email":"new-%d-%d@x.io"}`, loc.ID, c, seq.Add(1)), *attemptTimeout)
					if ctx.Err() != nil {
						return
					}
					if measuring.Load() {
						rec.add("creates", us, status, false, msg)
						if dup {
							dups.Add(1)
						}
					}
					sleep(ctx, time.Duration(rng.ExpFloat64()*float64(*think)))
					continue
				}
				p -= *createShare
				switch {
				case p < *writeShare:
					kind, method = "writes", "PUT"
					contact = loc.Contacts[zipf.Uint64()]
					wseq = seq.Add(1)
					path = "/contacts/" + contact
					body = fmt.Sprintf(`{"companyName":"v%d"}`, wseq)
				case p < *writeShare+*searchShare:
					kind, method, path = "search", "POST", "/contacts/search"
					q := rng.IntN(*queries)
					body = searchBody(rng, loc.ID, q)
				default:
					kind, method = "reads", "GET"
					contact = loc.Contacts[zipf.Uint64()]
					path = "/contacts/" + contact
				}
				before := int64(0)
				if kind == "reads" {
					before = acked.get(contact)
				}
				to := targets[rng.IntN(len(targets))]
				req, _ := http.NewRequestWithContext(ctx, method, to+path, strings.NewReader(body))
				if body == "" {
					req.Body, req.ContentLength = nil, 0
				} else {
					req.Header.Set("Content-Type", "application/json")
				}
				req.Header.Set("Authorization", auth)
				req.Header.Set("Version", s.Version)
				if kind == "writes" {
					acked.send(contact)
				}
				start := time.Now()
				resp, err := client.Do(req)
				var b []byte
				status, hit, msg, cacheStatus := 0, false, "", ""
				if err == nil {
					b, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
					cacheStatus = resp.Header.Get("Cache-Status")
					hit = strings.HasPrefix(strings.TrimPrefix(cacheStatus, "ghlproxy; "), "hit")
				}
				us := float64(time.Since(start).Microseconds())
				if err != nil {
					if ctx.Err() != nil && errors.Is(err, context.Canceled) {
						return
					}
					msg = err.Error()
				}
				if measuring.Load() {
					rec.add(kind, us, status, hit, msg)
					if m := callerMarker(b); m != "" && m != markers[auth] {
						leaks.Add(1)
					}
					if seen := companySeq(b); kind == "reads" && status == 200 && before > 0 && seen < before {
						stale.Add(1)
						l := acked.lag(contact, seen, start)
						lagMu.Lock()
						staleLags = append(staleLags, l)
						fmt.Fprintf(staleOut, "%s\t%s\t%s\tseen=%d\twant=%d\tlag=%s\t%s\n", start.UTC().Format("15:04:05.000"),
							to, contact, seen, before, l.Round(time.Millisecond), cacheStatus)
						lagMu.Unlock()
					}
				}
				if kind == "writes" {
					acked.done(contact, wseq, status >= 200 && status < 300)
					lagMu.Lock()
					fmt.Fprintf(staleOut, "%s\t%s\t%s\twrite=%d\tstatus=%d\ttook=%s\n", start.UTC().Format("15:04:05.000"),
						to, contact, wseq, status, time.Since(start).Round(time.Millisecond))
					lagMu.Unlock()
				}
				sleep(ctx, time.Duration(rng.ExpFloat64()*float64(*think)))
			}
		}()
	}
	sleep(ctx, *warmup)
	var before fakeghl.Stats
	if *stats != "" {
		if before, err = fetchStats(*stats); err != nil {
			cancel()
			return err
		}
	}
	measuring.Store(true)
	start := time.Now()
	time.Sleep(*duration)
	measuring.Store(false)
	elapsed := time.Since(start).Seconds()
	var after fakeghl.Stats
	if *stats != "" {
		after, err = fetchStats(*stats)
	}
	cancel()
	wg.Wait()
	if err != nil {
		return err
	}

	r := Result{Clients: *clients, Seconds: elapsed, Status: rec.stat, Leaks: leaks.Load(), Stale: stale.Load(), Errors: rec.errs,
		CreateDup: dups.Load()}
	for _, l := range staleLags {
		r.StaleMaxLagMs = max(r.StaleMaxLagMs, float64(l.Microseconds())/1000)
		if l > time.Second {
			r.StaleOver1s++
		}
	}
	r.Workload = Workload{Locations: len(s.Locations), TokensPerLocation: len(s.Locations[0].Tokens),
		ContactsPerLocation: len(s.Locations[0].Contacts), Queries: *queries,
		Think: think.String(), Warmup: warmup.String(), Search: *searchShare, Write: *writeShare, Create: *createShare,
		AttemptTimeout: attemptTimeout.String()}
	r.All = dist(rec.lat["all"], true)
	r.Hits = dist(rec.lat["hits"], true)
	r.Reads = dist(rec.lat["reads"], false)
	r.Search = dist(rec.lat["search"], false)
	r.Writes = dist(rec.lat["writes"], false)
	r.Creates = dist(rec.lat["creates"], false)
	r.Requests = r.All.N
	r.RPS = float64(r.Requests) / elapsed
	if *stats != "" {
		r.UpstreamCalls = after.Calls - before.Calls
		r.Upstream429 = after.TooMany - before.TooMany
		if r.Requests > 0 {
			r.UpstreamShare = float64(r.UpstreamCalls) / float64(r.Requests)
		}
	}
	out, _ := json.MarshalIndent(r, "", " ")
	fmt.Println(string(out))
	return nil
}

// create makes one contact as an app with an SDK does: an attempt that times out, or is
// answered 429 or 5xx, is sent again with the same body, three attempts at most, half a
// second apart. It returns the time from the first attempt to the last answer, the last
// status, whether a retry met GHL's duplicate-contact 400 (an earlier attempt was applied),
// and a transport error's text.
func create(ctx context.Context, client *http.Client, target, auth, version, body string, attemptTimeout time.Duration) (us float64, status int, dup bool, msg string) {
	start := time.Now()
	for attempt := 1; attempt <= 3; attempt++ {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		req, _ := http.NewRequestWithContext(actx, "POST", target+"/contacts/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", auth)
		req.Header.Set("Version", version)
		resp, err := client.Do(req)
		status, msg = 0, ""
		var b []byte
		if err == nil {
			b, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			status = resp.StatusCode
		} else {
			msg = err.Error()
		}
		cancel()
		if ctx.Err() != nil {
			break
		}
		if attempt > 1 && status == http.StatusBadRequest && bytes.Contains(b, []byte("duplicated")) {
			dup = true
		}
		if status != 0 && status != http.StatusTooManyRequests && status < 500 {
			break
		}
		if attempt < 3 {
			sleep(ctx, 500*time.Millisecond)
		}
	}
	return float64(time.Since(start).Microseconds()), status, dup, msg
}

// searchBody is query q of a location, its JSON keys in a random order: the same search
// as an app with a different JSON encoder would send it.
func searchBody(rng *rand.Rand, loc string, q int) string {
	parts := []string{
		fmt.Sprintf(`"locationId":%q`, loc),
		fmt.Sprintf(`"query":"c%d"`, q+1),
		`"pageLimit":10`,
	}
	rng.Shuffle(len(parts), func(i, j int) { parts[i], parts[j] = parts[j], parts[i] })
	return "{" + strings.Join(parts, ",") + "}"
}

func callerMarker(b []byte) string {
	const k = `"_caller":"`
	i := bytes.Index(b, []byte(k))
	if i < 0 {
		return ""
	}
	b = b[i+len(k):]
	if j := bytes.IndexByte(b, '"'); j >= 0 {
		return string(b[:j])
	}
	return ""
}

// companySeq is the update sequence in a contact's companyName ("v123"); 0 when unset.
func companySeq(b []byte) int64 {
	const k = `"companyName":"v`
	i := bytes.Index(b, []byte(k))
	if i < 0 {
		return 0
	}
	b = b[i+len(k):]
	j := bytes.IndexByte(b, '"')
	if j < 0 {
		return 0
	}
	n, _ := strconv.ParseInt(string(b[:j]), 10, 64)
	return n
}

func fetchStats(base string) (fakeghl.Stats, error) {
	var st fakeghl.Stats
	resp, err := http.Get(base + "/_fake/stats")
	if err != nil {
		return st, fmt.Errorf("stand-in stats: %w", err)
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
