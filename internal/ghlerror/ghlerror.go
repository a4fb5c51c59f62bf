// Package ghlerror writes the errors the sidecar makes itself in GHL's own error shape,
// {"statusCode": N, "message": "...", "error": "..."}, so that clients and SDKs that parse
// GHL errors parse ours too. The X-Ghlproxy-Error header names the cause for machines and
// for curl users; it never carries request data.
package ghlerror

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Causes, as sent in X-Ghlproxy-Error. Stable: alerts and users match on them.
const (
	CauseUpstreamUnreachable = "upstream-unreachable"
	CauseUpstreamTimeout     = "upstream-timeout"
	CauseUpstreamTooLarge    = "upstream-response-too-large"
	CauseBodyTooLarge        = "request-body-too-large"
	CauseHeadersTooLarge     = "request-headers-too-large"
	CauseMalformed           = "malformed-request"
	CauseRequestTimeout      = "request-timeout"
	CauseWebhookSignature    = "webhook-refused"
	CauseRateLimited         = "rate-limited"
	CauseFoldFailed          = "fold-failed"
	CauseShuttingDown        = "shutting-down"
	CauseForbidden           = "forbidden"
	CauseUnauthorized        = "missing-authorization"
	CauseNotFound            = "not-found"
	CauseInternal            = "internal"
)

// Header is the response header naming the cause of a sidecar-made error.
const Header = "X-Ghlproxy-Error"

type body struct {
	StatusCode int    `json:"statusCode"`
	Message    string `json:"message"`
	Error      string `json:"error"`
}

// Body returns the JSON body of an error in GHL's shape.
func Body(status int, message string) []byte {
	b, _ := json.Marshal(body{StatusCode: status, Message: message, Error: http.StatusText(status)})
	return b
}

// Fields returns the members of an error in GHL's shape, for merging into a larger answer
// (a bulk answer's entry split out for its caller).
func Fields(status int, message string) map[string]any {
	return map[string]any{"statusCode": status, "message": message, "error": http.StatusText(status)}
}

// Write sends a sidecar-made error. Headers the caller already set on w (Retry-After,
// X-RateLimit-*) are kept.
func Write(w http.ResponseWriter, status int, cause, message string) {
	b := Body(status, message)
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set(Header, cause)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
