package main

import (
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
)

// floor runs the Go floor the sidecar stands on, as a peer for bench/run.sh: what net/http
// itself costs with no work of ghlproxy's in it. PERFORMANCE.md measured both on this kind
// of machine below nginx; measuring them in the same run as ghlproxy separates what the
// sidecar adds from what net/http costs.
//
//	mix floor --mode proxy --listen ADDR --upstream URL
//	    a plain httputil.ReverseProxy (NewSingleHostReverseProxy, default transport but
//	    100 idle connections per host): the pass-through floor
//	mix floor --mode cache --listen ADDR --upstream URL
//	    a bare caching proxy: answers from a sync.Map keyed by credential, Version and
//	    URI, filled from the upstream on a miss; no TTL, no headers of its own, no metrics:
//	    the cache-hit floor
func floor(args []string) error {
	fs := flag.NewFlagSet("floor", flag.ExitOnError)
	mode := fs.String("mode", "proxy", "proxy or cache")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	upstream := fs.String("upstream", "", "upstream base URL")
	_ = fs.Parse(args)
	u, err := url.Parse(*upstream)
	if err != nil || u.Host == "" {
		return errors.New("floor: --upstream must be an absolute URL")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 100
	var h http.Handler
	switch *mode {
	case "proxy":
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.Transport = tr
		h = rp
	case "cache":
		h = &floorCache{upstream: u, client: &http.Client{Transport: tr}}
	default:
		return errors.New("floor: --mode is proxy or cache")
	}
	return http.ListenAndServe(*listen, h)
}

type floorEntry struct {
	contentType []string
	body        []byte
}

type floorCache struct {
	upstream *url.URL
	client   *http.Client
	m        sync.Map // string -> *floorEntry
}

func (c *floorCache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Authorization") + "\x00" + r.Header.Get("Version") + "\x00" + r.URL.RequestURI()
	if v, ok := c.m.Load(key); ok {
		e := v.(*floorEntry)
		w.Header()["Content-Type"] = e.contentType
		_, _ = w.Write(e.body)
		return
	}
	out, _ := http.NewRequestWithContext(r.Context(), r.Method, c.upstream.String()+r.URL.RequestURI(), nil)
	out.Header = r.Header.Clone()
	resp, err := c.client.Do(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	if resp.StatusCode == http.StatusOK && r.Method == http.MethodGet {
		c.m.Store(key, &floorEntry{contentType: resp.Header["Content-Type"], body: body})
	}
	w.Header()["Content-Type"] = resp.Header["Content-Type"]
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}
