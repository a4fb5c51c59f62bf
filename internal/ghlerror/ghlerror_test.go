package ghlerror

import (
	"encoding/json"
	"maps"
	"testing"
)

// Fields is what Body encodes: an error split out of a bulk answer and one the sidecar
// makes itself must read the same to a client.
func TestFieldsMatchBody(t *testing.T) {
	var fromBody, fromFields map[string]any
	if err := json.Unmarshal(Body(400, "tag \"x\" is invalid"), &fromBody); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(Fields(400, "tag \"x\" is invalid"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &fromFields); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(fromBody, fromFields) {
		t.Fatalf("Body %v, Fields %v", fromBody, fromFields)
	}
	if fromBody["statusCode"] != 400.0 || fromBody["error"] != "Bad Request" {
		t.Fatalf("Body %v: not GHL's shape", fromBody)
	}
}
