package fakeghl_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ghlproxy/ghlproxy/fakeghl"
)

// BenchmarkGetContact is the stand-in's hot path as a benchmark upstream sees it, next to
// a bare handler answering a fixed body of the same size (the peer: compare ns/op).
func BenchmarkGetContact(b *testing.B) {
	fake := fakeghl.New(fakeghl.Config{Limit: 1 << 30, Daily: 1 << 30})
	defer fake.Close()
	auth := "Bearer " + fakeghl.Token("Location", "L", "app")
	w := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/contacts/", strings.NewReader(`{"firstName":"Ada","email":"ada@example.com"}`))
	req.Header.Set("Authorization", auth)
	fake.ServeHTTP(w, req)
	id := w.Body.String()
	id = id[strings.Index(id, `"id":"`)+6:]
	id = id[:strings.IndexByte(id, '"')]
	get := httptest.NewRequest("GET", "/contacts/"+id, nil)
	get.Header.Set("Authorization", auth)
	w = httptest.NewRecorder()
	fake.ServeHTTP(w, get)
	body := w.Body.Bytes()

	b.Run("fakeghl", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w := discard{h: http.Header{}}
			fake.ServeHTTP(&w, get)
		}
	})
	b.Run("peer", func(b *testing.B) {
		b.ReportAllocs()
		peer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		})
		for b.Loop() {
			w := discard{h: http.Header{}}
			peer.ServeHTTP(&w, get)
		}
	})
}

type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}
