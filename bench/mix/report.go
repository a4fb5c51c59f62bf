package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// report turns bench/run.sh's raw files into results.md and gnuplot scripts.
func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	rawDir := fs.String("raw", "bench/out/raw", "raw results of run.sh")
	out := fs.String("out", "bench/out", "where results.md, the .dat and the .gp files go")
	rounds := fs.Int("rounds", 3, "rounds per wrk target (for the caption)")
	secs := fs.Int("seconds", 5, "seconds per wrk run (for the caption)")
	conns := fs.Int("conns", 64, "wrk connections of the hit runs (for the caption)")
	mixSecs := fs.Int("mix-seconds", 15, "measured seconds per mixed run (for the caption)")
	_ = fs.Parse(args)

	var md strings.Builder
	up := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(*rawDir, name))
		s := strings.TrimSpace(string(b))
		if i := strings.Index(s, "load average:"); i >= 0 {
			return strings.TrimSpace(s[i+len("load average:"):])
		}
		return "?"
	}
	fmt.Fprintf(&md, "# ghlproxy side-by-side benchmark\n\n")
	fmt.Fprintf(&md, "One run of `bench/run.sh` on this machine (%s); load average %s at the start, %s at the end. "+
		"wrk figures are medians of %d runs of %d s per target, targets alternating; ratios are ghlproxy / peer from the same run.\n\n",
		machine(), up("uptime.before"), up("uptime.after"), *rounds, *secs)

	if rows := readWrk(filepath.Join(*rawDir, "passthrough.tsv")); len(rows.order) > 0 {
		writePassthrough(&md, rows, *rounds, *secs)
	}
	if rows := readWrk(filepath.Join(*rawDir, "hits.tsv")); len(rows.order) > 0 {
		if err := writeHits(&md, rows, *rawDir, *out, *conns); err != nil {
			return err
		}
	}
	if err := writeMix(&md, *rawDir, *out, *mixSecs); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(*out, "results.md"), []byte(md.String()), 0o644)
}

func machine() string {
	n := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		n = strings.Count(string(b), "\nprocessor")
		if strings.HasPrefix(string(b), "processor") {
			n++
		}
	}
	return fmt.Sprintf("%d cores, loopback", n)
}

// wrkRows: target -> the runs' (rps, p50 µs, p99 µs), in file order.
type wrkRows struct {
	order []string
	runs  map[string][][3]float64
}

func (w wrkRows) median(t string, col int) float64 {
	var v []float64
	for _, r := range w.runs[t] {
		v = append(v, r[col])
	}
	return median(v)
}

func (w wrkRows) has(t string) bool { return len(w.runs[t]) > 0 }

// spread is the lowest and highest of a column over t's runs: on a shared machine a ratio
// of medians means little when the targets' ranges overlap.
func (w wrkRows) spread(t string, col int) (lo, hi float64) {
	for i, r := range w.runs[t] {
		if i == 0 || r[col] < lo {
			lo = r[col]
		}
		if i == 0 || r[col] > hi {
			hi = r[col]
		}
	}
	return lo, hi
}

func readWrk(name string) wrkRows {
	w := wrkRows{runs: map[string][][3]float64{}}
	f, err := os.Open(name)
	if err != nil {
		return w
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) != 4 {
			continue
		}
		var r [3]float64
		for i := range 3 {
			r[i], _ = strconv.ParseFloat(fl[i+1], 64)
		}
		if !w.has(fl[0]) {
			w.order = append(w.order, fl[0])
		}
		w.runs[fl[0]] = append(w.runs[fl[0]], r)
	}
	return w
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

var names = map[string]string{
	"direct":              "stand-in directly",
	"nginx-proxy":         "nginx proxy_pass",
	"nginx":               "nginx proxy_cache",
	"nginx-limit":         "nginx proxy_cache + limit_req 280/min per location",
	"varnish":             "Varnish 7",
	"ghlproxy":            "ghlproxy, embedded store",
	"ghlproxy-redis":      "ghlproxy, Redis",
	"ghlproxy-1cpu":       "ghlproxy, embedded store, 1 CPU (GOMAXPROCS=1)",
	"ghlproxy-redis-1cpu": "ghlproxy, Redis, 1 CPU (GOMAXPROCS=1)",
	"go-proxy":            "Go floor: plain httputil.ReverseProxy",
	"go-cache":            "Go floor: bare net/http cache (sync.Map)",
}

// short names label the plots' x axes.
var short = map[string]string{
	"direct": "stand-in", "nginx-proxy": "nginx", "nginx": "nginx", "nginx-limit": "nginx+limit", "varnish": "Varnish",
	"ghlproxy": "ghlproxy", "ghlproxy-redis": "ghlproxy+Redis",
	"go-proxy": "Go ReverseProxy", "go-cache": "Go sync.Map",
	"ghlproxy-1cpu": "ghlproxy 1cpu", "ghlproxy-redis-1cpu": "ghlproxy+Redis 1cpu",
}

func shortName(t string) string {
	if n, ok := short[t]; ok {
		return n
	}
	return t
}

func name(t string) string {
	if n, ok := names[t]; ok {
		return n
	}
	return t
}

func us(v float64) string {
	if v >= 10000 {
		return fmt.Sprintf("%.1f ms", v/1000)
	}
	if v >= 1000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}

func writePassthrough(md *strings.Builder, w wrkRows, rounds, secs int) {
	fmt.Fprintf(md, "## Pass-through: added latency, 1 connection\n\n")
	fmt.Fprintf(md, "Upstream: nginx answering a fixed ~90-byte JSON body; path not in GHL's route table (streamed, rate limited with an unreachable limit).\n\n")
	fmt.Fprintf(md, "| target | p50 | p99 | added p50 | added p99 | added p50 / nginx's | added p50 / Go floor's |\n|---|---|---|---|---|---|---|\n")
	d50, d99 := w.median("direct", 1), w.median("direct", 2)
	n50 := w.median("nginx-proxy", 1) - d50
	g50 := w.median("go-proxy", 1) - d50
	for _, t := range w.order {
		p50, p99 := w.median(t, 1), w.median(t, 2)
		if t == "direct" {
			fmt.Fprintf(md, "| upstream directly | %s | %s | | | | |\n", us(p50), us(p99))
			continue
		}
		ratio, gratio := "", ""
		if n50 > 0 && t != "nginx-proxy" {
			ratio = fmt.Sprintf("%.2f", (p50-d50)/n50)
		}
		if g50 > 0 && w.has("go-proxy") && strings.HasPrefix(t, "ghlproxy") {
			gratio = fmt.Sprintf("%.2f", (p50-d50)/g50)
		}
		fmt.Fprintf(md, "| %s | %s | %s | %+.0f µs | %+.0f µs | %s | %s |\n", name(t), us(p50), us(p99), p50-d50, p99-d99, ratio, gratio)
	}
	md.WriteString("\n")
}

func writeHits(md *strings.Builder, w wrkRows, rawDir, out string, conns int) error {
	upstream := map[string]int64{}
	if b, err := os.ReadFile(filepath.Join(rawDir, "hits-upstream.tsv")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				upstream[f[0]] += n
			}
		}
	}
	keys := strings.TrimSpace(readString(filepath.Join(rawDir, "hits-keys")))
	fmt.Fprintf(md, "## Cache hits, %d connections\n\n", conns)
	fmt.Fprintf(md, "Read mix: %s keys (200 contacts × 4 tokens), GET /contacts/{id}, keep-alive, wrk + bench/hits.lua; every cache warmed first. "+
		"The stand-in (no latency, no limit) is the upstream; its call count over the measured runs shows whether they were hits.\n\n", keys)
	fmt.Fprintf(md, "| target | req/s | req/s, lowest–highest run | p50 | p99 | upstream calls in the runs | sidecar RSS peak |\n|---|---|---|---|---|---|---|\n")
	var dat strings.Builder
	for _, t := range w.order {
		rss := ""
		if h, _ := readRSS(filepath.Join(rawDir, "hits-"+t+".rss")); h > 0 {
			rss = fmt.Sprintf("%.0f MiB", float64(h)/1024)
		}
		lo, hi := w.spread(t, 0)
		fmt.Fprintf(md, "| %s | %.0f | %.0f–%.0f | %s | %s | %d | %s |\n", name(t), w.median(t, 0), lo, hi, us(w.median(t, 1)), us(w.median(t, 2)), upstream[t], rss)
		fmt.Fprintf(&dat, "%q %.0f\n", shortName(t), w.median(t, 0))
	}
	md.WriteString("\n")
	best, bestName := 0.0, ""
	for _, p := range []string{"nginx", "varnish"} {
		if v := w.median(p, 0); v > best {
			best, bestName = v, p
		}
	}
	for _, g := range []string{"ghlproxy", "ghlproxy-redis", "ghlproxy-1cpu", "ghlproxy-redis-1cpu"} {
		if !w.has(g) {
			continue
		}
		rps, p99 := w.median(g, 0), w.median(g, 2)
		var parts []string
		for _, p := range []string{"nginx", "varnish", "go-cache", "direct"} {
			if w.has(p) {
				parts = append(parts, fmt.Sprintf("%.2f× %s", rps/w.median(p, 0), name(p)))
			}
		}
		fmt.Fprintf(md, "- %s req/s: %s.", name(g), strings.Join(parts, ", "))
		if best > 0 {
			met := rps >= best && p99 <= 5000
			fmt.Fprintf(md, " Target (≥ the better peer, %s, with p99 ≤ 5 ms): **%s**.", name(bestName), map[bool]string{true: "met", false: "not met"}[met])
		}
		if upstream[g] > 0 {
			fmt.Fprintf(md, " %d calls reached the stand-in during its runs: entries refreshed in the background while served stale, or missed.", upstream[g])
		}
		md.WriteString("\n")
	}
	md.WriteString("\n![cache-hit throughput](hits-throughput.png)\n![cache-hit latency](hits-latency.png)\n\n")

	if err := os.WriteFile(filepath.Join(out, "hits-rps.dat"), []byte(dat.String()), 0o644); err != nil {
		return err
	}
	// Latency distribution: per target, the median over rounds of each percentile.
	var plots []string
	for _, t := range w.order {
		pct := map[float64][]float64{}
		files, _ := filepath.Glob(filepath.Join(rawDir, "hits-pct-"+t+"-*.tsv"))
		for _, f := range files {
			for _, l := range strings.Split(readString(f), "\n") {
				fl := strings.Fields(l)
				if len(fl) != 2 {
					continue
				}
				p, _ := strconv.ParseFloat(fl[0], 64)
				v, _ := strconv.ParseFloat(fl[1], 64)
				pct[p] = append(pct[p], v)
			}
		}
		if len(pct) == 0 {
			continue
		}
		med := map[float64]float64{}
		for p, v := range pct {
			med[p] = median(v)
		}
		plot, err := writeCurve(out, "hits-pct-"+t+".dat", name(t), med)
		if err != nil {
			return err
		}
		plots = append(plots, plot)
	}
	gp := fmt.Sprintf(`set terminal pngcairo size 900,500 noenhanced
set output "hits-throughput.png"
set title "Cache hits, %d connections: requests per second (median)"
set style fill solid 0.6
set boxwidth 0.6
set yrange [0:*]
set grid ytics
plot "hits-rps.dat" using 0:2:xtic(1) with boxes notitle, "" using 0:2:(sprintf("%%.0f",$2)) with labels offset 0,1 notitle
set output "hits-latency.png"
set title "Cache hits, %d connections: latency by percentile"
set logscale xy
set xtics ("p50" 2, "p90" 10, "p99" 100, "p99.9" 1000, "p99.99" 10000)
set ylabel "ms"
set key left top
plot %s
`, conns, conns, strings.Join(plots, ", "))
	return os.WriteFile(filepath.Join(out, "hits.gp"), []byte(gp), 0o644)
}

func writeMix(md *strings.Builder, rawDir, out string, secs int) error {
	files, _ := filepath.Glob(filepath.Join(rawDir, "mix-*.json"))
	if len(files) == 0 {
		return nil
	}
	byClients := map[int]map[string]Result{}
	var order []string
	for _, f := range files {
		base := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "mix-"), ".json")
		c, t, ok := strings.Cut(base, "-")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(c)
		var r Result
		if err := json.Unmarshal([]byte(readString(f)), &r); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if byClients[n] == nil {
			byClients[n] = map[string]Result{}
		}
		byClients[n][t] = r
		if !slices.Contains(order, t) {
			order = append(order, t)
		}
	}
	rank := map[string]int{"direct": 0, "nginx": 1, "varnish": 2, "nginx-limit": 3, "ghlproxy": 4, "ghlproxy-redis": 5}
	sort.SliceStable(order, func(i, j int) bool { return rank[order[i]] < rank[order[j]] })
	var cs []int
	for c := range byClients {
		cs = append(cs, c)
	}
	sort.Ints(cs)

	fmt.Fprintf(md, "## Mixed workload\n\n")
	wl := byClients[cs[0]][order[0]].Workload
	fmt.Fprintf(md, "Each client holds one location token (%d locations, %d tokens each, %d contacts each) and loops: request, think (exponential, mean %s). "+
		"%.0f%% reads of hot contacts (Zipf), %.0f%% contact searches (%d per location, JSON keys in random order), %.0f%% contact updates%s. "+
		"The stand-in has GHL's latency (log-normal, median 150 ms) and its limit of 100 requests per 10 s per location; every target starts cold, "+
		"runs %s unmeasured, then %d s measured. Upstream calls and 429s are the stand-in's own counts over the measured window. "+
		"A leak is an answer carrying another credential's data; a stale read returned a contact older than an update acknowledged before the read began.\n\n",
		wl.Locations, wl.TokensPerLocation, wl.ContactsPerLocation, wl.Think, 100*(1-wl.Search-wl.Write-wl.Create), 100*wl.Search, wl.Queries, 100*wl.Write, createsCaption(wl.Create, wl.AttemptTimeout), wl.Warmup, secs)
	var dat strings.Builder
	for _, c := range cs {
		fmt.Fprintf(md, "### %d concurrent clients\n\n", c)
		creates := wl.Create > 0
		if creates {
			fmt.Fprintf(md, "| target | req/s | p50 | p99 | p99 of hits | reads p99 | updates p50 / p99 | creates p50 / p99 (duplicated) | upstream calls / client requests | upstream 429s | 429s to clients | other errors | leaks | stale reads | sidecar RSS peak |\n")
			fmt.Fprintf(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		} else {
			fmt.Fprintf(md, "| target | req/s | p50 | p99 | p99 of hits | updates p50 / p99 | upstream calls / client requests | upstream 429s | 429s to clients | other errors | leaks | stale reads | sidecar RSS peak |\n")
			fmt.Fprintf(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		}
		for _, t := range order {
			r, ok := byClients[c][t]
			if !ok {
				continue
			}
			var errs int64
			for s, n := range r.Status {
				if s == 0 || s >= 500 {
					errs += n
				}
			}
			hits := ""
			if r.Hits.N > 0 {
				hits = fmt.Sprintf("%s (%d%% hits)", us(r.Hits.P99), 100*r.Hits.N/max(1, r.Requests))
			}
			rss := ""
			if h, cur := readRSS(filepath.Join(rawDir, fmt.Sprintf("mix-%d-%s.rss", c, t))); h > 0 {
				rss = fmt.Sprintf("%.0f MiB (now %.0f)", float64(h)/1024, float64(cur)/1024)
			}
			writes := fmt.Sprintf("%s / %s (%d)", us(r.Writes.P50), us(r.Writes.P99), r.Writes.N)
			if creates {
				writes = fmt.Sprintf("%s | %s | %s / %s (%d, %d)", us(r.Reads.P99), writes, us(r.Creates.P50), us(r.Creates.P99), r.Creates.N, r.CreateDup)
			}
			fmt.Fprintf(md, "| %s | %.0f | %s | %s | %s | %s | %.1f%% | %d | %d | %d | %d | %d | %s |\n",
				name(t), r.RPS, us(r.All.P50), us(r.All.P99), hits, writes, 100*r.UpstreamShare, r.Upstream429, r.Status[429], errs, r.Leaks, r.Stale, rss)
		}
		md.WriteString("\n")
		var plots []string
		for _, t := range order {
			r, ok := byClients[c][t]
			if !ok || len(r.All.Percentile) == 0 {
				continue
			}
			pct := map[float64]float64{}
			for k, v := range r.All.Percentile {
				p, _ := strconv.ParseFloat(k, 64)
				pct[p] = v
			}
			plot, err := writeCurve(out, fmt.Sprintf("mix-pct-%d-%s.dat", c, t), name(t), pct)
			if err != nil {
				return err
			}
			plots = append(plots, plot)
		}
		gp := fmt.Sprintf(`set terminal pngcairo size 900,500 noenhanced
set output "mix-latency-%d.png"
set title "Mixed workload, %d clients: latency by percentile (all requests)"
set logscale xy
set xtics ("p1" 1.0101, "p50" 2, "p90" 10, "p99" 100, "p99.9" 1000, "p99.99" 10000)
set ylabel "ms"
set key left top
set grid
plot %s
`, c, c, strings.Join(plots, ", "))
		if err := os.WriteFile(filepath.Join(out, fmt.Sprintf("mix-%d.gp", c)), []byte(gp), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(md, "![mixed workload latency, %d clients](mix-latency-%d.png)\n\n", c, c)
	}
	for _, t := range order {
		fmt.Fprintf(&dat, "%q", shortName(t))
		for _, c := range cs {
			fmt.Fprintf(&dat, " %.0f", byClients[c][t].RPS)
		}
		dat.WriteString("\n")
	}
	if err := os.WriteFile(filepath.Join(out, "mix-rps.dat"), []byte(dat.String()), 0o644); err != nil {
		return err
	}
	var cols []string
	for i, c := range cs {
		cols = append(cols, fmt.Sprintf(`"mix-rps.dat" using %d:xtic(1) title "%d clients"`, i+2, c))
	}
	gp := fmt.Sprintf(`set terminal pngcairo size 900,500 noenhanced
set output "mix-throughput.png"
set title "Mixed workload: answered requests per second"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.6
set yrange [0:*]
set grid ytics
plot %s
`, strings.Join(cols, ", "))
	fmt.Fprintf(md, "![mixed workload throughput](mix-throughput.png)\n")
	return os.WriteFile(filepath.Join(out, "mix-throughput.gp"), []byte(gp), 0o644)
}

func readString(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}

func readRSS(name string) (hwm, rss int64) {
	fmt.Sscan(readString(name), &hwm, &rss)
	return hwm, rss
}

// writeCurve writes a latency distribution (percentile -> µs) as gnuplot data, x being
// 1/(1-p) so a log axis spreads the tail, and returns the plot clause for it.
func writeCurve(out, file, title string, pct map[float64]float64) (string, error) {
	ps := make([]float64, 0, len(pct))
	for p := range pct {
		ps = append(ps, p)
	}
	sort.Float64s(ps)
	var d strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&d, "%g %.3f\n", 100/(100-p), pct[p]/1000)
	}
	if err := os.WriteFile(filepath.Join(out, file), []byte(d.String()), 0o644); err != nil {
		return "", err
	}
	return fmt.Sprintf("%q using 1:2 with linespoints title %q", file, title), nil
}

func createsCaption(share float64, attemptTimeout string) string {
	if share <= 0 {
		return ""
	}
	return fmt.Sprintf(", %.0f%% contact creates (a client retries one that timed out after %s, or got a 429 or 5xx, with the same body: three attempts at most; \"duplicated\" counts creates whose retry met GHL's duplicate-contact 400, an earlier attempt having been applied; a create whose every attempt timed out cannot be told either way)", 100*share, attemptTimeout)
}
