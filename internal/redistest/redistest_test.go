package redistest

import (
	"strings"
	"testing"
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
