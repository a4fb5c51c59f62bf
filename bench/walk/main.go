// Command walk records which of the module's functions run while the sidecar serves one
// request of each kind: a miss, a hit from Redis, a hit from memory and a write
// (docs/architecture.md, "The walk of a request"). Built with -cover -covermode=atomic by
// bench/walk.sh, it clears the coverage counters before each request and writes them after
// it (once the client has read the answer), one directory per step under its first
// argument; the script counts the functions, files and packages that ran. Two replicas share one redis-server (started here, on a free
// port) in front of the GHL stand-in, warmed first, as in TestRedisCommandsPerRequest.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/coverage"
	"strings"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/fakeghl"
	"github.com/ghlproxy/ghlproxy/internal/sidecar"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: walk OUTDIR (run by bench/walk.sh)")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "walk:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	redisAddr, stop, err := startRedis()
	if err != nil {
		return err
	}
	defer stop()
	fake := fakeghl.New(fakeghl.Config{Limit: 1_000_000, Daily: 1 << 30})
	up := httptest.NewServer(fake)
	defer up.Close()
	var urls []string
	for range 2 {
		u, err := startReplica(up.URL, redisAddr)
		if err != nil {
			return err
		}
		urls = append(urls, u)
	}
	tok := fakeghl.Token("Location", "loc-walk", "")
	warm, err := create(up.URL, tok)
	if err != nil {
		return err
	}
	for _, u := range urls {
		if _, err := do("GET", u+"/contacts/"+warm, tok, ""); err != nil {
			return err
		}
	}
	if _, err := do("PUT", urls[0]+"/contacts/"+warm, tok, `{"firstName":"W2"}`); err != nil {
		return err
	}
	id, err := create(up.URL, tok)
	if err != nil {
		return err
	}
	// want: how the Cache-Status of the answer begins, so that each step is what it is named.
	for _, s := range []struct{ name, method, url, body, want string }{
		{"miss", "GET", urls[0] + "/contacts/" + id, "", "ghlproxy; fwd=miss"},
		{"hit-redis", "GET", urls[1] + "/contacts/" + id, "", "ghlproxy; hit; ttl="},
		{"hit-memory", "GET", urls[1] + "/contacts/" + id, "", "ghlproxy; hit; ttl="},
		{"write", "PUT", urls[0] + "/contacts/" + id, `{"firstName":"B"}`, ""},
	} {
		out := filepath.Join(dir, s.name)
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		if err := coverage.WriteMetaDir(out); err != nil {
			return err
		}
		if err := coverage.ClearCounters(); err != nil {
			return err
		}
		status, err := do(s.method, s.url, tok, s.body)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if err := coverage.WriteCountersDir(out); err != nil {
			return err
		}
		if !strings.HasPrefix(status, s.want) {
			return fmt.Errorf("%s: Cache-Status %q, want %q...", s.name, status, s.want)
		}
	}
	return nil
}

func startRedis() (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("redis-server", "--port", fmt.Sprint(port), "--save", "", "--appendonly", "no")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("redis-server: %w", err)
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	// Redis says when it accepts connections.
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "Ready to accept connections") {
			go func() { _, _ = io.Copy(io.Discard, stdout) }()
			return fmt.Sprintf("127.0.0.1:%d", port), stop, nil
		}
	}
	stop()
	return "", nil, fmt.Errorf("redis-server on port %d exited before accepting connections", port)
}

func startReplica(upstream, redisAddr string) (string, error) {
	cfg, err := config.Load(nil, []string{
		"GHLPROXY_UPSTREAM=" + upstream,
		"GHLPROXY_LOG_LEVEL=warn",
		"GHLPROXY_REDIS_URL=redis://" + redisAddr,
		"GHLPROXY_IDENTITY_SECRET=walk",
		"GHLPROXY_RATELIMIT_RATE=1000000",
		"GHLPROXY_RATELIMIT_BURST=1000000",
	})
	if err != nil {
		return "", err
	}
	s, err := sidecar.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return "", err
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() { _ = s.Serve(context.Background(), pl, ol) }()
	return "http://" + pl.Addr().String(), nil
}

func create(upstream, tok string) (string, error) {
	req, _ := http.NewRequest("POST", upstream+"/contacts/", strings.NewReader(`{"firstName":"A","locationId":"loc-walk"}`))
	req.Header = http.Header{"Authorization": {"Bearer " + tok}, "Version": {"2021-07-28"}, "Content-Type": {"application/json"}}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct{ Contact struct{ ID string } }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Contact.ID == "" {
		return "", fmt.Errorf("create contact on the stand-in: %d %v", resp.StatusCode, err)
	}
	return out.Contact.ID, nil
}

// do makes one request through the sidecar and returns the answer's Cache-Status.
func do(method, url, tok, body string) (string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header = http.Header{"Authorization": {"Bearer " + tok}, "Version": {"2021-07-28"}}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	return resp.Header.Get("Cache-Status"), nil
}
