package cache

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Message kinds on the invalidation channel: "<replica>\n<kind>\n<item>\n<item>...".
const (
	msgKeys = "k" // fingerprints overwritten
	msgIDs  = "x" // index ids invalidated or purged
	msgAll  = "a" // everything purged
)

// event is what the listener did, reported to Config.observe so tests can wait for it.
type event struct {
	kind    string // msgKeys, msgIDs, msgAll, "ping", "subscribed"
	replica string // the publisher, for messages
	items   []string
}

// publish tells the other replicas what this one dropped. A failure is logged, not
// returned: the heartbeats of the other replicas stop coming back too when Redis is
// unreachable, so their in-process layers stop serving within the bound anyway.
func (c *Cache) publish(ctx context.Context, kind string, items []string) {
	if err := c.rdb.SPublish(ctx, c.keys.invalChannel(), c.notice(kind, items)).Err(); err != nil {
		c.up(err)
		c.log.Warn("cache: publishing an invalidation failed; other replicas drop in-process entries when their heartbeat lapses", "err", err)
	}
}

// notice is the message that tells the other replicas what this one dropped: the replica,
// the kind, then the items, a line each.
func (c *Cache) notice(kind string, items []string) string {
	var b strings.Builder
	b.WriteString(c.replica)
	b.WriteString("\n")
	b.WriteString(kind)
	for _, it := range items {
		b.WriteString("\n")
		b.WriteString(it)
	}
	return b.String()
}

// subscribe (re)creates the subscription. A subscription is replaced, not trusted to
// reconnect by itself, when it falls silent: a connection to a Redis that vanished from the
// network never reports an error, and the heartbeats prove it silent.
func (c *Cache) subscribe(ctx context.Context) *redis.PubSub {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	if c.sub != nil {
		_ = c.sub.Close()
	}
	if ctx.Err() != nil {
		return c.sub
	}
	c.sub = c.rdb.SSubscribe(ctx, c.keys.invalChannel(), c.keys.pingChannel(c.replica))
	return c.sub
}

// silence is how long the subscription may deliver nothing, its own heartbeats included,
// before listen replaces it.
func (c *Cache) silence() time.Duration { return 4 * c.cfg.CoherenceBound }

// listen applies the other replicas' invalidations and this replica's heartbeats until ctx
// ends.
func (c *Cache) listen(ctx context.Context) {
	defer c.done.Done()
	ping := c.keys.pingChannel(c.replica)
	c.subMu.Lock()
	sub := c.sub
	c.subMu.Unlock()
	for {
		msg, err := sub.ReceiveTimeout(ctx, c.silence())
		if ctx.Err() != nil {
			return
		}
		if isTimeout(err) {
			c.log.Warn("cache: invalidation subscription silent; replacing it", "silence", c.silence())
			sub = c.subscribe(ctx)
			c.observed(event{kind: "replaced"})
			continue
		}
		if err != nil {
			// Receive reconnects on the next call; pause so that a Redis that is down does
			// not turn this loop into a busy one.
			t := time.NewTimer(c.cfg.CoherenceBound / 4)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			// A (re)subscription: whatever was published while unsubscribed is lost.
			c.local.clear()
			select {
			case c.ping <- struct{}{}:
			default:
			}
			c.observed(event{kind: "subscribed"})
		case *redis.Message:
			if m.Channel == ping {
				c.renew(m.Payload)
				c.observed(event{kind: "ping"})
				continue
			}
			ev, ok := parse(m.Payload)
			if !ok || ev.replica == c.replica {
				continue
			}
			switch ev.kind {
			case msgKeys:
				c.local.dropKeys(ev.items)
			case msgIDs:
				c.local.dropIDs(ev.items)
			case msgAll:
				c.local.clear()
			}
			c.observed(ev)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func parse(payload string) (event, bool) {
	parts := strings.Split(payload, "\n")
	if len(parts) < 2 {
		return event{}, false
	}
	return event{replica: parts[0], kind: parts[1], items: parts[2:]}, true
}

func (c *Cache) observed(ev event) {
	if c.cfg.observe != nil {
		c.cfg.observe(ev)
	}
}

// renew extends the lease on a heartbeat this replica sent at the time in payload.
func (c *Cache) renew(payload string) {
	sent, err := strconv.ParseInt(payload, 10, 64)
	if err != nil {
		return
	}
	until := sent + int64(c.cfg.CoherenceBound-leaseSlack)
	cur := c.leaseUntil.Load()
	if cur <= c.now().UnixNano() {
		// The lease lapsed: messages may have been lost without a resubscription being seen.
		c.local.clear()
	}
	for cur < until && !c.leaseUntil.CompareAndSwap(cur, until) {
		cur = c.leaseUntil.Load()
	}
}

// heartbeat publishes this replica's clock to its ping channel every CoherenceBound/4, and
// at once after each (re)subscription.
func (c *Cache) heartbeat(ctx context.Context) {
	defer c.done.Done()
	t := time.NewTicker(c.cfg.CoherenceBound / 4)
	defer t.Stop()
	ch := c.keys.pingChannel(c.replica)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.ping:
		}
		pctx, cancel := c.timeout(ctx)
		err := c.rdb.SPublish(pctx, ch, strconv.FormatInt(c.now().UnixNano(), 10)).Err()
		cancel()
		if ctx.Err() == nil {
			c.up(err)
		}
	}
}
