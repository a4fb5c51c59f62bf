package e2e

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Tests that kill or signal a replica need it in a process of its own: the ghlproxy
// binary, built once per test run, started exactly as `ghlproxy serve` runs in a pod.

var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// TestMain removes the binary built for the process tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// ghlproxyBinary builds cmd/ghlproxy once (without the race detector: it checks the test
// process, and an instrumented build would only slow the replicas down).
func ghlproxyBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "ghlproxy-e2e-")
		if built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "ghlproxy")
		out, err := exec.Command("go", "build", "-o", built.path, "../cmd/ghlproxy").CombinedOutput()
		if err != nil {
			built.err = &buildError{err: err, out: string(out)}
		}
	})
	if built.err != nil {
		t.Fatalf("go build ./cmd/ghlproxy: %v", built.err)
	}
	return built.path
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// process is one `ghlproxy serve` process.
type process struct {
	URL, OpsURL string
	cmd         *exec.Cmd
	exited      chan struct{}
	mu          sync.Mutex
	logs        []string
}

// startProcess runs `ghlproxy serve` with env (GHLPROXY_* settings) on loopback ports of
// its choosing, and waits until it serves. It is killed when the test ends.
func startProcess(t *testing.T, upstream string, env ...string) *process {
	t.Helper()
	cmd := exec.Command(ghlproxyBinary(t), "serve")
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"GHLPROXY_UPSTREAM=" + upstream,
		"GHLPROXY_LISTEN=127.0.0.1:0",
		// Not port 0 as well: config refuses two equal listen addresses.
		"GHLPROXY_OPS_LISTEN=" + freeAddr(t),
		"GHLPROXY_LOG_FORMAT=json",
		"GHLPROXY_LOG_LEVEL=info",
	}, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	ready := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs = append(p.logs, line)
			p.mu.Unlock()
			var v struct {
				Msg    string `json:"msg"`
				Listen string `json:"listen"`
				Ops    string `json:"ops"`
			}
			if json.Unmarshal([]byte(line), &v) == nil && v.Msg == "ghlproxy serving" {
				ready <- [2]string{v.Listen, v.Ops}
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("ghlproxy process logs:\n%s", p.Logs())
		}
	})
	select {
	case addrs := <-ready:
		p.URL, p.OpsURL = "http://"+addrs[0], "http://"+addrs[1]
	case <-p.exited:
		t.Fatalf("ghlproxy exited before serving:\n%s", p.Logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("ghlproxy did not serve within 30s:\n%s", p.Logs())
	}
	return p
}

// freeAddr is a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *process) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// Terminate sends SIGTERM, as Kubernetes does at a pod's shutdown.
func (p *process) Terminate() { _ = p.cmd.Process.Signal(syscall.SIGTERM) }

// Wait waits up to d for the process to exit and reports whether it did.
func (p *process) Wait(d time.Duration) bool {
	select {
	case <-p.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// Logs is everything the process wrote to stderr so far.
func (p *process) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logs, "\n")
}
