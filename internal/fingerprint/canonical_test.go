package fingerprint

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
	"time"
)

// TestAmbiguousBodiesKeepTheirBytes is item 8c of the write-safety issue: bodies that a
// decoding into Go strings would make equal — invalid UTF-8, lone surrogates, both mapped to
// U+FFFD; a duplicate member, of which one wins — are keyed by their raw bytes, so they
// never share a fingerprint with each other or with the body they would decode to.
func TestAmbiguousBodiesKeepTheirBytes(t *testing.T) {
	groups := [][]string{
		{"{\"q\":\"\xff\"}", "{\"q\":\"\xfe\"}", `{"q":"\ufffd"}`, "{\"q\":\"\uFFFD\"}"},
		{`{"q":"\ud800"}`, `{"q":"\udbff"}`, `{"q":"\ufffd"}`},
		{`{"a":1,"a":2}`, `{"a":2}`, `{"a":1,"a":1}`},
	}
	for _, g := range groups {
		seen := map[string]string{}
		for _, body := range g {
			r := Request{Method: "POST", Route: "/contacts/search", Path: "/contacts/search", CredHash: "c", Body: []byte(body), JSON: true}
			k := Of(r)
			if other, ok := seen[k]; ok && other != body {
				// Two spellings of U+FFFD itself are the same string: that one is allowed.
				if !(json.Valid([]byte(body)) && json.Valid([]byte(other)) && canonicalEqual(body, other)) {
					t.Errorf("%q and %q share a fingerprint", body, other)
				}
			}
			seen[k] = body
		}
	}
}

func canonicalEqual(a, b string) bool {
	ca, errA := CanonicalJSON([]byte(a))
	cb, errB := CanonicalJSON([]byte(b))
	return errA == nil && errB == nil && bytes.Equal(ca, cb)
}

// searchBody is a search body of about n bytes: filters with nested objects, as a saved
// search with many conditions has.
func searchBody(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"locationId":"L1","pageLimit":100,"filters":[`)
	for i := 0; b.Len() < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"group":"AND","filters":[{"operator":"eq","field":"customFields.f%d","value":"v%d"}],"z":%d,"a":[1.0,2,3]}`, i, i, i)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

// peakHeap runs f and returns how far the heap rose above where it stood when f began,
// at the highest of samples taken every 100µs while f ran.
func peakHeap(f func()) uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(s); return s[0].Value.Uint64() }
	base := read()
	var peak uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Microsecond)
		defer t.Stop()
		for {
			peak = max(peak, read())
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	f()
	close(stop)
	wg.Wait()
	peak = max(peak, read())
	if peak < base {
		return 0
	}
	return peak - base
}

// decodeAny is how CanonicalJSON worked before: a tree of Go values, encoded again. The
// peer of BenchmarkCanonicalJSON.
func decodeAny(b []byte) ([]byte, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// digestAny is the peer: the digest as it was computed before, by decoding into any.
func digestAny(b []byte) error {
	c, err := decodeAny(b)
	if err == nil {
		_ = sha256.Sum256(c)
	}
	return err
}

// BenchmarkCanonicalDigest keys a 10 MiB search body, the largest limits.max_body_bytes lets
// in, as the sidecar does (jsontext streaming into the hash) and, as the peer measured in
// the same run, by decoding into any. peak-heap/body is the highest the heap rose above
// its level before the call, as a multiple of the body's size.
func BenchmarkCanonicalDigest(b *testing.B) {
	body := searchBody(10 << 20)
	for _, c := range []struct {
		name string
		f    func([]byte) error
	}{{"jsontext", func(b []byte) error {
		if _, ok := canonicalDigest(b, true); !ok {
			return errors.New("not canonicalised")
		}
		return nil
	}}, {"decode-any", digestAny}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			var worst uint64
			for b.Loop() {
				var err error
				p := peakHeap(func() { err = c.f(body) })
				if err != nil {
					b.Fatal(err)
				}
				worst = max(worst, p)
			}
			b.ReportMetric(float64(worst)/float64(len(body)), "peak-heap/body")
		})
	}
}

// TestCanonicalDigestPeakIsSmall keeps the benchmark's finding true: keying a 10 MiB body
// never lifts the heap by more than a small multiple of the body.
func TestCanonicalDigestPeakIsSmall(t *testing.T) {
	body := searchBody(10 << 20)
	// A collector that runs early makes the peak the live memory, not garbage it has not
	// come to yet (which depends on the machine's load).
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	var ok bool
	p := peakHeap(func() { _, ok = canonicalDigest(body, true) })
	if !ok {
		t.Fatal("the body was not canonicalised")
	}
	t.Logf("keying %d bytes lifted the heap by %.1f× their size", len(body), float64(p)/float64(len(body)))
	if ratio := float64(p) / float64(len(body)); ratio > 3 {
		t.Fatalf("canonicalising %d bytes lifted the heap by %d (%.1f× the body); want a small multiple", len(body), p, ratio)
	}
}

// BenchmarkOfSearch is the key of a query-cache hit on POST /contacts/search with a
// typical body (jsontext), beside the same key computed by decoding into any (decode-any).
func BenchmarkOfSearch(b *testing.B) {
	body := []byte(`{"locationId":"ve9EPM428h8vShlRW1KT","pageLimit":20,"filters":[{"field":"tags","operator":"contains","value":"vip"}],"sort":[{"field":"dateAdded","direction":"desc"}]}`)
	r := Request{Method: "POST", Route: "/contacts/search", Path: "/contacts/search", Version: "2021-07-28",
		CredHash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", Body: body, JSON: true}
	b.Run("jsontext", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = Of(r)
		}
	})
	b.Run("decode-any", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = digestAny(body)
		}
	})
}
