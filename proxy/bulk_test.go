package proxy

import (
	"net/http"
	"testing"

	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// TestSplitBulkTags: each id gets the single call's answer from its own entry.
func TestSplitBulkTags(t *testing.T) {
	resp := &upstream.Response{Status: 201, Header: http.Header{"X-Ratelimit-Remaining": {"7"}}, Body: []byte(`{"succeded":true,"errorCount":1,"traceId":"tr1","responses":[
		{"contactId":"b","message":"Tags updated","type":"success","oldTags":["x","t","y"],"tagsAdded":[],"tagsRemoved":["t"]},
		{"contactId":"a","message":"Tags updated","type":"success","oldTags":["t"],"tagsAdded":[],"tagsRemoved":["t"]},
		{"contactId":"c","message":"contact is deleted","type":"error"}]}`)}
	got := splitBulkTags(resp, "remove", []string{"a", "b", "c", "d"})
	want := []struct {
		status int
		body   string
	}{
		{200, `{"tags":[],"traceId":"tr1"}`},
		{200, `{"tags":["x","y"],"traceId":"tr1"}`},
		{400, `{"error":"Bad Request","message":"contact is deleted","statusCode":400,"traceId":"tr1"}`},
		{502, string(ghlerror.Body(502, "GHL's bulk tag answer has no entry for this contact: the tags may have been applied; read the contact before retrying"))},
	}
	for i, w := range want {
		if got[i].Status != w.status || string(got[i].Body) != w.body {
			t.Errorf("%d: %d %s, want %d %s", i, got[i].Status, got[i].Body, w.status, w.body)
		}
		if got[i].Header.Get("X-Ratelimit-Remaining") != "7" {
			t.Errorf("%d: GHL's headers not kept: %v", i, got[i].Header)
		}
	}
	if got[3].Header.Get(ghlerror.Header) == "" || got[0].Header.Get(ghlerror.Header) != "" {
		t.Errorf("X-Ghlproxy-Error: %q on the missing entry, %q on GHL's", got[3].Header.Get(ghlerror.Header), got[0].Header.Get(ghlerror.Header))
	}
	add := splitBulkTags(&upstream.Response{Status: 201, Header: http.Header{}, Body: []byte(`{"responses":[{"contactId":"a","type":"success","oldTags":["o"],"tagsAdded":["n"]}]}`)}, "add", []string{"a"})
	if add[0].Status != 201 || string(add[0].Body) != `{"tags":["o","n"]}` {
		t.Errorf("add: %d %s", add[0].Status, add[0].Body)
	}
}
