package upstream

import (
	"bytes"
	"net/http"
	"reflect"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	r := &Response{Status: 201, Header: http.Header{"Content-Type": {"application/json"}, "X-Multi": {"a", "b"}},
		Body: []byte(`{"id":"x"}`), Date: time.Unix(0, 1234567890)}
	b, _ := r.MarshalBinary()
	var got Response
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got.Status != r.Status || !reflect.DeepEqual(got.Header, r.Header) || !bytes.Equal(got.Body, r.Body) || !got.Date.Equal(r.Date) {
		t.Fatalf("round trip: %+v != %+v", &got, r)
	}
}

// FuzzUnmarshal: arbitrary bytes never panic, and what decodes re-encodes to itself.
func FuzzUnmarshal(f *testing.F) {
	r := &Response{Status: 200, Header: http.Header{"A": {"b"}}, Body: []byte("x")}
	b, _ := r.MarshalBinary()
	f.Add(b)
	f.Add([]byte{1, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var got Response
		if got.UnmarshalBinary(data) != nil {
			return
		}
		again, _ := got.MarshalBinary()
		var back Response
		if err := back.UnmarshalBinary(again); err != nil || back.Status != got.Status || !bytes.Equal(back.Body, got.Body) {
			t.Fatalf("re-encoding a decoded response does not decode to it: %v", err)
		}
	})
}
