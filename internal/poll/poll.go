// Package poll waits in tests for a condition another goroutine or process makes true, up
// to a deadline. It is for state that gives no signal to wait on (a counter, an HTTP status
// endpoint); where a channel or a hook exists, tests wait on that instead.
package poll

import (
	"testing"
	"time"
)

// Until checks cond until it holds, failing the test with what after within.
func Until(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if _, ok := Within(within, cond); !ok {
		t.Fatalf("timed out after %s waiting for %s", within, what)
	}
}

// Within checks cond until it holds or within has passed, and reports how long that took
// and whether cond held: for tests that report the time, or decide what a timeout means.
func Within(within time.Duration, cond func() bool) (time.Duration, bool) {
	every := min(max(within/500, time.Millisecond), 20*time.Millisecond)
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			return time.Since(start), false
		}
		time.Sleep(every)
	}
	return time.Since(start), true
}
