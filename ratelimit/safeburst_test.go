package ratelimit

import (
	"strings"
	"testing"
	"time"
)

func TestSafeBurst(t *testing.T) {
	tests := []struct {
		rate int
		per  time.Duration
		want int
	}{
		{280, time.Minute, 50},     // 97 - 46.7 = 50.3
		{400, time.Minute, 30},     // 97 - 66.7 = 30.3
		{6, time.Second, 37},       // 97 - 60
		{10, time.Second, 1},       // the rate alone fills GHL's window: at least 1
		{50, time.Second, 1},       // ditto
		{1000, time.Hour, 50},      // a slow rate: the cap
		{280, 0, 1},                // an invalid per does not divide by zero
		{100, 10 * time.Second, 1}, // exactly GHL's limit: nothing left for a burst
	}
	for _, tt := range tests {
		got := SafeBurst(tt.rate, tt.per)
		if got != tt.want {
			t.Errorf("SafeBurst(%d, %s) = %d, want %d", tt.rate, tt.per, got, tt.want)
		}
		// The promise: from a cold start, a full bucket plus the refill stays within 97% of
		// GHL's window, whenever the rate itself leaves room for a burst.
		if tt.per > 0 {
			if r := WindowRefill(tt.rate, tt.per); r < 96 && float64(got)+r > GHLWindowLimit*learnMargin {
				t.Errorf("SafeBurst(%d, %s) = %d: %.1f in one window", tt.rate, tt.per, got, float64(got)+r)
			}
		}
	}
	// Config's zero burst takes the same value.
	c, err := Config{Rate: 400, Per: time.Minute}.withDefaults()
	if err != nil || c.Burst != 30 {
		t.Errorf("withDefaults burst = %d, %v; want 30", c.Burst, err)
	}
}

// TestScriptConstants: the Lua prelude is written with gcra.go's constants; none is left
// as a placeholder.
func TestScriptConstants(t *testing.T) {
	if strings.Contains(scriptPrelude, "$") {
		t.Fatalf("a constant left unwritten in the prelude:\n%s", scriptPrelude)
	}
	for _, want := range []string{"lmax * 0.97", "math.max(5, math.floor(lmax / 10))"} {
		if !strings.Contains(scriptPrelude, want) {
			t.Errorf("prelude lacks %q", want)
		}
	}
}
