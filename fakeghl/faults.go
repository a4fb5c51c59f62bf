package fakeghl

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// OutageMode is how the stand-in fails during an outage.
type OutageMode string

const (
	// Outage503 answers every request 503 in GHL's error shape.
	Outage503 OutageMode = "503"
	// OutageReset resets every connection without an answer, as a dead load balancer does.
	OutageReset OutageMode = "reset"
)

// Faults are the failures switched on at run time. The zero value is a healthy GHL.
type Faults struct {
	// ErrorRate is the share (0..1) of admitted requests answered ErrorStatus. Which
	// requests fail depends only on Config.Seed and the request's arrival number, so a
	// sequential test sees the same failures on every run.
	ErrorRate   float64 `json:"errorRate"`
	ErrorStatus int     `json:"errorStatus"` // default 500
	// ResetRate is the share (0..1) of admitted requests whose connection is reset (TCP
	// RST) before any answer.
	ResetRate float64 `json:"resetRate"`
	// ExtraDelay is added to every answer's latency: a slow GHL.
	ExtraDelay Duration `json:"extraDelay"`
	// OutageUntil: until then every request fails the OutageMode way without reaching
	// the rate limiter.
	OutageUntil time.Time  `json:"outageUntil"`
	OutageMode  OutageMode `json:"outageMode"`
	// Latency is the median latency (see Config.Latency).
	Latency Duration `json:"latency"`

	// WebhookDelay holds each webhook delivery back this long after its change.
	WebhookDelay Duration `json:"webhookDelay"`
	// WebhookDuplicateRate is the share (0..1) of events delivered twice, the same body
	// (and webhookId) both times, as GHL does when it retries.
	WebhookDuplicateRate float64 `json:"webhookDuplicateRate"`
	// WebhookDropRate is the share (0..1) of events never delivered.
	WebhookDropRate float64 `json:"webhookDropRate"`
}

// Duration is a time.Duration that reads and writes JSON as "1.5s" (numbers are
// milliseconds).
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case float64:
		*d = Duration(x * float64(time.Millisecond))
	case string:
		p, err := time.ParseDuration(x)
		if err != nil {
			return fmt.Errorf("duration %q: %w", x, err)
		}
		*d = Duration(p)
	default:
		return fmt.Errorf("duration: want a string like \"2s\" or milliseconds, got %s", b)
	}
	return nil
}

// faultPatch is the body of POST /_fake/faults: fields left out keep their value.
type faultPatch struct {
	ErrorRate   *float64    `json:"errorRate"`
	ErrorStatus *int        `json:"errorStatus"`
	ResetRate   *float64    `json:"resetRate"`
	ExtraDelay  *Duration   `json:"extraDelay"`
	Outage      *Duration   `json:"outage"` // from now
	OutageMode  *OutageMode `json:"outageMode"`
	Latency     *Duration   `json:"latency"`

	WebhookDelay         *Duration `json:"webhookDelay"`
	WebhookDuplicateRate *float64  `json:"webhookDuplicateRate"`
	WebhookDropRate      *float64  `json:"webhookDropRate"`
}

func (p faultPatch) apply(f *Faults, now time.Time) error {
	if p.ErrorRate != nil {
		f.ErrorRate = *p.ErrorRate
	}
	if p.ErrorStatus != nil {
		f.ErrorStatus = *p.ErrorStatus
	}
	if p.ResetRate != nil {
		f.ResetRate = *p.ResetRate
	}
	if p.ExtraDelay != nil {
		f.ExtraDelay = *p.ExtraDelay
	}
	if p.OutageMode != nil {
		f.OutageMode = *p.OutageMode
	}
	if p.Outage != nil {
		f.OutageUntil = now.Add(time.Duration(*p.Outage))
	}
	if p.Latency != nil {
		f.Latency = *p.Latency
	}
	if p.WebhookDelay != nil {
		f.WebhookDelay = *p.WebhookDelay
	}
	if p.WebhookDuplicateRate != nil {
		f.WebhookDuplicateRate = *p.WebhookDuplicateRate
	}
	if p.WebhookDropRate != nil {
		f.WebhookDropRate = *p.WebhookDropRate
	}
	return f.validate()
}

func (f *Faults) validate() error {
	if f.ErrorRate < 0 || f.ErrorRate > 1 {
		return fmt.Errorf("errorRate: %v is not between 0 and 1", f.ErrorRate)
	}
	if f.ResetRate < 0 || f.ResetRate > 1 {
		return fmt.Errorf("resetRate: %v is not between 0 and 1", f.ResetRate)
	}
	if f.WebhookDuplicateRate < 0 || f.WebhookDuplicateRate > 1 || f.WebhookDropRate < 0 || f.WebhookDropRate > 1 {
		return fmt.Errorf("webhookDuplicateRate, webhookDropRate: not between 0 and 1")
	}
	if f.ErrorStatus != 0 && (f.ErrorStatus < 400 || f.ErrorStatus > 599) {
		return fmt.Errorf("errorStatus: %d is not an error status", f.ErrorStatus)
	}
	switch f.OutageMode {
	case "", Outage503, OutageReset:
	default:
		return fmt.Errorf("outageMode: %q is neither %q nor %q", f.OutageMode, Outage503, OutageReset)
	}
	if f.ExtraDelay < 0 || f.Latency < 0 || f.WebhookDelay < 0 {
		return fmt.Errorf("extraDelay, latency, webhookDelay: must not be negative")
	}
	return nil
}

// Random draws are a pure function of the seed, the request's arrival number and a
// stream, so results do not depend on goroutine scheduling.
const (
	streamError uint64 = iota + 1
	streamReset
	streamLatency1
	streamLatency2
	streamID
	streamWebhookDrop
	streamWebhookDuplicate
	streamWebhookID
)

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// draw returns a uniform float in [0, 1).
func draw(seed, n, stream uint64) float64 {
	return float64(splitmix(seed^splitmix(n*0x100+stream))>>11) / (1 << 53)
}

// latencySigma gives a log-normal whose p99 is 3.5× its median: σ = ln(3.5) / 2.326.
const latencySigma = 0.5386

// latency draws request n's latency around median, capped at 10× median.
func latency(seed, n uint64, median time.Duration) time.Duration {
	if median <= 0 {
		return 0
	}
	u1 := draw(seed, n, streamLatency1)
	u2 := draw(seed, n, streamLatency2)
	if u1 < 1e-12 {
		u1 = 1e-12
	}
	z := math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
	f := math.Min(math.Exp(latencySigma*z), 10)
	return time.Duration(float64(median) * f)
}
