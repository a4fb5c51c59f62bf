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

// priorityOf is the priority of a request: p, or the lower one ctx carries.
func priorityOf(ctx context.Context, p ratelimit.Priority) ratelimit.Priority {
	if q, ok := ctx.Value(priorityKey{}).(ratelimit.Priority); ok && q > p {
		return q
	}
	return p
}
