package pending

import (
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestSet(t *testing.T) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
	s := New(g)
	t0 := time.Unix(1_700_000_000, 0)
	if s.Any([]string{"a"}) || s.Len() != 0 {
		t.Fatal("a new set is not empty")
	}
	s.Add(t0.Add(time.Minute), "a", "b")
	s.Add(t0.Add(time.Second), "c")
	if !s.Any([]string{"x", "b"}) || s.Any([]string{"x"}) || s.Len() != 3 {
		t.Fatalf("after adding a, b, c: Any/Len wrong (len %d)", s.Len())
	}

	// Past its time, c is given up; a and b are handed out.
	items := s.Due(t0.Add(2 * time.Second))
	keys := Keys(items)
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"a", "b"}) || s.Any([]string{"c"}) {
		t.Fatalf("Due = %v (c pending: %v), want [a b] and c given up", keys, s.Any([]string{"c"}))
	}
	// b fails again while its retry runs: confirming the retry must not drop the new failure.
	s.Add(t0.Add(2*time.Minute), "b")
	s.Done(items...)
	if s.Any([]string{"a"}) || !s.Any([]string{"b"}) || s.Len() != 1 {
		t.Fatalf("after Done: a pending %v, b pending %v, len %d; want only b", s.Any([]string{"a"}), s.Any([]string{"b"}), s.Len())
	}
	var m dto.Metric
	if err := g.Write(&m); err != nil || m.GetGauge().GetValue() != 1 {
		t.Fatalf("gauge = %v (%v), want 1", m.GetGauge().GetValue(), err)
	}
}

// Loop runs on a wake, runs again by itself while work is left, stops retrying once none
// is, and returns when stopped; Wake never blocks, however many wakes are pending.
func TestLoop(t *testing.T) {
	stop, wake := make(chan struct{}), make(chan struct{}, 1)
	runs := make(chan int, 10)
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		Loop(stop, wake, time.Millisecond, func() bool {
			n++
			runs <- n
			return n < 3 // work left after the first two runs
		})
	}()
	Wake(wake)
	Wake(wake) // a wake already pending covers this one
	for want := 1; want <= 3; want++ {
		if got := <-runs; got != want {
			t.Fatalf("run %d, want %d", got, want)
		}
	}
	close(stop)
	<-done
	if len(runs) > 1 { // at most the second Wake's run, if it came after the first
		t.Fatalf("%d more runs after the work was done", len(runs))
	}
}
