// Package promtest reads Prometheus metrics in tests: what testutil.ToFloat64 does for
// counters and gauges, for the sample count of one histogram series.
package promtest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Samples is how many observations histogram series o has taken.
func Samples(t testing.TB, o prometheus.Observer) uint64 {
	t.Helper()
	h, ok := o.(prometheus.Histogram)
	if !ok {
		t.Fatalf("promtest: %T is not a histogram series", o)
	}
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}
