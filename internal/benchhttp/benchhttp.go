// Package benchhttp is the client side of the pass-through benchmarks (proxy, sidecar): one
// GHL-like GET at a time over a kept-alive connection, so that ns/op is one round trip.
package benchhttp

import (
	"io"
	"net/http"
	"testing"
)

// Get sends GET url with a bearer token and GHL's Version header b.N times in a row and
// fails the benchmark on any answer but 200.
func Get(b *testing.B, url string) {
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer pit-bench-token")
	req.Header.Set("Version", "2021-07-28")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}
