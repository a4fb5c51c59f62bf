package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/ghlerror"
	"github.com/ghlproxy/ghlproxy/internal/poll"
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

// TestSlowBodiesAreCut is item 5c of the write-safety issue: 300 clients send the headers
// and the first bytes of a body, then stall. Each gets a sidecar-made 408 in GHL's shape
// once limits.body_timeout has passed, its connection is closed, nothing of a buffered
// route reached GHL, and the sidecar's goroutines return to where they were.
func TestSlowBodiesAreCut(t *testing.T) {
	fake, up := startStandIn(t, unlimited())
	r := startReplica(t, testConfig(t, up.URL, "GHLPROXY_LIMITS_BODY_TIMEOUT=300ms"))
	addr := strings.TrimPrefix(r.URL, "http://")
	http.DefaultClient.CloseIdleConnections()
	baseline := runtime.NumGoroutine()

	paths := []string{"/contacts/", "/contacts/search", "/no-such-route/x"}
	const n = 300
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer pit-slow-%d\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\":", paths[i%len(paths)], i)
		conns[i] = c
	}
	for i, c := range conns {
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("client %d (%s): no answer: %v", i, paths[i%len(paths)], err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get(ghlerror.Header) != ghlerror.CauseRequestTimeout || !ghlShaped(b, 408) {
			t.Fatalf("client %d (%s): %d %q %s; want the sidecar's 408", i, paths[i%len(paths)], resp.StatusCode, resp.Header.Get(ghlerror.Header), b)
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("client %d: the connection stayed open after the 408 (%v)", i, err)
		}
	}
	st := fake.Stats()
	if w := st.RouteCalls("POST /contacts/") + st.RouteCalls("POST /contacts/search"); w != 0 {
		t.Errorf("%d calls of buffered routes reached the stand-in", w)
	}
	poll.Until(t, 10*time.Second, fmt.Sprintf("goroutines back to %d", baseline+10), func() bool {
		return runtime.NumGoroutine() <= baseline+10
	})
}
