// Command floors is the floor of HTTP stacks other than the one ghlproxy is built on, for
// bench/floors.sh: how much latency a Go proxy adds on this machine when it leaves
// net/http's Transport, or net/http altogether, and how many cache hits per second a bare
// fasthttp cache serves. It answers whether the speed targets that sit at net/http's own
// floor (pass-through latency no more than nginx's, hits at least the better of nginx and
// Varnish) could be met by changing stacks.
//
// It is a module of its own so that ghlproxy does not depend on fasthttp for a measurement.
//
//	floors --mode fasthttp   --listen ADDR --upstream HOST:PORT  # fasthttp server and client
//	floors --mode fastclient --listen ADDR --upstream HOST:PORT  # net/http server, fasthttp client
//	floors --mode fastcache  --listen ADDR --upstream HOST:PORT  # fasthttp, answers from a map
//
// None is a proxy to run: no hop-by-hop header handling, no timeouts, no TLS, no expiry.
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
	"sync"

	"github.com/valyala/fasthttp"
)

func main() {
	mode := flag.String("mode", "fasthttp", "fasthttp, fastclient or fastcache")
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	up := flag.String("upstream", "", "upstream host:port (plain HTTP)")
	flag.Parse()
	// fasthttp's client makes the upstream exchange in the caller's goroutine; net/http's
	// Transport hands it to a write loop and a read loop of the connection's.
	hc := &fasthttp.HostClient{Addr: *up, MaxConns: 1024}
	switch *mode {
	case "fasthttp":
		log.Fatal(fasthttp.ListenAndServe(*listen, func(ctx *fasthttp.RequestCtx) {
			if err := hc.Do(&ctx.Request, &ctx.Response); err != nil {
				ctx.Error(err.Error(), http.StatusBadGateway)
			}
		}))
	case "fastcache":
		// bench/mix floor --mode cache on fasthttp: keyed by credential, Version and URI,
		// filled from the upstream on a miss.
		var m sync.Map // string -> *entry
		log.Fatal(fasthttp.ListenAndServe(*listen, func(ctx *fasthttp.RequestCtx) {
			h := &ctx.Request.Header
			key := string(h.Peek("Authorization")) + "\x00" + string(h.Peek("Version")) + "\x00" + string(ctx.RequestURI())
			if v, ok := m.Load(key); ok {
				e := v.(*entry)
				ctx.SetContentType(e.contentType)
				ctx.SetBody(e.body)
				return
			}
			if err := hc.Do(&ctx.Request, &ctx.Response); err != nil {
				ctx.Error(err.Error(), http.StatusBadGateway)
				return
			}
			if ctx.Response.StatusCode() == http.StatusOK && ctx.IsGet() {
				m.Store(key, &entry{contentType: string(ctx.Response.Header.ContentType()), body: append([]byte(nil), ctx.Response.Body()...)})
			}
		}))
	case "fastclient":
		log.Fatal(http.ListenAndServe(*listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://" + *up + r.URL.RequestURI())
			req.Header.SetMethod(r.Method)
			for k, vs := range r.Header {
				for _, v := range vs {
					req.Header.Add(k, v)
				}
			}
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			req.SetBody(body)
			if err := hc.Do(req, resp); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			for k, v := range resp.Header.All() {
				if k := string(k); k != "Content-Length" && k != "Connection" {
					w.Header().Add(k, string(v))
				}
			}
			w.WriteHeader(resp.StatusCode())
			_, _ = w.Write(resp.Body())
		})))
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
}

type entry struct {
	contentType string
	body        []byte
}
