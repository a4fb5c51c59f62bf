// Package metrics defines every Prometheus metric the sidecar exports, in one place, so the
// names the dashboards and alerts depend on are visible together. Labels stay
// low-cardinality: route is a template from the route table, never a raw path, id or token.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Outcomes, the values of the outcome label of requests_total.
const (
	OutcomeHit      = "hit"
	OutcomeStale    = "stale"
	OutcomeMiss     = "miss"
	OutcomeShared   = "shared"
	OutcomeReplay   = "replay"
	OutcomeBatched  = "batched"
	OutcomePass     = "pass"
	OutcomeRejected = "rejected"
)

// Reasons, the values of the reason label of upstream_calls_saved_total.
const (
	SavedCache  = "cache"
	SavedDedupe = "dedupe"
	SavedMerge  = "merge"
	SavedBulk   = "bulk"
)

// Metrics holds the collectors. Construct one per process with New and pass it to the parts
// that count; tests construct their own on a fresh registry.
type Metrics struct {
	Registry *prometheus.Registry

	Requests         *prometheus.CounterVec   // route, method, code, outcome
	RequestDuration  *prometheus.HistogramVec // route, outcome
	Upstream         *prometheus.CounterVec   // route, method, code
	UpstreamDuration *prometheus.HistogramVec // route
	UpstreamSaved    *prometheus.CounterVec   // reason
	SlowUpstream     prometheus.Counter
	Upstream429      prometheus.Counter
	UpstreamRemain   *prometheus.GaugeVec // window: burst|daily

	RateLimitWait     *prometheus.HistogramVec // priority
	RateLimitRejected prometheus.Counter
	RateLimitFallback prometheus.Counter
	QueueDepth        *prometheus.GaugeVec // queue: ratelimit|batch
	RateLimitQueue    *prometheus.GaugeVec // priority: interactive|background|warm

	BatchSize prometheus.Histogram

	CacheEntries   prometheus.Gauge
	CacheBytes     prometheus.Gauge
	CacheEvictions prometheus.Counter
	StaleIfBusy    prometheus.Counter
	WriteThrough   *prometheus.CounterVec // result: stored|refused

	InvalidationsPending *prometheus.GaugeVec // stage: cache|fold

	RedisUp       prometheus.Gauge
	RedisCommands *prometheus.CounterVec // command
	Degraded      prometheus.Gauge
	// RedisEvictionUnsafe is 1 while Redis may evict keys (a maxmemory with a policy other
	// than noeviction): a bucket or fold marker evicted reads as a full bucket or a free lock.
	RedisEvictionUnsafe prometheus.Gauge

	Webhooks      *prometheus.CounterVec // type, result
	Invalidations *prometheus.CounterVec // source: write, webhook, purge

	WarmRuns        *prometheus.CounterVec // result
	WarmLastSuccess prometheus.Gauge
	WarmEntries     prometheus.Counter
}

// New registers every metric on a new registry, along with the Go and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := factory{reg}
	latency := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	m := &Metrics{
		Registry: reg,
		Requests: f.counterVec("requests_total", "Client requests answered, by route template, method, status code and outcome (hit, stale, miss, shared, replay, batched, pass, rejected).",
			"route", "method", "code", "outcome"),
		RequestDuration: f.histogramVec("request_duration_seconds", "Time from receiving a client request to the end of its answer.", latency, "route", "outcome"),
		Upstream:        f.counterVec("upstream_requests_total", "Calls made to GHL, by route template, method and status code (code 0: no answer).", "route", "method", "code"),
		UpstreamDuration: f.histogramVec("upstream_duration_seconds", "Duration of calls to GHL until the response headers arrived.",
			latency, "route"),
		UpstreamSaved:     f.counterVec("upstream_calls_saved_total", "Calls to GHL the sidecar did not have to make, by reason (cache, dedupe, merge, bulk).", "reason"),
		SlowUpstream:      f.counter("slow_upstream_total", "Calls to GHL slower than the slow threshold."),
		Upstream429:       f.counter("upstream_429_total", "429 answers received from GHL."),
		UpstreamRemain:    f.gaugeVec("upstream_ratelimit_remaining", "Lowest X-RateLimit-Remaining (window=burst) and X-RateLimit-Daily-Remaining (window=daily) GHL reported recently.", "window"),
		RateLimitWait:     f.histogramVec("ratelimit_wait_seconds", "Time requests queued for a rate-limit token, by priority.", latency, "priority"),
		RateLimitRejected: f.counter("ratelimit_rejected_total", "Requests answered 429 by the sidecar after waiting the longest allowed, before anything went upstream."),
		RateLimitFallback: f.counter("ratelimit_fallback_decisions_total", "Rate-limit decisions made on the local fallback bucket while Redis was unreachable."),
		QueueDepth:        f.gaugeVec("queue_depth", "Requests waiting, by queue (ratelimit, batch).", "queue"),
		RateLimitQueue:    f.gaugeVec("ratelimit_queue_depth", "Requests waiting for a rate-limit token, by lane (interactive: the app's requests; background: stale-while-revalidate refreshes and requests marked X-Ghlproxy-Priority: background; warm).", "priority"),
		BatchSize:         f.histogram("batch_size", "Writes per group sent upstream.", []float64{1, 2, 3, 4, 5}),
		CacheEntries:      f.gauge("cache_entries", "Entries in the in-process cache layer."),
		CacheBytes:        f.gauge("cache_bytes", "Bytes held by the in-process cache layer."),
		CacheEvictions:    f.counter("cache_evictions_total", "Entries evicted from the in-process cache layer for space."),
		StaleIfBusy:       f.counter("cache_stale_if_busy_total", "Read misses answered from an entry past its TTL because a rate-limit token was further away than cache.stale_if_busy, or GHL answered 429 (Cache-Status: fwd=stale; detail=busy)."),
		WriteThrough:      f.counterVec("cache_write_through_total", "Write answers stored as the answer of the read of the same record (cache.write_through), by result: stored, or refused (another change of the record came between, or the answer held no record).", "result"),
		InvalidationsPending: f.gaugeVec("invalidations_pending", "Invalidations made by writes that Redis has not confirmed yet, by stage (cache, fold); each is retried until Redis does, and meanwhile this replica takes nothing it concerns from Redis.",
			"stage"),
		RedisCommands:       f.counterVec("redis_commands_total", "Commands sent to Redis, by command name (pipelined ones one by one; what a script runs inside Redis is not counted).", "command"),
		RedisUp:             f.gauge("redis_up", "1 when the last Redis call succeeded, 0 when Redis is unreachable (always 1 on the embedded store)."),
		Degraded:            f.gauge("degraded", "1 while the sidecar runs without its shared store (local fallback buckets)."),
		RedisEvictionUnsafe: f.gauge("redis_eviction_unsafe", "1 while Redis has a maxmemory and a maxmemory-policy other than noeviction: it may evict the shared buckets and fold markers, which would then read as a full bucket or a free lock."),
		Webhooks: f.counterVec("webhooks_total", "GHL webhook deliveries received, by event type (other for types the sidecar does not apply, and for refused ones) and result (applied, duplicate, refused, unknown).",
			"type", "result"),
		Invalidations:   f.counterVec("invalidations_total", "Invalidations made, by what caused them (write: a write through the sidecar; webhook: a change GHL reported; purge: DELETE /_ghlproxy/cache).", "source"),
		WarmRuns:        f.counterVec("warm_runs_total", "Runs of the warming loop by result (ok, error, skipped).", "result"),
		WarmLastSuccess: f.gauge("warm_last_success_timestamp_seconds", "Unix time of the last warming run that succeeded."),
		WarmEntries:     f.counter("warm_entries_total", "Cache entries stored by the warming loop."),
	}
	m.RedisUp.Set(1)
	// Exported at 0 from the start (also on the embedded store, which has nothing to
	// confirm), so dashboards and alerts see a series rather than no data.
	for _, stage := range []string{"cache", "fold"} {
		m.InvalidationsPending.WithLabelValues(stage)
	}
	for _, lane := range []string{"interactive", "background", "warm"} {
		m.RateLimitQueue.WithLabelValues(lane)
		m.RateLimitWait.WithLabelValues(lane)
	}
	for _, source := range []string{SourceWrite, SourceWebhook, SourcePurge} {
		m.Invalidations.WithLabelValues(source)
	}
	return m
}

type factory struct{ reg prometheus.Registerer }

const namespace = "ghlproxy"

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(g)
	return g
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets})
	f.reg.MustRegister(h)
	return h
}

func (f factory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
	f.reg.MustRegister(h)
	return h
}

// Sources of invalidations, the source label of invalidations_total.
const (
	SourceWrite   = "write"
	SourceWebhook = "webhook"
	SourcePurge   = "purge"
)
