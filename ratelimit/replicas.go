package ratelimit

import (
	"context"
	"time"
)

// The replica registry: every replica counts the others, so that each knows its share of
// the budget if Redis goes away.

// register adds or refreshes this replica in the replica set and reads the count.
func (l *Limiter) register() error {
	ctx, cancel := context.WithTimeout(context.Background(), l.probeTimeout())
	defer cancel()
	n, err := registerScript.Run(ctx, l.rdb, []string{replicasKey(l.cfg.Prefix)},
		l.cfg.ReplicaID, l.cfg.ReplicaTTL.Milliseconds()).Int64()
	if err != nil {
		return err
	}
	l.replicas.Store(max(1, n))
	return nil
}

// replicaRefresh is how often a healthy replica re-reads the replica count (and refreshes its
// own registration, in the same script): the fallback share is only right if every replica
// knows the count when Redis goes away, and a replica that started first must learn of the
// others within a second, not a third of the TTL (5 s), or it falls back with the whole
// budget. One small script per replica per second.
const replicaRefresh = time.Second

func (l *Limiter) beat() time.Duration { return min(replicaRefresh, l.cfg.ReplicaTTL/3) }

// maintain runs until Close: the replica heartbeat, the probe that closes the breaker when
// Redis answers again, and forgetting idle scopes.
func (l *Limiter) maintain() {
	defer l.wg.Done()
	tick := time.NewTicker(l.cfg.ProbeInterval)
	defer tick.Stop()
	lastBeat, lastPrune := time.Now(), time.Now()
	for {
		select {
		case <-l.done:
			return
		case <-tick.C:
		}
		if l.rdb != nil {
			switch {
			case l.br.isOpen():
				if l.register() == nil && l.handBack() == nil {
					l.br.reset()
					l.leaveDegraded()
					lastBeat = time.Now()
				}
			case time.Since(lastBeat) >= l.beat():
				if err := l.register(); err != nil {
					l.redisFailed(err)
				} else {
					lastBeat = time.Now()
				}
			}
		}
		if time.Since(lastPrune) >= time.Minute {
			l.prune(time.Hour)
			lastPrune = time.Now()
		}
	}
}
