package proxy

import (
	"context"

	"github.com/ghlproxy/ghlproxy/ratelimit"
)

type priorityKey struct{}

// WithPriority marks the requests served with ctx as being of priority p for the rate
// limiter. The warming loop serves its requests through the Handler in-process with
// ratelimit.Warm, so they only spend tokens interactive traffic leaves and stop at the
// daily reserve; requests from the network are always ratelimit.Interactive. The mark
// lowers priority only: it never lifts a batched write to interactive.
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
