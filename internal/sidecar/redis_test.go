package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/ghlproxy/ghlproxy/config"
	"github.com/ghlproxy/ghlproxy/internal/luapipe"
	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// redis.addrs naming one node of a Cluster builds a Cluster client: it finds the other
// masters, keys of every slot work, and the stages do not take it for a single Redis.
func TestOneClusterNodeAddress(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rdb, err := newRedis(config.Redis{Addrs: cl.Addrs()[:1]}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	if _, ok := rdb.(*redis.ClusterClient); !ok || luapipe.OneScript(rdb) {
		t.Fatalf("client %T, OneScript %v", rdb, luapipe.OneScript(rdb))
	}
	ctx := context.Background()
	for i := range 20 {
		k := fmt.Sprintf("k%d", i)
		if err := rdb.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
		if v, err := rdb.Get(ctx, k).Int(); err != nil || v != i {
			t.Fatalf("GET %s: %v %v", k, v, err)
		}
	}
}

// A single Redis listed in redis.addrs (its key says Cluster nodes, redis.url is for one
// server) still works as one: a plain client, scripts over several hash tags allowed.
func TestOneSingleRedisAddress(t *testing.T) {
	srv := redistest.Start(t)
	rdb, err := newRedis(config.Redis{Addrs: []string{srv.Addr()}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	if _, ok := rdb.(*redis.Client); !ok || !luapipe.OneScript(rdb) {
		t.Fatalf("client %T, OneScript %v", rdb, luapipe.OneScript(rdb))
	}
	if err := rdb.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
}
