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
	every := min(max(within/500, time.Millisecond), 20*time.Millisecond)
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(every)
	}
}
