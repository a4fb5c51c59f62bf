package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
)

// TestMalformedPathEscapeGetsGHLError: a malformed escape in the path is refused by Go's
// HTTP server before the sidecar's handler runs; the answer still comes in GHL's error shape
// with X-Ghlproxy-Error, and the sidecar keeps serving.
func TestMalformedPathEscapeGetsGHLError(t *testing.T) {
	up := startLoggedStandIn(t, fakeghl.Config{Limit: 100000})
	r := startReplica(t, testConfig(t, up.URL))
	c, err := net.Dial("tcp", strings.TrimPrefix(r.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /contacts/%zz HTTP/1.1\r\nHost: sidecar\r\nAuthorization: Bearer x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		StatusCode int    `json:"statusCode"`
		Message    string `json:"message"`
		Error      string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("not GHL's error shape: %v", err)
	}
	if resp.StatusCode != 400 || body.StatusCode != 400 || body.Error != "Bad Request" || resp.Header.Get("X-Ghlproxy-Error") != "malformed-request" {
		t.Fatalf("got %d %q %+v, want a GHL-shaped 400 malformed-request", resp.StatusCode, resp.Header.Get("X-Ghlproxy-Error"), body)
	}
	token := "pit-malformed-after"
	// The next request is served, and answered by GHL (the stand-in), not by the sidecar.
	if a := send(http.DefaultClient, "GET", r.URL+"/contacts/nope", "", ghlHeaders(token), 10*time.Second, nil); a.Err != nil || a.Status == 0 || a.Header.Get("X-Ghlproxy-Error") != "" {
		t.Fatalf("after the malformed request: %d %q %v", a.Status, a.Header.Get("X-Ghlproxy-Error"), a.Err)
	}
}
