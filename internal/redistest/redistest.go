// Package redistest starts real redis-server processes for tests: a single node on a free
// loopback port, a Redis Cluster of several masters, or a primary and its replica watched by
// a Redis Sentinel (redis-server --sentinel). The test script installs Debian's
// redis-server; when it is missing a test skips locally but fails under CI (CI=true), so a
// broken install step can never turn the Redis tests into silent skips.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/poll"
)

// Server is one redis-server process.
type Server struct {
	Port int
	dir  string
	t    testing.TB
	mu   sync.Mutex
	cmd  *exec.Cmd
	// exited is closed when cmd has exited (its Wait returned).
	exited chan struct{}
	args   []string
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

func binary(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server not found under CI: the test script must install it (apt-get install redis-server)")
		}
		t.Skip("redis-server not installed; run scripts/test.sh, which installs it")
	}
	return p
}

// Start runs a single redis-server on a free port and stops it when the test ends.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	return startWith(t, func(s *Server) []string {
		return append([]string{
			"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", s.dir, "--protected-mode", "no",
		}, extra...)
	})
}

// startWith runs redis-server with the arguments args makes for a fresh port and directory.
// A port another process took between freePort and the bind (or a Cluster node's bus port,
// 10,000 higher, that is taken) makes redis-server exit: it is tried again on another port.
func startWith(t testing.TB, args func(s *Server) []string) *Server {
	t.Helper()
	bin := binary(t)
	s := &Server{dir: t.TempDir(), t: t}
	t.Cleanup(s.Stop)
	var err error
	for range 3 {
		s.Port = freePort(t)
		s.args = args(s)
		if err = s.start(bin); err == nil {
			return s
		}
		s.Stop()
	}
	t.Fatal(err)
	return nil
}

func (s *Server) start(bin string) error {
	cmd := exec.Command(bin, s.args...)
	cmd.Dir = s.dir
	logf, err := os.Create(filepath.Join(s.dir, fmt.Sprintf("redis-%d.log", time.Now().UnixNano())))
	if err != nil {
		return err
	}
	defer logf.Close() // the process has its own descriptor
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	if err := waitPing(s.Addr(), 10*time.Second, exited); err != nil {
		return fmt.Errorf("redis-server on %s did not answer PING (its log: %s): %w", s.Addr(), logf.Name(), err)
	}
	return nil
}

// Stop kills the server; it is safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Kill()
		<-exited
	}
}

// Restart starts the server again on the same port (after Stop), empty.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.start(binary(s.t)); err != nil {
		s.t.Fatal(err)
	}
}

// Do sends one command with the inline protocol and returns the first reply line; enough
// for test set-up (CONFIG SET, FLUSHALL, CLUSTER ...) without depending on a client.
func (s *Server) Do(args ...string) (string, error) { return do(s.Addr(), args...) }

func do(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "-") {
		return "", fmt.Errorf("redis: %s", line[1:])
	}
	if strings.HasPrefix(line, "$") {
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := ioReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return strings.TrimLeft(line, "+:"), nil
}

func ioReadFull(r *bufio.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// waitPing retries PING until the server answers, or until exited is closed (the process
// ended: a port taken, say). Polling is right here: the process gives no other signal that
// it is listening.
func waitPing(addr string, within time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(within)
	var err error
	for time.Now().Before(deadline) {
		var r string
		if r, err = do(addr, "PING"); err == nil && r == "PONG" {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited: %w", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return err
}

// freePort asks the kernel for a free port. Another process could take it before redis
// binds it; startWith then tries another.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Cluster is a Redis Cluster of masters, each with one replica or none.
type Cluster struct {
	Nodes    []*Server // the masters
	Replicas []*Server // Replicas[i] replicates Nodes[i]; empty for a cluster of masters alone
}

// Addrs lists every node's address (masters, then replicas), for redis.addrs.
func (c *Cluster) Addrs() []string {
	var a []string
	for _, n := range append(append([]*Server(nil), c.Nodes...), c.Replicas...) {
		a = append(a, n.Addr())
	}
	return a
}

// StartCluster runs n masters (3 or more), assigns the 16384 slots among them, and waits
// until the cluster reports state ok on every node.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return startCluster(t, n, false)
}

// StartClusterWithReplicas is StartCluster with one replica per master, in sync before it
// returns; a replica takes over when its master fails for the node timeout (2s), unless
// replicaArgs say otherwise (--cluster-replica-no-failover yes).
func StartClusterWithReplicas(t testing.TB, n int, replicaArgs ...string) *Cluster {
	t.Helper()
	return startCluster(t, n, true, replicaArgs...)
}

func startCluster(t testing.TB, n int, replicas bool, replicaArgs ...string) *Cluster {
	t.Helper()
	// A replica's first sync would otherwise wait 5s for more replicas to join it.
	clusterArgs := []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
		"--repl-diskless-sync-delay", "0"}
	c := &Cluster{}
	for i := 0; i < n; i++ {
		c.Nodes = append(c.Nodes, Start(t, clusterArgs...))
		if replicas {
			c.Replicas = append(c.Replicas, Start(t, append(clusterArgs, replicaArgs...)...))
		}
	}
	// Assign slots by hand (CLUSTER ADDSLOTSRANGE, Redis 7) and introduce the nodes: this is
	// what redis-cli --cluster create does, without needing its interactive confirmation.
	per := 16384 / n
	for i, s := range c.Nodes {
		lo, hi := i*per, (i+1)*per-1
		if i == n-1 {
			hi = 16383
		}
		if _, err := s.Do("CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(lo), strconv.Itoa(hi)); err != nil {
			t.Fatalf("cluster addslots on %s: %v", s.Addr(), err)
		}
	}
	all := append(append([]*Server(nil), c.Nodes...), c.Replicas...)
	for _, s := range all[1:] {
		if _, err := s.Do("CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(c.Nodes[0].Port)); err != nil {
			t.Fatalf("cluster meet: %v", err)
		}
	}
	for i, r := range c.Replicas {
		id, err := c.Nodes[i].Do("CLUSTER", "MYID")
		if err != nil {
			t.Fatalf("cluster myid: %v", err)
		}
		// The replica must have heard of its master through the cluster bus first.
		poll.Until(t, 20*time.Second, "replica "+r.Addr()+" to accept CLUSTER REPLICATE", func() bool {
			_, err := r.Do("CLUSTER", "REPLICATE", id)
			return err == nil
		})
		poll.Until(t, 20*time.Second, "replica "+r.Addr()+" in sync", func() bool {
			info, err := r.Do("INFO", "replication")
			return err == nil && strings.Contains(info, "master_link_status:up")
		})
	}
	for _, s := range all {
		poll.Until(t, 20*time.Second, "redis cluster state ok on "+s.Addr(), func() bool {
			info, err := clusterInfo(s.Addr())
			return err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(len(all)))
		})
	}
	return c
}

func clusterInfo(addr string) (string, error) { return do(addr, "CLUSTER", "INFO") }

// Sentinel is a primary with one replica, watched by one Redis Sentinel that fails over to
// the replica when the primary stops answering for a second.
type Sentinel struct {
	Name             string // the master name, for redis.master_name
	Primary, Replica *Server
	Sentinel         *Server
}

// Addrs lists the Sentinel addresses, for redis.addrs.
func (s *Sentinel) Addrs() []string { return []string{s.Sentinel.Addr()} }

// StartSentinel runs the primary, its replica and the Sentinel (quorum 1), and waits until
// the replica is in sync and the Sentinel knows both, so that a failover can happen.
func StartSentinel(t testing.TB, name string) *Sentinel {
	t.Helper()
	primary := Start(t, "--repl-diskless-sync-delay", "0") // the replica's first sync goes at once
	replica := Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port))
	sentinel := startWith(t, func(s *Server) []string {
		conf := filepath.Join(s.dir, "sentinel.conf")
		// Sentinel rewrites its configuration file, so it gets one of its own.
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\nprotected-mode no\ndir %s\n"+
			"sentinel monitor %s 127.0.0.1 %d 1\n"+
			"sentinel down-after-milliseconds %s 1000\n"+
			"sentinel failover-timeout %s 10000\n", s.Port, s.dir, name, primary.Port, name, name)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{conf, "--sentinel"}
	})
	s := &Sentinel{Name: name, Primary: primary, Replica: replica, Sentinel: sentinel}
	poll.Until(t, 20*time.Second, "the replica in sync with the primary", func() bool {
		info, err := replica.Do("INFO", "replication")
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	poll.Until(t, 20*time.Second, "the Sentinel to know the primary and its replica", func() bool {
		info, err := sentinel.Do("INFO", "sentinel")
		return err == nil && strings.Contains(info, "status=ok") && strings.Contains(info, "slaves=1")
	})
	return s
}

// MasterAddr is where the Sentinel says the primary is now (host:port).
func (s *Sentinel) MasterAddr() (string, error) {
	info, err := s.Sentinel.Do("INFO", "sentinel")
	if err != nil {
		return "", err
	}
	_, rest, ok := strings.Cut(info, "address=")
	if !ok {
		return "", fmt.Errorf("sentinel knows no master: %q", info)
	}
	addr, _, _ := strings.Cut(rest, ",")
	return addr, nil
}
