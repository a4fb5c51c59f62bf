package cache

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/redistest"
)

// ~100-byte JSON body, as in PERFORMANCE.md's read mix.
var benchBody = `{"contact":{"id":"ve9EPM428h8vShlRW1KT","email":"a@example.com","name":"Alice","tags":["x"]}}`

// BenchmarkGetLocal measures a hit in the in-process layer, against a sync.Map load (the
// floor PERFORMANCE.md's bare net/http server pays) in the same run.
func BenchmarkGetLocal(b *testing.B) {
	alice := credOf("alice")
	keys := make([]string, 800)
	for i := range keys {
		keys[i] = fp("bench" + string(rune(i)))
	}
	run := func(b *testing.B, c *replica) {
		for _, k := range keys {
			mustSet(b, c, k, alice, answer(benchBody, time.Now()), Policy{TTL: time.Hour, Tags: []string{"s:contacts"}})
		}
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if e, _ := c.Get(ctx, keys[i%len(keys)], alice); e == nil {
					panic("miss")
				}
				i++
			}
		})
	}
	b.Run("embedded", func(b *testing.B) { run(b, newReplica(b, nil, Config{})) })
	b.Run("redis", func(b *testing.B) {
		srv := redistest.Start(b)
		run(b, newReplica(b, newClient(b, srv.Addr()), Config{}))
	})
	b.Run("syncmap", func(b *testing.B) {
		var m sync.Map
		for _, k := range keys {
			m.Store(k, &Entry{Resp: answer(benchBody, time.Now())})
		}
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, ok := m.Load(keys[i%len(keys)]); !ok {
					panic("miss")
				}
				i++
			}
		})
	})
}

// BenchmarkGetRedis measures a hit that has to go to Redis, against a bare go-redis GET of
// the same value. The in-process copy is dropped before each Get inside the timed loop
// (StopTimer would cost more than the drop: it reads memory statistics).
func BenchmarkGetRedis(b *testing.B) {
	srv := redistest.Start(b)
	rdb := newClient(b, srv.Addr())
	c := newReplica(b, rdb, Config{})
	alice := credOf("alice")
	k := fp("bench redis")
	mustSet(b, c, k, alice, answer(benchBody, time.Now()), Policy{TTL: time.Hour, Tags: []string{"s:contacts"}, Route: "/contacts/{contactId}"})
	ctx := context.Background()
	b.Run("cache", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.local.c.Invalidate(k)
			if e, err := c.Get(ctx, k, alice); e == nil || err != nil {
				b.Fatal("miss", err)
			}
		}
	})
	b.Run("goredis-get", func(b *testing.B) {
		ek := c.keys.entry(k)
		b.ReportAllocs()
		for b.Loop() {
			if err := rdb.Get(ctx, ek).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSet measures storing an answer: seal, SET, one index script per tag, route and
// credential.
func BenchmarkSet(b *testing.B) {
	alice := credOf("alice")
	resp := answer(strings.Repeat(benchBody, 1), time.Now())
	p := Policy{TTL: time.Hour, Tags: []string{"s:contact:1", "s:contacts"}, Route: "/contacts/{contactId}"}
	ctx := context.Background()
	run := func(b *testing.B, c *replica) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := c.Set(ctx, fp("set"+string(rune(i%1000))), alice, resp, p); err != nil {
				b.Fatal(err)
			}
			i++
		}
	}
	b.Run("embedded", func(b *testing.B) { run(b, newReplica(b, nil, Config{})) })
	b.Run("redis", func(b *testing.B) {
		srv := redistest.Start(b)
		run(b, newReplica(b, newClient(b, srv.Addr()), Config{}))
	})
}
