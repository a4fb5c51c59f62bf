package fakeghl

import (
	"slices"
	"testing"
	"time"
)

func TestLatencyIsLongTailed(t *testing.T) {
	const n = 20000
	ds := make([]time.Duration, n)
	for i := range ds {
		ds[i] = latency(1, uint64(i), 150*time.Millisecond)
	}
	slices.Sort(ds)
	p50, p99 := ds[n/2], ds[n*99/100]
	if p50 < 140*time.Millisecond || p50 > 160*time.Millisecond {
		t.Errorf("p50 %v, want ~150ms", p50)
	}
	if r := float64(p99) / float64(p50); r < 3 || r > 4 {
		t.Errorf("p99/p50 = %.2f, want 3..4", r)
	}
	if latency(1, 5, 150*time.Millisecond) != latency(1, 5, 150*time.Millisecond) {
		t.Error("latency not reproducible")
	}
}
