// Package gctune keeps the garbage collector's heap goal at or above a floor.
//
// Why: a sidecar's live heap is small (a few MiB beyond its in-process cache) while every
// request allocates (net/http's request, header maps, buffers). With the default GOGC=100
// the heap goal is twice the live heap, so a 5 MiB live heap is collected every ~6 MiB of
// allocation: measured on the cache-hit benchmark, 73 collections in 5 s, each running a
// mark phase on one of the two cores for 6–12 ms, which cost about a tenth of the hit
// throughput. Raising GOGC for good would make a large live heap (a full cache) grow by the
// same factor; a floor only spends memory while the live heap is small.
//
// How: after every collection, GOGC is set so that the next goal is the larger of the
// floor and GOGC=100's goal. The runtime's goal is live + (live + stacks + globals)·GOGC/100,
// so GOGC = max(100, 100·(floor − live)/(live + stacks + globals)), capped: leaving stacks
// and globals out would overshoot the floor by them times the ratio (a soak run with 300
// connections saw a 75 MiB goal for a 32 MiB floor).
// A GOMEMLIMIT, when set, still bounds the heap: the runtime collects earlier as it nears
// the limit whatever GOGC says.
package gctune

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// maxPercent caps GOGC: with a live heap of a few hundred KiB (a process that has just
// started) the floor alone would ask for tens of thousands.
const maxPercent = 2000

// Percent is the GOGC that puts the heap goal at the floor, or 100 when the default goal
// is already above it. roots is what the collector scans besides the heap (goroutine
// stacks and globals), which GOGC applies to as well.
func Percent(floor, live, roots uint64) int {
	if live == 0 || floor <= 2*live+roots {
		return 100
	}
	p := 100 * float64(floor-live) / float64(live+roots)
	return int(min(p, maxPercent))
}

// Tuner re-tunes GOGC after every collection until Stop.
type Tuner struct {
	floor   uint64
	mu      sync.Mutex
	stopped bool
	percent int
	initial int // GOGC before Start, restored by Stop
	sample  []metrics.Sample
}

// Start sets GOGC for floor now and after each collection. floor 0 starts nothing.
func Start(floor uint64) *Tuner {
	t := &Tuner{floor: floor, sample: []metrics.Sample{
		{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"},
	}}
	if floor == 0 {
		t.stopped = true
		return t
	}
	t.initial = debug.SetGCPercent(100)
	t.percent = 100
	t.tune()
	t.arm()
	return t
}

// cycle is a sentinel whose finalizer runs once per collection that finds it unreachable.
type cycle struct{ t *Tuner }

func (t *Tuner) arm() {
	runtime.SetFinalizer(&cycle{t}, func(c *cycle) {
		if c.t.tune() {
			c.t.arm()
		}
	})
}

// tune sets GOGC for the live heap the last collection left; false once stopped.
func (t *Tuner) tune() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	metrics.Read(t.sample)
	live := t.sample[0].Value.Uint64()
	roots := t.sample[1].Value.Uint64() + t.sample[2].Value.Uint64()
	if p := Percent(t.floor, live, roots); p != t.percent {
		debug.SetGCPercent(p)
		t.percent = p
	}
	return true
}

// GOGC is the value the tuner set last.
func (t *Tuner) GOGC() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.percent
}

// Stop ends the tuning and restores the GOGC from before Start.
func (t *Tuner) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.stopped = true
	debug.SetGCPercent(t.initial)
}
