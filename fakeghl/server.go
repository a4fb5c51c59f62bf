package fakeghl

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/routes"
)

// Server is the GHL stand-in, an http.Handler. Every method is safe for concurrent use.
type Server struct {
	cfg      Config
	table    *routes.Table
	entries  map[*routes.Route]*entry
	interval []string // X-RateLimit-Interval-Milliseconds, shared by every answer
	daily    []string // X-RateLimit-Limit-Daily

	seq     atomic.Uint64 // arrival number of each request, for deterministic draws
	state   atomic.Pointer[state]
	faults  atomic.Pointer[Faults]
	faultMu sync.Mutex // serialises fault writers; readers load the pointer

	hooks hooks // webhook deliveries

	done      chan struct{}
	closeOnce sync.Once
}

// state is everything Reset forgets, swapped whole so that Reset never races a request.
type state struct {
	callers  sync.Map // Authorization header -> *caller
	scopesMu sync.Mutex
	scopes   map[string]*window
	stats    *counters
	store    *store
}

func newState() *state {
	return &state{scopes: make(map[string]*window), stats: newCounters(), store: newStore()}
}

// New returns a stand-in configured by cfg (zero fields take GHL's defaults, see Config).
func New(cfg Config) *Server {
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:      cfg,
		interval: []string{strconv.FormatInt(cfg.Window.Milliseconds(), 10)},
		daily:    []string{strconv.Itoa(cfg.Daily)},
		done:     make(chan struct{}),
	}
	s.hooks.queue = make(chan outgoing, webhookQueue)
	s.SetWebhookURL(cfg.WebhookURL)
	s.table = routes.New()
	s.entries = newEntries(s.table)
	s.state.Store(newState())
	s.faults.Store(&Faults{Latency: Duration(cfg.Latency)})
	s.addGenerated()
	s.addStateful()
	return s
}

// Close ends the latency waits of requests in flight (they are answered at once) so that
// an httptest server closes quickly, and stops the webhook deliveries. The Server keeps
// answering afterwards, without latency.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.done) })
}

// Reset forgets every entity, counter, rate-limit window and fault, as if the stand-in had
// just started with its Config; the webhook receiver URL stays.
func (s *Server) Reset() {
	s.state.Store(newState())
	s.faultMu.Lock()
	s.faults.Store(&Faults{Latency: Duration(s.cfg.Latency)})
	s.faultMu.Unlock()
}

// Stats returns what the stand-in saw since it started or was last Reset.
func (s *Server) Stats() Stats {
	st := s.state.Load()
	out := st.stats.snapshot()
	st.scopesMu.Lock()
	for scope, w := range st.scopes {
		out.MaxInWindow[scope] = w.max()
	}
	st.scopesMu.Unlock()
	return out
}

// Faults returns the faults in force.
func (s *Server) Faults() Faults { return *s.faults.Load() }

// SetFaults replaces the faults in force (Latency included).
func (s *Server) SetFaults(f Faults) error {
	if err := f.validate(); err != nil {
		return err
	}
	s.faultMu.Lock()
	s.faults.Store(&f)
	s.faultMu.Unlock()
	return nil
}

func (s *Server) changeFaults(change func(*Faults)) {
	s.faultMu.Lock()
	f := *s.faults.Load()
	change(&f)
	s.faults.Store(&f)
	s.faultMu.Unlock()
}

// SetErrorRate makes a share (0..1) of admitted requests fail with status (0: 500).
func (s *Server) SetErrorRate(rate float64, status int) {
	s.changeFaults(func(f *Faults) { f.ErrorRate, f.ErrorStatus = rate, status })
}

// SetResetRate makes a share (0..1) of admitted requests end in a connection reset.
func (s *Server) SetResetRate(rate float64) {
	s.changeFaults(func(f *Faults) { f.ResetRate = rate })
}

// SetExtraDelay slows every answer by d.
func (s *Server) SetExtraDelay(d time.Duration) {
	s.changeFaults(func(f *Faults) { f.ExtraDelay = Duration(d) })
}

// SetLatency changes the median latency (0: none).
func (s *Server) SetLatency(median time.Duration) {
	s.changeFaults(func(f *Faults) { f.Latency = Duration(median) })
}

// Outage fails every request the mode way for d from now (by Config.Now); d = 0 ends an
// outage.
func (s *Server) Outage(d time.Duration, mode OutageMode) {
	now := s.cfg.Now()
	s.changeFaults(func(f *Faults) { f.OutageUntil, f.OutageMode = now.Add(d), mode })
}

// request is one request on its way through a handler.
type request struct {
	r      *http.Request
	st     *state
	c      *caller // nil on /oauth/ without Authorization
	params routes.Params
	n      uint64
	now    time.Time
	base   string
	seed   uint64
	srv    *Server
}

type handler func(q *request) reply

// reply is a handler's answer; body is a JSON object the caller marker is added to.
type reply struct {
	status int
	body   []byte
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/_fake/") {
		s.control(w, r)
		return
	}
	st := s.state.Load()
	n := s.seq.Add(1)
	now := s.cfg.Now()
	f := s.faults.Load()
	rt, params := s.table.Match(r.Method, r.URL.EscapedPath())
	e := s.entries[rt] // nil for unknown paths
	label := routes.OtherTemplate
	if e != nil {
		label = e.label
	}

	if now.Before(f.OutageUntil) {
		if f.OutageMode == OutageReset {
			st.stats.call(label, 0)
			resetConn(w)
			return
		}
		st.stats.call(label, http.StatusServiceUnavailable)
		writeError(w, http.StatusServiceUnavailable, "Service Unavailable")
		return
	}

	var c *caller
	if auth := r.Header.Get("Authorization"); auth != "" {
		c = s.caller(st, auth)
	}
	// GHL's gateway exempts the OAuth endpoints from tokens and limits.
	if !strings.HasPrefix(r.URL.Path, "/oauth/") {
		if c == nil || c.forged {
			st.stats.call(label, http.StatusUnauthorized)
			writeError(w, http.StatusUnauthorized, "Invalid JWT")
			return
		}
		v := c.limits.arrive(now, s.cfg.Window, s.cfg.Daily)
		// Canonical keys assigned directly: Header.Set would canonicalise (and allocate)
		// on every request of the hot path.
		h := w.Header()
		h["X-Ratelimit-Max"] = []string{itoa(v.limit)}
		h["X-Ratelimit-Interval-Milliseconds"] = s.interval
		h["X-Ratelimit-Remaining"] = []string{itoa(v.remaining)}
		h["X-Ratelimit-Limit-Daily"] = s.daily
		h["X-Ratelimit-Daily-Remaining"] = []string{itoa(v.dailyRemaining)}
		if !v.ok {
			st.stats.call(label, http.StatusTooManyRequests)
			writeError(w, http.StatusTooManyRequests, "Too Many Requests")
			return
		}
	}

	if f.ResetRate > 0 && draw(s.cfg.Seed, n, streamReset) < f.ResetRate {
		st.stats.call(label, 0)
		resetConn(w)
		return
	}
	if !s.wait(r.Context(), latency(s.cfg.Seed, n, time.Duration(f.Latency))+time.Duration(f.ExtraDelay)) {
		st.stats.call(label, statusClientGone)
		return
	}
	if f.ErrorRate > 0 && draw(s.cfg.Seed, n, streamError) < f.ErrorRate {
		status := f.ErrorStatus
		if status == 0 {
			status = http.StatusInternalServerError
		}
		st.stats.call(label, status)
		writeError(w, status, http.StatusText(status))
		return
	}

	q := &request{r: r, st: st, c: c, params: params, n: n, now: s.cfg.Now(), base: s.cfg.BaseURL, seed: s.cfg.Seed, srv: s}
	var rep reply
	switch {
	case e == nil:
		rep = errorReply(http.StatusNotFound, "Cannot "+r.Method+" "+r.URL.Path)
	case e.handle != nil:
		rep = e.handle(q)
	default:
		rep = e.generated(r.Header.Get("Version"))
	}
	st.stats.call(label, rep.status)
	send(w, rep, c)
}

// statusClientGone is counted when the client gave up during the latency (nginx's 499).
const statusClientGone = 499

func (s *Server) caller(st *state, auth string) *caller {
	if c, ok := st.callers.Load(auth); ok {
		return c.(*caller)
	}
	scope, loc := scopeOf(auth)
	c := &caller{marker: CallerOf(auth), scope: scope, location: loc, forged: s.cfg.VerifyTokens && forgedJWT(auth)}
	c.prefix = []byte(`{"_caller":"` + c.marker + `",`)
	st.scopesMu.Lock()
	wn := st.scopes[scope]
	if wn == nil {
		wn = &window{limit: s.limitOf(scope)}
		st.scopes[scope] = wn
	}
	st.scopesMu.Unlock()
	c.limits = wn
	got, _ := st.callers.LoadOrStore(auth, c)
	return got.(*caller)
}

func (s *Server) limitOf(scope string) int {
	if n, ok := s.cfg.Limits[scope]; ok {
		return n
	}
	if res, _, ok := strings.Cut(scope, " app:"); ok {
		if n, ok := s.cfg.Limits[res]; ok {
			return n
		}
	}
	return s.cfg.Limit
}

// wait sleeps d unless the client leaves (false) or the Server is closed.
func (s *Server) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.done:
		return true
	case <-ctx.Done():
		return false
	}
}

// send writes a reply, adding the caller marker to its JSON object.
func send(w http.ResponseWriter, rep reply, c *caller) {
	h := w.Header()
	if rep.status == http.StatusNoContent || len(rep.body) == 0 {
		w.WriteHeader(rep.status)
		return
	}
	h["Content-Type"] = jsonType
	if c == nil || rep.body[0] != '{' {
		h["Content-Length"] = []string{itoa(len(rep.body))}
		w.WriteHeader(rep.status)
		_, _ = w.Write(rep.body)
		return
	}
	prefix, rest := c.prefix, rep.body[1:]
	if len(rest) > 0 && rest[0] == '}' { // "{}": no comma after the marker
		prefix = prefix[:len(prefix)-1]
	}
	h["Content-Length"] = []string{itoa(len(prefix) + len(rest))}
	w.WriteHeader(rep.status)
	_, _ = w.Write(prefix)
	_, _ = w.Write(rest)
}

// jsonType is the Content-Type of every answer; net/http only reads header values, so one
// slice is shared.
var jsonType = []string{"application/json; charset=utf-8"}

// smallInts are the decimal strings of 0..1023, so header values cost no allocation.
var smallInts = func() (t [1024]string) {
	for i := range t {
		t[i] = strconv.Itoa(i)
	}
	return
}()

func itoa(n int) string {
	if n >= 0 && n < len(smallInts) {
		return smallInts[n]
	}
	return strconv.Itoa(n)
}

// writeError answers in GHL's error shape. Unlike ghlerror.Write it sets no
// X-Ghlproxy-Error: these errors are GHL's, not the sidecar's.
func writeError(w http.ResponseWriter, status int, message string) {
	b := ghlerror.Body(status, message)
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func errorReply(status int, message string) reply {
	return reply{status: status, body: ghlerror.Body(status, message)}
}

// resetConn drops the connection with a TCP RST and no answer.
func resetConn(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// Run serves the stand-in on addr until ctx is done, then shuts down gracefully.
func Run(ctx context.Context, addr string, cfg Config, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return Serve(ctx, ln, cfg, log)
}

// Serve is Run on a listener the caller opened (tests listen on port 0).
func Serve(ctx context.Context, ln net.Listener, cfg Config, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fake := New(cfg)
	defer fake.Close()
	srv := &http.Server{Handler: fake, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	c := fake.cfg
	log.Info("fake GHL listening", "addr", ln.Addr().String(), "limit", c.Limit, "window", c.Window,
		"daily", c.Daily, "latency", c.Latency, "seed", c.Seed)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	fake.Close()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
