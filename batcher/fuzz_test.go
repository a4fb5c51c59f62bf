package batcher

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzMerge: merging two partial updates equals applying them in order — every field of
// the second wins, every other field of the first stays — and never panics.
func FuzzMerge(f *testing.F) {
	f.Add([]byte(`{"firstName":"Ada"}`), []byte(`{"lastName":"Lovelace"}`))
	f.Add([]byte(`{"tags":["a"],"n":1}`), []byte(`{"tags":["b"]}`))
	f.Add([]byte(`{"a":{"x":1}}`), []byte(`{"a":null}`))
	f.Add([]byte(`{"a":1,"a":2}`), []byte(`{}`))
	f.Add([]byte(`[1]`), []byte(`{"a":1}`))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		fa, fb := jsonObject(a), jsonObject(b)
		if fa == nil || fb == nil {
			return // not mergeable: the batcher sends such writes one by one
		}
		merged := merge([]*pending{{fields: fa}, {fields: fb}})
		var got map[string]json.RawMessage
		if err := json.Unmarshal(merged, &got); err != nil {
			t.Fatalf("merged body is not a JSON object: %q: %v", merged, err)
		}
		for k, v := range fb {
			if !jsonEqual(got[k], v) {
				t.Fatalf("field %q = %s, want the later write's %s", k, got[k], v)
			}
		}
		for k, v := range fa {
			if _, later := fb[k]; !later && !jsonEqual(got[k], v) {
				t.Fatalf("field %q = %s, want the earlier write's %s", k, got[k], v)
			}
		}
		if len(got) != len(union(fa, fb)) {
			t.Fatalf("merged has %d fields, want %d", len(got), len(union(fa, fb)))
		}
	})
}

func union(a, b map[string]json.RawMessage) map[string]bool {
	u := map[string]bool{}
	for k := range a {
		u[k] = true
	}
	for k := range b {
		u[k] = true
	}
	return u
}

// jsonEqual compares two JSON values by meaning (json.Marshal may re-escape strings).
func jsonEqual(x, y json.RawMessage) bool {
	var vx, vy any
	if json.Unmarshal(x, &vx) != nil || json.Unmarshal(y, &vy) != nil {
		return bytes.Equal(x, y)
	}
	bx, _ := json.Marshal(vx)
	by, _ := json.Marshal(vy)
	return bytes.Equal(bx, by)
}
