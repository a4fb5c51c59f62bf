// Package demo measures what the sidecar buys: it runs a GHL stand-in and a sidecar on
// loopback ports, drives one realistic workload — many users reading hot leads and
// searching, client retries of creates, bursts of updates to the same leads — first
// straight at the stand-in, then through the sidecar, each time against a fresh stand-in
// with the same seed, and reports what it measured. After the sidecar's run a lead is
// edited "in GHL's UI" and the report says how soon the app saw it, through GHL's webhook. `ghlproxy demo` prints that report.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/sidecar"
)

// Config shapes a demo. Zero values take the defaults named on each field.
type Config struct {
	// Users working at once. Default 50.
	Users int
	// Duration over which operations start, per run. Default 25s.
	Duration time.Duration
	// Rate of operations per second, all users together. Default 12: with the requests
	// an operation makes, about 15 a second, half again what GHL's 100 per 10 s allows.
	Rate float64
	// Contacts seeded: the leads users read and update. Default 50.
	Contacts int
	// Seed of the workload and the stand-in. Default 1.
	Seed uint64
	// RedisURL: the sidecar's store; empty runs it embedded.
	RedisURL string
	// StandIn: the stand-in's limits and latency. Default fakeghl.DefaultConfig() (GHL's
	// limits, ~150 ms median latency).
	StandIn *fakeghl.Config
	// Retries: how often a client resends a request answered 429, after 1 s, 2 s, 4 s, …:
	// a common client back-off (GHL's Node SDK resends 429s only with rateLimitRetry on,
	// and waits the interval GHL names; its Python and PHP SDKs do not). Default 3.
	Retries int
	// Progress receives a progress bar; nil shows none.
	Progress io.Writer
	// Log receives the sidecar's logs; nil discards them.
	Log *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Users <= 0 {
		c.Users = 50
	}
	if c.Duration <= 0 {
		c.Duration = 25 * time.Second
	}
	if c.Rate <= 0 {
		c.Rate = 12
	}
	if c.Contacts <= 1 {
		c.Contacts = 50
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.StandIn == nil {
		d := fakeghl.DefaultConfig()
		c.StandIn = &d
	}
	if c.Retries <= 0 {
		c.Retries = 3
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Result is what one run measured.
type Result struct {
	Name string
	// Operations planned and requests made by clients (first attempts, retries of 429s
	// not included).
	Ops, Requests int
	// Failed requests: still 429 after every retry, 5xx, or no answer.
	Failed int
	// P50, P95 and P99 of the requests' latencies as the client saw them, waits and
	// retries included.
	P50, P95, P99 time.Duration
	// ClientTooMany is every 429 a client received, retried or not.
	ClientTooMany int
	// UpstreamCalls and UpstreamTooMany are what the stand-in received and refused.
	UpstreamCalls, UpstreamTooMany int64
	// Duplicates is contacts created twice by a retried create; RetryErrors is retried
	// creates answered 400 "duplicated contacts" (the first one went through).
	Duplicates, RetryErrors int
	// HitRatio and Saved come from the sidecar's /_ghlproxy/stats (sidecar run only).
	HitRatio float64
	Saved    map[string]float64
	Wall     time.Duration
	// Edit is a change made in GHL's UI after the workload, reaching the app through
	// GHL's webhook (sidecar run only).
	Edit *Edit
}

// Report is the comparison.
type Report struct {
	Config          Config
	Direct, Sidecar Result
}

// Run runs the workload straight at a stand-in, then through a sidecar to another one.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	work := plan(cfg.Seed, cfg.Users, cfg.Contacts, cfg.Rate, cfg.Duration)
	rep := &Report{Config: cfg}
	var err error
	if rep.Direct, err = runOnce(ctx, cfg, work, "direct to GHL", false); err != nil {
		return nil, err
	}
	if rep.Sidecar, err = runOnce(ctx, cfg, work, "through ghlproxy", true); err != nil {
		return nil, err
	}
	return rep, nil
}

// runOnce runs the workload against a fresh stand-in, through a sidecar or not.
func runOnce(ctx context.Context, cfg Config, work [][]op, name string, viaSidecar bool) (Result, error) {
	fake, standIn, stop, err := startStandIn(*cfg.StandIn, cfg.Seed)
	if err != nil {
		return Result{}, err
	}
	defer stop()
	// A location of its own per demo, so a shared Redis holds nothing from an earlier one.
	loc := "demo-" + strconv.FormatUint(rand.Uint64(), 36)
	ids, err := seed(ctx, standIn, loc, cfg.Contacts)
	if err != nil {
		return Result{}, fmt.Errorf("seeding the stand-in: %w", err)
	}
	base := fake.Stats()

	target := standIn
	var side *runningSidecar
	if viaSidecar {
		if side, err = startSidecar(standIn, cfg); err != nil {
			return Result{}, err
		}
		defer side.stop()
		target = side.url
	}

	d := &driver{
		cfg: cfg, base: target, loc: loc, ids: ids,
		token:  fakeghl.Token("Location", loc, "demo-app"),
		client: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Users * 3}},
	}
	total := 0
	for _, ops := range work {
		for _, o := range ops {
			total += o.requests()
		}
	}
	if cfg.Progress != nil {
		d.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(cfg.Progress),
			progressbar.OptionSetDescription(fmt.Sprintf("%-17s", name)),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(cfg.Progress) }),
		)
	}
	start := time.Now()
	d.run(ctx, work)
	if d.bar != nil {
		_ = d.bar.Finish()
	}
	res := d.result(name, time.Since(start))
	res.Ops = 0
	for _, ops := range work {
		res.Ops += len(ops)
	}
	st := fake.Stats()
	res.UpstreamCalls = st.Calls - base.Calls
	res.UpstreamTooMany = st.TooMany - base.TooMany
	// Every create is sent twice; each contact created beyond one per create that went
	// through is a duplicate.
	res.Duplicates = int(st.Creates["contacts"]-base.Creates["contacts"]) - d.creates
	if side != nil {
		if err := side.stats(ctx, &res); err != nil {
			return res, err
		}
		if res.Edit, err = d.outsideEdit(ctx, fake, side.url, ids[0]); err != nil {
			return res, fmt.Errorf("outside edit: %w", err)
		}
	}
	return res, ctx.Err()
}

// driver plays the users of one run.
type driver struct {
	cfg    Config
	base   string
	loc    string
	ids    []string
	token  string
	client *http.Client
	bar    *progressbar.ProgressBar

	mu          sync.Mutex
	lat         []time.Duration
	failed      int
	tooMany     int
	retryErrors int
	creates     int // creates that went through, on either send
	requests    int
}

func (d *driver) run(ctx context.Context, work [][]op) {
	start := time.Now()
	var wg sync.WaitGroup
	for u, ops := range work {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(d.cfg.Seed, uint64(u)+1<<32))
			for _, o := range ops {
				t := time.NewTimer(time.Until(start.Add(o.at)))
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				d.do(ctx, o, rng)
			}
		})
	}
	wg.Wait()
}

func (d *driver) do(ctx context.Context, o op, rng *rand.Rand) {
	switch o.kind {
	case read:
		d.send(ctx, "GET", "/contacts/"+d.ids[o.contact], "")
	case search:
		d.send(ctx, "POST", "/contacts/search", searchBody(o.variant, d.loc))
	case burst:
		fields := []string{`{"source":"web form"}`, `{"companyName":"Acme %d"}`, `{"city":"Lyon %d"}`}
		var wg sync.WaitGroup
		for i, f := range fields {
			body := f
			if i > 0 {
				body = fmt.Sprintf(f, rng.IntN(1000))
			}
			// Saves 10 ms apart, as an automation fires them.
			gap := time.Duration(i*10) * time.Millisecond
			wg.Go(func() {
				time.Sleep(gap)
				d.send(ctx, "PUT", "/contacts/"+d.ids[o.contact], body)
			})
		}
		wg.Wait()
	case create:
		body := fmt.Sprintf(`{"locationId":%q,"firstName":"New","lastName":"Lead %d","email":"new%d@demo.example","source":"lead form"}`, d.loc, o.variant, o.variant)
		if o.noEmail {
			body = fmt.Sprintf(`{"locationId":%q,"firstName":"New","lastName":"Lead %d","source":"lead form"}`, d.loc, o.variant)
		}
		// The answer to the first send is lost to a client timeout; the client sends the
		// same create again.
		first := d.send(ctx, "POST", "/contacts/", body)
		second := d.send(ctx, "POST", "/contacts/", body)
		d.mu.Lock()
		if ok(first) || ok(second) {
			d.creates++ // the lead exists: once, if all went well
		}
		if ok(first) && second == http.StatusBadRequest {
			d.retryErrors++
		}
		d.mu.Unlock()
	}
}

// send makes one request as a client with a common back-off does: resent on 429 after 1 s,
// 2 s, 4 s …
func (d *driver) send(ctx context.Context, method, path, body string) int {
	start := time.Now()
	status, tooMany := 0, 0
	for attempt := 0; ; attempt++ {
		status = d.once(ctx, method, path, body)
		if status != http.StatusTooManyRequests {
			break
		}
		tooMany++
		if attempt == d.cfg.Retries {
			break
		}
		t := time.NewTimer(time.Second << attempt)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		if ctx.Err() != nil {
			break
		}
	}
	elapsed := time.Since(start)
	d.mu.Lock()
	d.requests++
	d.lat = append(d.lat, elapsed)
	d.tooMany += tooMany
	if status == 0 || status == http.StatusTooManyRequests || status >= 500 {
		d.failed++
	}
	d.mu.Unlock()
	if d.bar != nil {
		_ = d.bar.Add(1)
	}
	return status
}

func ok(status int) bool { return status >= 200 && status <= 299 }

func (d *driver) once(ctx context.Context, method, path, body string) int {
	var rd io.Reader
	if body != "" {
		rd = bytes.NewReader([]byte(body))
	}
	req, err := http.NewRequestWithContext(ctx, method, d.base+path, rd)
	if err != nil {
		return 0
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	req.Header.Set("Version", "2021-07-28")
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func (d *driver) result(name string, wall time.Duration) Result {
	d.mu.Lock()
	defer d.mu.Unlock()
	slices.Sort(d.lat)
	return Result{
		Name: name, Requests: d.requests, Failed: d.failed, ClientTooMany: d.tooMany,
		RetryErrors: d.retryErrors, HitRatio: -1, Wall: wall,
		P50: quantile(d.lat, 0.50), P95: quantile(d.lat, 0.95), P99: quantile(d.lat, 0.99),
	}
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// startStandIn serves a stand-in on a loopback port. Its next-page links point at itself,
// as GHL's point at GHL.
func startStandIn(cfg fakeghl.Config, seed uint64) (*fakeghl.Server, string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, fmt.Errorf("stand-in: %w", err)
	}
	url := "http://" + ln.Addr().String()
	cfg.Seed, cfg.BaseURL = seed, url
	fake := fakeghl.New(cfg)
	srv := &http.Server{Handler: fake, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return fake, url, func() { fake.Close(); _ = srv.Close() }, nil
}

// seed creates the leads, with a token of another app (so another rate-limit scope) of the
// same location: the workload starts with its whole budget.
func seed(ctx context.Context, standIn, loc string, n int) ([]string, error) {
	token := fakeghl.Token("Location", loc, "demo-seed")
	ids := make([]string, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 10)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			tag := []string{"hot", "warm", "cold"}[i%3]
			body := fmt.Sprintf(`{"locationId":%q,"firstName":"Lead%d","lastName":"Demo","email":"lead%d@demo.example","tags":[%q]}`, loc, i, i, tag)
			req, err := http.NewRequestWithContext(ctx, "POST", standIn+"/contacts/", bytes.NewReader([]byte(body)))
			if err != nil {
				errs[i] = err
				return
			}
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Version", "2021-07-28")
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			var c struct{ Contact struct{ ID string } }
			if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != http.StatusCreated {
				errs[i] = fmt.Errorf("create contact: status %d: %v", resp.StatusCode, err)
				return
			}
			ids[i] = c.Contact.ID
		})
	}
	wg.Wait()
	return ids, errors.Join(errs...)
}

// runningSidecar is a sidecar built by package sidecar exactly as `ghlproxy serve` builds
// one, serving on loopback ports.
type runningSidecar struct {
	url  string
	stop func()
}

func startSidecar(upstream string, cfg Config) (*runningSidecar, error) {
	// The sidecar trusts the stand-in's webhook key, as it trusts GHL's by default.
	env := []string{"GHLPROXY_UPSTREAM=" + upstream, "GHLPROXY_LOG_LEVEL=error",
		"GHLPROXY_WEBHOOKS_PUBLIC_KEY=" + fakeghl.WebhookPublicKeyBase64()}
	if cfg.RedisURL != "" {
		env = append(env, "GHLPROXY_REDIS_URL="+cfg.RedisURL)
	}
	c, err := config.Load(nil, env)
	if err != nil {
		return nil, err
	}
	s, err := sidecar.New(c, cfg.Log)
	if err != nil {
		return nil, err
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Close()
		return nil, err
	}
	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pl.Close()
		s.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		_ = s.Serve(ctx, pl, ol)
	}()
	return &runningSidecar{url: "http://" + pl.Addr().String(), stop: func() { cancel(); <-exited }}, nil
}

// stats reads the cache hit ratio and the calls saved from GET /_ghlproxy/stats.
func (s *runningSidecar) stats(ctx context.Context, res *Result) error {
	req, err := http.NewRequestWithContext(ctx, "GET", s.url+"/_ghlproxy/stats", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("sidecar stats: %w", err)
	}
	defer resp.Body.Close()
	var st struct {
		HitRatio float64            `json:"cache_hit_ratio"`
		Saved    map[string]float64 `json:"calls_saved"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("sidecar stats: %w", err)
	}
	res.HitRatio, res.Saved = st.HitRatio, st.Saved
	return nil
}
