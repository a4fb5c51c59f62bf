package charts

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// alertTests are promtool unit tests of the alert rules: synthetic series in, the alerts that
// must (and must not) fire out. Series are per minute ("0+6x30": a counter growing by 6 a
// minute, 0.1/s, for 30 minutes).
const alertTests = `
rule_files: [RULES]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ghlproxy_upstream_429_total{namespace="shop",pod="a"}'
        values: '0+6x30'
      - series: 'ghlproxy_upstream_429_total{namespace="shop",pod="b"}'
        values: '0x30'
      - series: 'ghlproxy_degraded{namespace="shop",pod="a"}'
        values: '1x20'
      - series: 'ghlproxy_degraded{namespace="shop",pod="b"}'
        values: '0x20'
      - series: 'ghlproxy_redis_eviction_unsafe{namespace="shop",pod="a"}'
        values: '1x20'
      - series: 'ghlproxy_redis_eviction_unsafe{namespace="shop",pod="b"}'
        values: '0x20'
      - series: 'ghlproxy_invalidations_pending{namespace="shop",pod="a",stage="fold"}'
        values: '0 3x20'
      - series: 'ghlproxy_invalidations_pending{namespace="shop",pod="b",stage="cache"}'
        values: '2 0x20'
      - series: 'ghlproxy_upstream_ratelimit_remaining{namespace="shop",pod="a",window="daily"}'
        values: '1000x20'
      - series: 'ghlproxy_upstream_ratelimit_remaining{namespace="shop",pod="b",window="daily"}'
        values: '150000x20'
      - series: 'ghlproxy_upstream_ratelimit_remaining{namespace="shop",pod="b",window="burst"}'
        values: '3x20'
      - series: 'ghlproxy_requests_total{namespace="shop",pod="a",route="/contacts/{contactId}",method="GET",code="502",outcome="miss"}'
        values: '0+60x30'
      - series: 'ghlproxy_requests_total{namespace="shop",pod="a",route="/contacts/{contactId}",method="GET",code="200",outcome="hit"}'
        values: '0+60x30'
      - series: 'ghlproxy_requests_total{namespace="shop",pod="b",route="/contacts/{contactId}",method="GET",code="200",outcome="hit"}'
        values: '0+600x30'
      - series: 'ghlproxy_ratelimit_wait_seconds_bucket{namespace="shop",pod="a",priority="interactive",le="1"}'
        values: '0+1x30'
      - series: 'ghlproxy_ratelimit_wait_seconds_bucket{namespace="shop",pod="a",priority="interactive",le="10"}'
        values: '0+100x30'
      - series: 'ghlproxy_ratelimit_wait_seconds_bucket{namespace="shop",pod="a",priority="interactive",le="+Inf"}'
        values: '0+100x30'
      - series: 'ghlproxy_webhooks_total{namespace="shop",pod="a",type="other",result="refused"}'
        values: '0+6x30'
      - series: 'ghlproxy_webhooks_total{namespace="shop",pod="b",type="ContactUpdate",result="applied"}'
        values: '0+60x30'
      - series: 'ghlproxy_webhooks_total{namespace="shop",pod="b",type="other",result="refused"}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: GhlproxyUpstream429s
        exp_alerts:
          - exp_labels: {severity: warning, namespace: shop, pod: a}
      - eval_time: 3m
        alertname: GhlproxyDegraded
        exp_alerts: []
      - eval_time: 10m
        alertname: GhlproxyDegraded
        exp_alerts:
          - exp_labels: {severity: warning, namespace: shop, pod: a}
      - eval_time: 10m
        alertname: GhlproxyRedisCanEvict
        exp_alerts:
          - exp_labels: {severity: warning, namespace: shop, pod: a}
      - eval_time: 4m
        alertname: GhlproxyInvalidationsPending
        exp_alerts: []
      - eval_time: 10m
        alertname: GhlproxyInvalidationsPending
        exp_alerts:
          - exp_labels: {severity: warning, namespace: shop, pod: a}
      - eval_time: 10m
        alertname: GhlproxyDailyQuotaLow
        exp_alerts:
          - exp_labels: {severity: warning, namespace: shop, pod: a}
      - eval_time: 20m
        alertname: GhlproxyErrorRate
        exp_alerts:
          - exp_labels: {severity: warning, namespace: shop, pod: a}
      - eval_time: 20m
        alertname: GhlproxyLongQueueWaits
        exp_alerts:
          - exp_labels: {severity: warning, namespace: shop, pod: a}
      - eval_time: 10m
        alertname: GhlproxyWebhooksRefused
        exp_alerts: []
      - eval_time: 28m
        alertname: GhlproxyWebhooksRefused
        exp_alerts:
          - exp_labels: {severity: warning, namespace: shop, pod: a}
      - eval_time: 20m
        alertname: GhlproxyRateLimitRejections
        exp_alerts: []
`

func TestAlertRulesWithPromtool(t *testing.T) {
	promtool := tool(t, "promtool")
	objs := render(t, "--set", "monitoring.prometheusRule.enabled=true")
	run(t, promtool, "check", "rules", ruleFile(t, objs))
	// promtool compares annotations too (empty when not listed): test the rules without them,
	// the expressions, durations and labels being what decides whether an alert fires.
	rules := ruleFile(t, objs, "annotations")
	tests := filepath.Join(filepath.Dir(rules), "alerts_test.yaml")
	if err := os.WriteFile(tests, []byte(replaceRules(alertTests, rules)), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, promtool, "test", "rules", tests)
}

func replaceRules(s, path string) string { return strings.Replace(s, "RULES", path, 1) }
