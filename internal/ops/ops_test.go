package ops

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestReadyReportsDegradedWithoutFailing(t *testing.T) {
	redis := "ok"
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "ghlproxy_test_total", Help: "x"})
	reg.MustRegister(c)
	c.Inc()
	h := New(reg, Check{Name: "redis", Status: func() (string, bool) { return redis, false }})
	srv := httptest.NewServer(h)
	defer srv.Close()

	if code, body := get(t, srv, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz = %d %q", code, body)
	}
	if code, body := get(t, srv, "/metrics"); code != 200 || !strings.Contains(body, "ghlproxy_test_total 1") {
		t.Fatalf("metrics = %d %q", code, body)
	}
	code, body := get(t, srv, "/readyz")
	if code != 200 || !strings.Contains(body, `"ready"`) {
		t.Fatalf("readyz = %d %s", code, body)
	}
	redis = "unreachable: connection refused"
	code, body = get(t, srv, "/readyz")
	var got struct {
		Status string
		Checks map[string]string
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if code != 200 || got.Status != "degraded" || got.Checks["redis"] != redis {
		t.Fatalf("degraded readyz = %d %+v", code, got)
	}
	h.Drain()
	if code, _ := get(t, srv, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("draining readyz = %d, want 503", code)
	}
}
