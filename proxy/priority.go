package proxy

import (
	"context"

	"github.com/ghlproxy/ghlproxy/ratelimit"
)

type priorityKey struct{}

// WithPriority marks the requests served with ctx as being of lane p for the rate limiter.
// The warming loop serves its requests through the Handler in-process with ratelimit.Warm,
// so they only spend tokens the other lanes leave and stop at the daily reserve;
// stale-while-revalidate refreshes, and requests from the network that carry
// X-Ghlproxy-Priority: background, go in ratelimit.Background; every other request from
// the network is ratelimit.Interactive. The mark lowers a request's lane only.
func WithPriority(ctx context.Context, p ratelimit.Priority) context.Context {
	return context.WithValue(ctx, priorityKey{}, p)
}

// priorityOf is the lane a request came in with: the one ctx carries, else Interactive.
// classify reads it once, into the exchange, which carries it from there.
func priorityOf(ctx context.Context) ratelimit.Priority {
	if q, ok := ctx.Value(priorityKey{}).(ratelimit.Priority); ok {
		return q
	}
	return ratelimit.Interactive
}
