package redistest

import (
	"strings"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/poll"
)

func TestStartAndRestart(t *testing.T) {
	s := Start(t)
	if _, err := s.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Do("GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET k = %q, %v", v, err)
	}
	s.Stop()
	if _, err := s.Do("PING"); err == nil {
		t.Fatal("PING answered after Stop")
	}
	s.Restart()
	if v, err := s.Do("GET", "k"); err != nil || v != "" {
		t.Fatalf("after restart GET k = %q, %v; want empty", v, err)
	}
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	if len(c.Addrs()) != 3 {
		t.Fatalf("addrs = %v", c.Addrs())
	}
	info, err := clusterInfo(c.Nodes[2].Addr())
	if err != nil {
		t.Fatal(err)
	}
	if want := "cluster_slots_assigned:16384"; !strings.Contains(info, want) {
		t.Fatalf("cluster info lacks %q: %s", want, info)
	}
}

func TestSentinelFailover(t *testing.T) {
	s := StartSentinel(t, "m")
	if addr, err := s.MasterAddr(); err != nil || addr != s.Primary.Addr() {
		t.Fatalf("master before failover = %q, %v; want %s", addr, err, s.Primary.Addr())
	}
	s.Primary.Stop()
	poll.Until(t, 30*time.Second, "the Sentinel to promote the replica", func() bool {
		addr, err := s.MasterAddr()
		return err == nil && addr == s.Replica.Addr()
	})
	if info, err := s.Replica.Do("INFO", "replication"); err != nil || !strings.Contains(info, "role:master") {
		t.Fatalf("replica after failover: %q, %v", info, err)
	}
}

func TestClusterFailover(t *testing.T) {
	c := StartClusterWithReplicas(t, 3)
	if len(c.Addrs()) != 6 {
		t.Fatalf("addrs = %v", c.Addrs())
	}
	c.Nodes[0].Stop()
	poll.Until(t, 30*time.Second, "the replica to take over", func() bool {
		info, err := c.Replicas[0].Do("INFO", "replication")
		if err != nil || !strings.Contains(info, "role:master") {
			return false
		}
		info, err = clusterInfo(c.Nodes[1].Addr())
		return err == nil && strings.Contains(info, "cluster_state:ok")
	})
}
