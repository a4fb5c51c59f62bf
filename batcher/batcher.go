// Package batcher groups writes per scope into batches of batch.min to batch.max behind one
// rate-limit grant, keeps writes to one entity in arrival order, and merges consecutive
// partial updates of one entity where the result is provably the same.
package batcher

import (
	"context"

	"github.com/ghlproxy/ghlproxy/upstream"
)

// Write is one accepted write.
type Write struct {
	// Scope is the rate-limit scope key (identity.Credential.ScopeKey): writes group per scope.
	Scope string
	// Entity orders writes: writes with the same non-empty Entity reach upstream in arrival
	// order and never concurrently. Empty means no ordering constraint.
	Entity string
	// MergeKey, when non-empty, lets consecutive writes with the same MergeKey in one group
	// merge into one call (partial updates of one entity with one credential and Version).
	MergeKey string
	// Body is the request body (JSON when MergeKey is set).
	Body []byte
	// Send performs the upstream call with the given body (the merged body when merged). It
	// is called at most once per Write or merged run, after the group's grant.
	Send func(ctx context.Context, body []byte) (*upstream.Response, error)
}

// Info describes the group a write went out in, for X-Ghlproxy-Batch.
type Info struct {
	ID     string
	Size   int
	Merged int
}
