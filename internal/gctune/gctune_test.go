package gctune

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/ghlproxy/ghlproxy/internal/poll"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, tt := range []struct {
		floor, live, roots uint64
		want               int
	}{
		{64 * mib, 8 * mib, 0, 700},       // goal 64 MiB: 8 + 8·7
		{64 * mib, 8 * mib, 8 * mib, 350}, // 8 + 16·3.5: the roots count towards the goal
		{64 * mib, 32 * mib, 0, 100},      // twice the live heap is the floor
		{64 * mib, 28 * mib, 8 * mib, 100},
		{64 * mib, 100 * mib, 0, 100},   // above the floor: GOGC=100 as usual
		{64 * mib, 1024, 0, maxPercent}, // a process that just started
		{64 * mib, 0, 0, 100},           // nothing measured yet
	} {
		got := Percent(tt.floor, tt.live, tt.roots)
		if got != tt.want {
			t.Errorf("Percent(%d MiB, %d B, %d B) = %d, want %d", tt.floor/mib, tt.live, tt.roots, got, tt.want)
		}
		if got > 100 && got < maxPercent {
			// The goal the runtime computes from it is the floor.
			goal := float64(tt.live) + float64(tt.live+tt.roots)*float64(got)/100
			if d := goal - float64(tt.floor); d > mib || d < -mib {
				t.Errorf("Percent(%d MiB, %d B, %d B): goal %.1f MiB", tt.floor/mib, tt.live, tt.roots, goal/mib)
			}
		}
	}
}

// gcPercent reads the runtime's GOGC without changing it.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// The tuner follows the live heap collection by collection: above 100 while the live heap is
// small, back to 100 once the live heap alone reaches half the floor, and the GOGC from
// before Start after Stop.
func TestTunerFollowsLiveHeap(t *testing.T) {
	before := gcPercent()
	const floor = 256 << 20
	tu := Start(floor)
	defer tu.Stop()
	runtime.GC()
	poll.Until(t, 5*time.Second, "GOGC raised for a small live heap", func() bool {
		runtime.GC()
		return tu.GOGC() > 100
	})
	if got := gcPercent(); got != tu.GOGC() {
		t.Fatalf("runtime GOGC %d, tuner says %d", got, tu.GOGC())
	}

	live := make([][]byte, 0, 200)
	for range 200 { // 200 MiB held live: more than half the floor
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = 1
		}
		live = append(live, b)
	}
	poll.Until(t, 5*time.Second, "GOGC back to 100 for a large live heap", func() bool {
		runtime.GC()
		return tu.GOGC() == 100
	})
	runtime.KeepAlive(live)

	tu.Stop()
	if got := gcPercent(); got != before {
		t.Fatalf("after Stop GOGC is %d, want %d as before Start", got, before)
	}
}

func TestZeroFloorDoesNothing(t *testing.T) {
	before := gcPercent()
	tu := Start(0)
	runtime.GC()
	if got := gcPercent(); got != before {
		t.Fatalf("GOGC %d after Start(0), want %d", got, before)
	}
	tu.Stop()
}
