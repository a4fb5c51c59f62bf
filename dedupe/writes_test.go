package dedupe

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/ghlproxy/ghlproxy/internal/redistest"
	"github.com/ghlproxy/ghlproxy/internal/upstream"
)

// stores runs a test on the embedded fold and on two folds sharing a real Redis.
func stores(t *testing.T, f func(t *testing.T, a, b *Fold)) {
	t.Run("embedded", func(t *testing.T) {
		a, _ := newFold(t, testConfig(), nil)
		f(t, a, a)
	})
	t.Run("redis", func(t *testing.T) {
		rdb := redisClient(t, redistest.Start(t))
		a, _ := newFold(t, testConfig(), rdb)
		b, _ := newFold(t, testConfig(), rdb)
		f(t, a, b)
	})
}

// writeFetch is a write's fetch as the proxy makes it: marked sent, answered 200, and on
// success the entity's tags forgotten everywhere but in the write's own call.
func writeFetch(f *Fold, key string, tags []string, sent *atomic.Int64) func(context.Context, *Attempt) (*upstream.Response, error) {
	return func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		if err := at.MarkSent(); err != nil {
			return nil, err
		}
		sent.Add(1)
		if err := f.Forget(ctx, tags, key); err != nil {
			return nil, err
		}
		return &upstream.Response{Status: 200, Body: []byte(key)}, nil
	}
}

// TestLaterWriteEndsReplay: a write's own invalidation spares its replay; a later write to
// the entity, on another replica, ends it.
func TestLaterWriteEndsReplay(t *testing.T) {
	stores(t, func(t *testing.T, a, b *Fold) {
		tags := []string{"s:contacts/c1"}
		o := Options{Key: &testKey, Write: true, SentByFetch: true, Tags: tags}
		var sent atomic.Int64
		ctx := context.Background()
		if _, out, err := a.Do(ctx, "on", o, writeFetch(a, "on", tags, &sent)); err != nil || out != Leader {
			t.Fatalf("first write: %v %v", out, err)
		}
		if _, out, _ := a.Do(ctx, "on", o, writeFetch(a, "on", tags, &sent)); out != Replay {
			t.Fatalf("a plain retry: %v, want a replay", out)
		}
		if _, out, err := b.Do(ctx, "off", o, writeFetch(b, "off", tags, &sent)); err != nil || out != Leader {
			t.Fatalf("the later write: %v %v", out, err)
		}
		if _, out, err := a.Do(ctx, "on", o, writeFetch(a, "on", tags, &sent)); err != nil || out != Leader {
			t.Fatalf("the first write again after the later one: %v %v, want it sent", out, err)
		}
		if n := sent.Load(); n != 3 {
			t.Fatalf("%d writes sent, want 3", n)
		}
	})
}

// TestQueuedWriteIsNotSpoiled: a Forget reaching a write that is still queued (not sent)
// leaves its replay alone — it goes upstream after the write that forgot; one reaching a
// write already sent spoils it, since their order at GHL is unknown.
func TestQueuedWriteIsNotSpoiled(t *testing.T) {
	for _, c := range []struct {
		name      string
		sentFirst bool
		replayed  bool
	}{{"queued", false, true}, {"sent", true, false}} {
		t.Run(c.name, func(t *testing.T) {
			stores(t, func(t *testing.T, a, b *Fold) {
				tags := []string{"s:contacts/c1"}
				o := Options{Key: &testKey, Write: true, SentByFetch: true, Tags: tags}
				reached, hold := make(chan struct{}), make(chan struct{})
				fetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
					if c.sentFirst {
						if err := at.MarkSent(); err != nil {
							return nil, err
						}
					}
					close(reached)
					<-hold
					if err := at.MarkSent(); err != nil {
						return nil, err
					}
					return &upstream.Response{Status: 200}, nil
				}
				done := goDo(context.Background(), a, "w", o, fetch)
				<-reached
				if err := b.Forget(context.Background(), tags, "other"); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "the forget to reach the first replica", func() bool { return a == b || a.forgets.Load() > 0 })
				close(hold)
				if r := <-done; r.err != nil || r.out != Leader {
					t.Fatalf("the write: %v %v", r.out, r.err)
				}
				_, out, _ := a.Do(context.Background(), "w", o, func(context.Context, *Attempt) (*upstream.Response, error) {
					return &upstream.Response{Status: 200}, nil
				})
				if got := out == Replay; got != c.replayed {
					t.Fatalf("its retry: %v; replayed %v, want %v", out, got, c.replayed)
				}
			})
		})
	}
}

// TestAbandonedCallIsTakenOver: the last caller of a call still waiting to send leaves:
// the call sends nothing, and a waiter of the same key on another replica leads it at once.
func TestAbandonedCallIsTakenOver(t *testing.T) {
	rdb := redisClient(t, redistest.Start(t))
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), rdb)
	o := Options{Key: &testKey, Write: true, SentByFetch: true}
	queued := make(chan struct{})
	markErr := make(chan error, 1)
	aFetch := func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		close(queued)
		<-ctx.Done() // abandoned: the fetch's context ends
		markErr <- at.MarkSent()
		return nil, ctx.Err()
	}
	ctx, leave := context.WithCancel(context.Background())
	first := goDo(ctx, a, "k", o, aFetch)
	<-queued
	var bSent atomic.Int64
	second := goDo(context.Background(), b, "k", o, func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		if err := at.MarkSent(); err != nil {
			return nil, err
		}
		bSent.Add(1)
		return &upstream.Response{Status: 201}, nil
	})
	waitFor(t, "the other replica to wait", func() bool { return inFlight(b, "k") })
	leave()
	if r := <-first; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("caller who left: %v", r.err)
	}
	r := <-second
	if r.err != nil || r.out != Leader || r.resp.Status != 201 || bSent.Load() != 1 {
		t.Fatalf("waiter on the other replica: %v %v (sent %d); want it to lead once", r.out, r.err, bSent.Load())
	}
	if err := <-markErr; !errors.Is(err, errAbandoned) {
		t.Fatalf("MarkSent in the abandoned fetch: %v, want errAbandoned", err)
	}
}

// TestAbandonedCallIsNotJoined: a caller arriving while an abandoned call winds down
// starts a call of its own instead of getting the abandoned one's error.
func TestAbandonedCallIsNotJoined(t *testing.T) {
	a, _ := newFold(t, testConfig(), nil)
	queued, hold := make(chan struct{}), make(chan struct{})
	ctx, leave := context.WithCancel(context.Background())
	first := goDo(ctx, a, "k", Options{}, func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
		close(queued)
		<-hold
		return nil, ctx.Err()
	})
	<-queued
	leave()
	<-first
	r, out, err := a.Do(context.Background(), "k", Options{}, func(context.Context, *Attempt) (*upstream.Response, error) {
		return &upstream.Response{Status: 200}, nil
	})
	close(hold)
	if err != nil || out != Leader || r.Status != 200 {
		t.Fatalf("a caller after the abandonment: %v %v", out, err)
	}
}

// TestTombstoneBeforeACallIsAdopted: a read's replay forgotten, then the same read again:
// its answer is replayable — the tombstone concerns the calls before it.
func TestTombstoneBeforeACallIsAdopted(t *testing.T) {
	s := redistest.Start(t)
	rdb := redisClient(t, s)
	a, _ := newFold(t, testConfig(), rdb)
	b, _ := newFold(t, testConfig(), rdb)
	o := Options{Key: &testKey, Tags: []string{"s:contacts/c1"}}
	fetch := func(context.Context, *Attempt) (*upstream.Response, error) {
		return &upstream.Response{Status: 200}, nil
	}
	ctx := context.Background()
	a.Do(ctx, "r", o, fetch)
	if err := b.Forget(ctx, o.Tags, ""); err != nil {
		t.Fatal(err)
	}
	for _, f := range []*Fold{a, b} {
		waitFor(t, "the replays to be dropped", func() bool { return !localReplay(f, "r") })
	}
	if got, _ := s.Do("GET", "ghlproxy:{fold:r}:result"); got != "X" {
		t.Fatalf("record after the forget: %q, want a tombstone", got)
	}
	if _, out, _ := b.Do(ctx, "r", o, fetch); out != Leader {
		t.Fatalf("the read after the forget: %v", out)
	}
	if _, out, _ := a.Do(ctx, "r", o, fetch); out != Replay {
		t.Fatalf("the read again: %v, want its answer replayed", out)
	}
}

// TestRetriedForgetSparesItsWrite: a write's Forget that Redis did not confirm is retried
// later; the retry spares the write, as the first attempt did.
func TestRetriedForgetSparesItsWrite(t *testing.T) {
	rdb := redisClient(t, redistest.Start(t))
	a, _ := newFold(t, testConfig(), rdb)
	tags := []string{"s:contacts/c1"}
	o := Options{Key: &testKey, Write: true, SentByFetch: true, Tags: tags}
	var sent atomic.Int64
	if _, _, err := a.Do(context.Background(), "w", o, writeFetch(a, "w", tags, &sent)); err != nil {
		t.Fatal(err)
	}
	// As if the write's own Forget had failed: it is retried.
	a.retryForget(tags, "w")
	waitFor(t, "the retry to be confirmed", func() bool { return a.unforgot.Len() == 0 })
	a.mu.Lock()
	left := len(a.unforgotExcept)
	a.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d excepts left after the retry", left)
	}
	if _, out, _ := a.Do(context.Background(), "w", o, writeFetch(a, "w", tags, &sent)); out != Replay {
		t.Fatalf("retry of the write after its Forget was retried: %v, want a replay", out)
	}
}

// TestMarkedButNotSentIsNotUnconfirmed: a write marked sent whose error says it never left
// (upstream.ErrNotSent: a merged call's write that found no token when sent alone) leaves
// nothing behind, so its retry is sent; an error without it leaves "may have been applied".
func TestMarkedButNotSentIsNotUnconfirmed(t *testing.T) {
	stores(t, func(t *testing.T, a, b *Fold) {
		for _, c := range []struct {
			key         string
			err         error
			unconfirmed bool
		}{{"not-sent", fmt.Errorf("%w: no token", upstream.ErrNotSent), false}, {"broken", errors.New("connection reset"), true}} {
			o := Options{Key: &testKey, Write: true, SentByFetch: true}
			_, _, err := a.Do(context.Background(), c.key, o, func(ctx context.Context, at *Attempt) (*upstream.Response, error) {
				if err := at.MarkSent(); err != nil {
					return nil, err
				}
				return nil, c.err
			})
			if !errors.Is(err, c.err) {
				t.Fatalf("%s: %v", c.key, err)
			}
			_, _, err = b.Do(context.Background(), c.key, o, func(context.Context, *Attempt) (*upstream.Response, error) {
				return &upstream.Response{Status: 201}, nil
			})
			var unconf *UnconfirmedError
			if got := errors.As(err, &unconf); got != c.unconfirmed {
				t.Fatalf("%s: the retry got %v; unconfirmed %v, want %v", c.key, err, got, c.unconfirmed)
			}
		}
	})
}
