package warm

import (
	"encoding/json"
	"net/http"
	"net/url"
)

// nextPage works out the request for the page after answer, the way GHL pages:
//
//   - meta.nextPageUrl, an absolute link to the same endpoint (GET lists);
//   - meta.startAfterId and meta.startAfter without a link (GET lists);
//   - searchAfter on the last item of a POST search (contacts), sent back in the body;
//   - page in the body of a POST search, counted up while pages come back full.
//
// It reports false when there is no next page, or none it knows how to follow.
func nextPage(method, path string, body, answer []byte) (string, []byte, bool) {
	var a map[string]json.RawMessage
	if json.Unmarshal(answer, &a) != nil {
		return "", nil, false
	}
	if method == http.MethodGet {
		return nextGet(path, a)
	}
	return nextSearch(path, body, a)
}

func nextGet(path string, a map[string]json.RawMessage) (string, []byte, bool) {
	var meta struct {
		NextPageURL  string          `json:"nextPageUrl"`
		StartAfterID string          `json:"startAfterId"`
		StartAfter   json.RawMessage `json:"startAfter"`
	}
	if raw, ok := a["meta"]; !ok || json.Unmarshal(raw, &meta) != nil {
		return "", nil, false
	}
	u, err := url.Parse(path)
	if err != nil {
		return "", nil, false
	}
	if meta.NextPageURL != "" {
		// The proxy rewrote the link to Host when it pointed at the upstream. Only its path
		// and query are used, served through the proxy to the configured upstream, so the
		// host does not matter; a link to another endpoint is not a page of this request.
		next, err := url.Parse(meta.NextPageURL)
		if err != nil || next.EscapedPath() != u.EscapedPath() {
			return "", nil, false
		}
		return next.RequestURI(), nil, true
	}
	if meta.StartAfterID == "" {
		return "", nil, false
	}
	q := u.Query()
	q.Set("startAfterId", meta.StartAfterID)
	if s := string(meta.StartAfter); s != "" && s != "null" {
		var n json.Number
		if json.Unmarshal(meta.StartAfter, &n) == nil {
			q.Set("startAfter", n.String())
		}
	}
	u.RawQuery = q.Encode()
	return u.RequestURI(), nil, true
}

func nextSearch(path string, body []byte, a map[string]json.RawMessage) (string, []byte, bool) {
	var req map[string]any
	if len(body) == 0 || json.Unmarshal(body, &req) != nil {
		return "", nil, false
	}
	items := firstList(a)
	if len(items) == 0 {
		return "", nil, false
	}
	if limit := pageLimit(req); limit > 0 && len(items) < limit {
		return "", nil, false // a short page is the last one
	}
	var last struct {
		SearchAfter []any `json:"searchAfter"`
	}
	if json.Unmarshal(items[len(items)-1], &last) == nil && len(last.SearchAfter) > 0 {
		req["searchAfter"] = last.SearchAfter
		delete(req, "page")
	} else if p, ok := req["page"].(float64); ok {
		req["page"] = p + 1
	} else {
		return "", nil, false
	}
	next, err := json.Marshal(req)
	if err != nil {
		return "", nil, false
	}
	return path, next, true
}

// firstList is the list of an answer: its first top-level array of objects ("contacts",
// "opportunities", ...).
func firstList(a map[string]json.RawMessage) []json.RawMessage {
	for _, raw := range a {
		var items []json.RawMessage
		if len(raw) > 0 && raw[0] == '[' && json.Unmarshal(raw, &items) == nil && len(items) > 0 && len(items[0]) > 0 && items[0][0] == '{' {
			return items
		}
	}
	return nil
}

func pageLimit(req map[string]any) int {
	for _, k := range []string{"pageLimit", "limit"} {
		if n, ok := req[k].(float64); ok && n > 0 {
			return int(n)
		}
	}
	return 0
}
