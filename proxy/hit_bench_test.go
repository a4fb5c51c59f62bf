package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ghlproxy/ghlproxy/cache"
	"github.com/ghlproxy/ghlproxy/internal/metrics"
)

// BenchmarkCacheHit serves the benchmark read mix (200 contacts × 4 credentials, ~200-byte
// JSON answers) from a warm embedded cache through the real handler, called directly so
// the profile shows the pipeline's own costs, not the network's. The peer is a bare
// handler answering the same bodies from a sync.Map: the floor any Go hit path stands on.
//
//	go test ./proxy -run '^$' -bench CacheHit -cpuprofile cpu.out -benchmem
//	go tool pprof -top -nodecount 40 proxy.test cpu.out
func BenchmarkCacheHit(b *testing.B) {
	const contacts, tokens = 200, 4
	body := func(id string) []byte {
		return fmt.Appendf(nil, `{"contact":{"id":%q,"locationId":"benchLoc00","firstName":"Ada","email":"ada@example.com","dateAdded":"2024-01-01T00:00:00.000Z","tags":[]}}`, id)
	}
	var upstreamCalls atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamCalls.Add(1)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("X-RateLimit-Remaining", "99")
		_, _ = w.Write(body(strings.TrimPrefix(r.URL.Path, "/contacts/")))
	}))
	b.Cleanup(up.Close)

	var reqs []*http.Request
	for t := range tokens {
		for c := range contacts {
			r := httptest.NewRequest("GET", fmt.Sprintf("/contacts/c%019d", c), nil)
			r.Header.Set("Authorization", fmt.Sprintf("Bearer pit-bench-read-%d-0123456789abcdef", t))
			r.Header.Set("Version", "2021-07-28")
			reqs = append(reqs, r)
		}
	}
	// Interleave credentials and contacts, as the wrk mix does.
	for i := range reqs {
		j := (i * 97) % len(reqs)
		reqs[i], reqs[j] = reqs[j], reqs[i]
	}

	b.Run("ghlproxy", func(b *testing.B) {
		m := metrics.New()
		c := embeddedCache(b, cache.Config{}, m)
		_, h := newProxyTB(b, up.URL, func(cfg *Config) { cfg.Metrics = m; cfg.Cache = c })
		for _, r := range reqs { // warm
			w := newSink()
			h.ServeHTTP(w, r)
			if w.status != http.StatusOK {
				b.Fatalf("warming %s: status %d", r.URL.Path, w.status)
			}
		}
		before := upstreamCalls.Load()
		serve(b, h, reqs)
		if n := upstreamCalls.Load() - before; n > 0 {
			b.Fatalf("%d requests went upstream: not all hits", n)
		}
	})
	b.Run("peer", func(b *testing.B) {
		var m sync.Map
		for _, r := range reqs {
			m.Store(r.Header.Get("Authorization")+r.URL.Path, body(strings.TrimPrefix(r.URL.Path, "/contacts/")))
		}
		peer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v, _ := m.Load(r.Header.Get("Authorization") + r.URL.Path)
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			_, _ = w.Write(v.([]byte))
		})
		serve(b, peer, reqs)
	})
}

func serve(b *testing.B, h http.Handler, reqs []*http.Request) {
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := newSink()
		i := int(next.Add(37))
		for pb.Next() {
			i = (i + 1) % len(reqs)
			w.reset()
			h.ServeHTTP(w, reqs[i])
			if w.status != http.StatusOK {
				b.Errorf("%s: status %d", reqs[i].URL.Path, w.status)
				return
			}
		}
	})
}

// sink is the cheapest ResponseWriter: it keeps the status and drops the body, reusing one
// header map like net/http's own response does not (so map allocations seen in a profile
// are the handler's).
type sink struct {
	h      http.Header
	status int
}

func newSink() *sink { return &sink{h: http.Header{}} }

func (s *sink) reset()              { clear(s.h); s.status = 0 }
func (s *sink) Header() http.Header { return s.h }
func (s *sink) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}

func (s *sink) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return len(b), nil
}
