package warm

import (
	"testing"
)

func TestNextPage(t *testing.T) {
	tests := []struct {
		name, method, path, body, answer string
		wantPath, wantBody               string
		wantOK                           bool
	}{
		{
			name: "rewritten link", method: "GET", path: "/contacts/?locationId=L&limit=2",
			answer:   `{"contacts":[{"id":"a"},{"id":"b"}],"meta":{"nextPageUrl":"http://ghlproxy.warm/contacts/?limit=2&locationId=L&startAfter=5&startAfterId=b","startAfterId":"b"}}`,
			wantPath: "/contacts/?limit=2&locationId=L&startAfter=5&startAfterId=b", wantOK: true,
		},
		{
			name: "link not rewritten: path and query only", method: "GET", path: "/contacts/?locationId=L",
			answer:   `{"contacts":[{"id":"a"}],"meta":{"nextPageUrl":"https://services.leadconnectorhq.com/contacts/?locationId=L&startAfterId=a"}}`,
			wantPath: "/contacts/?locationId=L&startAfterId=a", wantOK: true,
		},
		{
			name: "link to another endpoint is not followed", method: "GET", path: "/contacts/?locationId=L",
			answer: `{"contacts":[{"id":"a"}],"meta":{"nextPageUrl":"http://ghlproxy.warm/users/?startAfterId=a"}}`,
		},
		{
			name: "startAfterId without a link", method: "GET", path: "/contacts/?locationId=L&limit=2",
			answer:   `{"contacts":[{"id":"a"},{"id":"b"}],"meta":{"nextPageUrl":null,"startAfterId":"b","startAfter":1700000000000}}`,
			wantPath: "/contacts/?limit=2&locationId=L&startAfter=1700000000000&startAfterId=b", wantOK: true,
		},
		{
			name: "last page", method: "GET", path: "/contacts/?locationId=L",
			answer: `{"contacts":[{"id":"a"}],"meta":{"nextPageUrl":null,"startAfterId":null,"startAfter":null}}`,
		},
		{
			name: "searchAfter", method: "POST", path: "/contacts/search",
			body:     `{"locationId":"L","pageLimit":2,"page":1}`,
			answer:   `{"contacts":[{"id":"a","searchAfter":[1,"a"]},{"id":"b","searchAfter":[2,"b"]}],"total":5}`,
			wantPath: "/contacts/search", wantBody: `{"locationId":"L","pageLimit":2,"searchAfter":[2,"b"]}`, wantOK: true,
		},
		{
			name: "short page ends a search", method: "POST", path: "/contacts/search",
			body:   `{"locationId":"L","pageLimit":2}`,
			answer: `{"contacts":[{"id":"a","searchAfter":[1,"a"]}],"total":1}`,
		},
		{
			name: "page numbers", method: "POST", path: "/opportunities/search",
			body:     `{"location_id":"L","limit":1,"page":1}`,
			answer:   `{"opportunities":[{"id":"o"}]}`,
			wantPath: "/opportunities/search", wantBody: `{"limit":1,"location_id":"L","page":2}`, wantOK: true,
		},
		{
			name: "no way to page", method: "POST", path: "/contacts/search",
			body: `{"locationId":"L"}`, answer: `{"contacts":[{"id":"a"}]}`,
		},
		{name: "not JSON", method: "GET", path: "/x", answer: `<html>`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, body, ok := nextPage(tt.method, tt.path, []byte(tt.body), []byte(tt.answer))
			if ok != tt.wantOK || path != tt.wantPath || string(body) != tt.wantBody {
				t.Errorf("nextPage = %q %s %v, want %q %s %v", path, body, ok, tt.wantPath, tt.wantBody, tt.wantOK)
			}
		})
	}
}
