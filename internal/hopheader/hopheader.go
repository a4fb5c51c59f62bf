// Package hopheader copies a message's end-to-end headers: everything but the hop-by-hop
// ones (RFC 9110 §7.6.1), which describe one connection and not the message, and those the
// Connection header names. The proxy uses it both ways and for what it caches; the webhook
// receiver when it hands a delivery on to the app.
package hopheader

import (
	"net/http"
	"strings"
)

// Hop are the hop-by-hop headers, canonical: never forwarded in either direction nor kept
// in the cache.
var Hop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// Copy copies src's end-to-end headers into dst, replacing what dst had under those names.
func Copy(dst, src http.Header) {
	var named []string
	for _, v := range src["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				named = append(named, http.CanonicalHeaderKey(f))
			}
		}
	}
next:
	for k, vs := range src {
		for _, hk := range Hop {
			if k == hk {
				continue next
			}
		}
		for _, n := range named {
			if k == n {
				continue next
			}
		}
		dst[k] = append(dst[k][:0:0], vs...)
	}
}
