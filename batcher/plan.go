package batcher

import (
	"time"
)

// Planning: the queue, in arrival order, into upstream calls and the head that asks.

// plan splits the queue (in arrival order) into upstream calls. A write merges into its
// entity's latest call when both may merge and share a MergeKey. A bulk write joins the
// earliest bulk call of its Key that holds fewer than Max writes, none of its entity, and
// comes after its entity's latest call (so it never overtakes an earlier write of its
// entity). Otherwise it starts a call. Caller holds b.mu.
func (b *Batcher) plan(queue []*pending) [][]*pending {
	var calls [][]*pending
	last := map[string]int{}
	var bulks map[string][]int // Bulk.Key -> its calls
	for _, p := range queue {
		e := p.w.Entity
		i, seen := last[e]
		if p.fields != nil && seen {
			if first := calls[i][0]; first.fields != nil && first.w.Entity == e && first.w.MergeKey == p.w.MergeKey {
				calls[i] = append(calls[i], p)
				continue
			}
		}
		if b.bulkable(p) {
			joined := false
			for _, j := range bulks[p.w.Bulk.Key] {
				if len(calls[j]) < b.cfg.Max && (!seen || i < j) {
					calls[j] = append(calls[j], p)
					last[e], joined = j, true
					break
				}
			}
			if joined {
				continue
			}
			if bulks == nil {
				bulks = make(map[string][]int)
			}
			bulks[p.w.Bulk.Key] = append(bulks[p.w.Bulk.Key], len(calls))
		}
		calls = append(calls, []*pending{p})
		if e != "" {
			last[e] = len(calls) - 1
		}
	}
	return calls
}

// ready is the planned calls that may go out now, in order, and when the first held one is
// released (zero when none is held). With Coalesce, a call of mergeable writes whose first
// write has waited less than Coalesce is held, and so is every later call of its entities,
// so that no write overtakes an earlier one of its entity. Caller holds b.mu.
func (b *Batcher) ready(planned [][]*pending, now time.Time) ([][]*pending, time.Time) {
	if b.cfg.Coalesce <= 0 || b.closed {
		return planned, time.Time{}
	}
	var held map[string]bool
	var until time.Time
	out := make([][]*pending, 0, len(planned))
	for _, ws := range planned {
		first := ws[0]
		release := first.at.Add(b.cfg.Coalesce)
		hold := first.fields != nil && now.Before(release)
		if hold && (until.IsZero() || release.Before(until)) {
			until = release
		}
		for _, p := range ws {
			hold = hold || held[p.w.Entity]
		}
		if !hold {
			out = append(out, ws)
			continue
		}
		if held == nil {
			held = make(map[string]bool)
		}
		for _, p := range ws {
			if p.w.Entity != "" {
				held[p.w.Entity] = true
			}
		}
	}
	return out, until
}

// head is the calls the next group asks tokens for: the first Max planned calls, but not a
// trailing bulk call that still has room and time to fill (its oldest write has waited less
// than Linger): it would go out part-full now and the next writes of its Key would need a
// call of their own. Still a prefix of planned, so cutting it keeps every entity's order.
// Caller holds b.mu.
func (b *Batcher) head(planned [][]*pending, now time.Time) [][]*pending {
	head := planned[:min(len(planned), b.cfg.Max)]
	for len(head) > 1 && !b.closed {
		last := head[len(head)-1]
		if len(last) >= b.cfg.Max || !b.bulkable(last[0]) || !now.Before(last[0].at.Add(b.cfg.Linger)) {
			break
		}
		head = head[:len(head)-1]
	}
	return head
}

// bulkable says p may share a bulk call. Merging writes never do: a call is one or the other.
func (b *Batcher) bulkable(p *pending) bool {
	return b.cfg.Bulk && p.w.Bulk != nil && p.w.Entity != "" && p.fields == nil
}

// holds says whether the queue holds a write of entity e. Caller holds b.mu.
func (s *scope) holds(e string) bool {
	for _, p := range s.queue {
		if p.w.Entity == e {
			return true
		}
	}
	return false
}
