package charts

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ghlproxy/ghlproxy/internal/metrics"
)

// exported returns every series name the binary exports under the ghlproxy_ prefix (with
// _bucket, _sum and _count for histograms) and the labels each has. It reads the metrics'
// descriptions, so label vectors count even before they have a child.
func exported(t *testing.T) map[string][]string {
	t.Helper()
	m := metrics.New()
	out := map[string][]string{}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	varLabels := regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok || v.Field(i).Type() == reflect.TypeFor[*prometheus.Registry]() {
			continue
		}
		ch := make(chan *prometheus.Desc, 8)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			s := d.String()
			name := fqName.FindStringSubmatch(s)[1]
			var labels []string
			if l := varLabels.FindStringSubmatch(s); l != nil && l[1] != "" {
				labels = strings.Split(l[1], ",")
			}
			switch c.(type) {
			case prometheus.Histogram, *prometheus.HistogramVec:
				out[name+"_bucket"] = append(slices.Clone(labels), "le")
				out[name+"_sum"] = labels
				out[name+"_count"] = labels
			default:
				out[name] = labels
			}
		}
	}
	if len(out) < 20 {
		t.Fatalf("found only %d metrics in metrics.New: %v", len(out), out)
	}
	return out
}

// Labels Prometheus adds to every scraped series (target labels from a Kubernetes pod
// monitor, and the defaults).
var targetLabels = []string{"namespace", "pod", "job", "instance", "container", "service", "endpoint"}

var (
	labelValues = regexp.MustCompile(`^label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`)
	stringLit   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	matchers    = regexp.MustCompile(`\{[^{}]*\}`)
	grouping    = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)`)
	rangeSel    = regexp.MustCompile(`\[[^\]]*\]`)
	identifier  = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	matcherLbl  = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)`)
	// What a PromQL expression may name besides metrics.
	promqlWords = map[string]bool{
		"sum": true, "min": true, "max": true, "avg": true, "count": true, "rate": true, "irate": true, "increase": true,
		"histogram_quantile": true, "by": true, "without": true, "on": true, "ignoring": true, "and": true, "or": true,
		"unless": true, "bool": true, "offset": true, "clamp_min": true, "clamp_max": true, "abs": true, "topk": true,
		"bottomk": true, "label_values": true, "group_left": true, "group_right": true, "time": true, "vector": true,
		"scalar": true, "delta": true, "deriv": true, "max_over_time": true, "min_over_time": true, "avg_over_time": true,
	}
)

// metricRefs returns the metric names and the label names an expression uses.
func metricRefs(expr string) (names, labels []string) {
	// Grafana's variables stand in for values or durations.
	// label_values(metric, label): the second argument is a label.
	if m := labelValues.FindStringSubmatch(expr); m != nil {
		expr, labels = m[1], append(labels, m[2])
	}
	expr = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$namespace", "x", "$pod", "x").Replace(expr)
	for _, m := range matchers.FindAllString(stringLit.ReplaceAllString(expr, `""`), -1) {
		for _, l := range matcherLbl.FindAllStringSubmatch(m, -1) {
			labels = append(labels, l[1])
		}
	}
	e := matchers.ReplaceAllString(stringLit.ReplaceAllString(expr, `""`), " ")
	for _, g := range grouping.FindAllStringSubmatch(e, -1) {
		for l := range strings.SplitSeq(g[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
	}
	e = rangeSel.ReplaceAllString(grouping.ReplaceAllString(e, " "), " ")
	for _, id := range identifier.FindAllString(e, -1) {
		if !promqlWords[id] {
			names = append(names, id)
		}
	}
	return names, labels
}

// checkExprs fails for any expression naming a metric the binary does not export or a label
// that metric does not have.
func checkExprs(t *testing.T, where string, exprs []string) {
	t.Helper()
	have := exported(t)
	for _, expr := range exprs {
		names, labels := metricRefs(expr)
		if len(names) == 0 {
			t.Errorf("%s: %q names no metric", where, expr)
		}
		allowed := slices.Clone(targetLabels)
		for _, n := range names {
			l, ok := have[n]
			if !ok {
				t.Errorf("%s: %q uses %s, which the binary does not export", where, expr, n)
			}
			allowed = append(allowed, l...)
		}
		for _, l := range labels {
			if !slices.Contains(allowed, l) {
				t.Errorf("%s: %q uses label %q, which none of %v has", where, expr, l, names)
			}
		}
	}
}

// dashboardExprs returns every query of the dashboard: panel targets and template variables.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "dashboards", "ghlproxy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string
		Panels []struct {
			Title, Type string
			Targets     []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Type       string
				Definition string
			}
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			exprs = append(exprs, v.Definition)
		}
	}
	return exprs
}

func TestDashboardUsesExportedMetrics(t *testing.T) {
	exprs := dashboardExprs(t)
	if len(exprs) < 20 {
		t.Fatalf("only %d queries", len(exprs))
	}
	checkExprs(t, "dashboard", exprs)

	// The dashboard covers what the issue asks for.
	all := strings.Join(exprs, "\n")
	for _, want := range []string{
		`ghlproxy_requests_total`, `outcome=~"hit|stale"`, `ghlproxy_upstream_requests_total`,
		`ghlproxy_upstream_calls_saved_total`, `ghlproxy_request_duration_seconds_bucket`,
		`ghlproxy_ratelimit_wait_seconds_bucket`, `ghlproxy_upstream_ratelimit_remaining`,
		`ghlproxy_batch_size_bucket`, `ghlproxy_redis_up`, `ghlproxy_degraded`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no dashboard query uses %s", want)
		}
	}
}

// The checker itself catches a metric the binary does not export, and a wrong label.
func TestMetricRefs(t *testing.T) {
	names, labels := metricRefs(`histogram_quantile(0.95, sum by (le, pod) (rate(ghlproxy_x_bucket{namespace=~"$namespace", outcome="hit"}[$__rate_interval]))) / on (pod) ghlproxy_y > 3`)
	sort.Strings(names)
	sort.Strings(labels)
	if !slices.Equal(names, []string{"ghlproxy_x_bucket", "ghlproxy_y"}) || !slices.Equal(labels, []string{"le", "namespace", "outcome", "pod", "pod"}) {
		t.Errorf("names %v labels %v", names, labels)
	}
	have := exported(t)
	if _, ok := have["ghlproxy_requests_total"]; !ok {
		t.Errorf("requests_total missing from %v", have)
	}
	if l := have["ghlproxy_request_duration_seconds_bucket"]; !slices.Equal(l, []string{"route", "outcome", "le"}) {
		t.Errorf("request_duration_seconds_bucket labels %v", l)
	}
}

func TestAlertsUseExportedMetrics(t *testing.T) {
	objs := render(t, "--set", "monitoring.prometheusRule.enabled=true")
	pr := find[unstructured.Unstructured](t, objs, "PrometheusRule", "rel-ghlproxy")
	exprs := alertExprs(t, pr)
	if len(exprs) < 5 {
		t.Fatalf("only %d alerts", len(exprs))
	}
	var list []string
	for _, e := range exprs {
		list = append(list, e)
	}
	checkExprs(t, "alerts", list)
}

// alertExprs maps alert names to expressions.
func alertExprs(t *testing.T, pr *unstructured.Unstructured) map[string]string {
	t.Helper()
	groups, _, _ := unstructured.NestedSlice(pr.Object, "spec", "groups")
	out := map[string]string{}
	for _, g := range groups {
		rules, _ := g.(map[string]any)["rules"].([]any)
		for _, r := range rules {
			r := r.(map[string]any)
			out[r["alert"].(string)] = r["expr"].(string)
		}
	}
	return out
}
