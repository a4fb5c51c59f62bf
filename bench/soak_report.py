#!/usr/bin/env python3
"""soak.md, soak.gp and the plot's data from bench/soak.sh's soak.csv and mix results.

A metric is "flat" when its least-squares trend over the second half of the load,
extrapolated over one hour, is below --flat-pct percent of its mean over that half. The
second half, not the whole run: the first minutes fill caches, connection pools and the
heap up to their working size, which is growth a soak expects.
"""
import argparse
import csv
import json
import os

MIB = 1024 * 1024
# (column, label, scale, format)
METRICS = [
    ("goroutines", "goroutines", 1, "{:.0f}"),
    ("heap_inuse_bytes", "heap in use (MiB)", MIB, "{:.1f}"),
    ("heap_goal_bytes", "heap goal (MiB)", MIB, "{:.1f}"),
    ("rss_bytes", "RSS (MiB)", MIB, "{:.1f}"),
    ("open_fds", "open fds", 1, "{:.0f}"),
]


def num(v):
    return float(v) if v not in ("", None) else None


def slope(points):
    """Least-squares slope of (t, v) points, per unit of t."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


def fmt(spec, v, scale=1):
    return "" if v is None else spec.format(v / scale)


def us(v):
    return "{:.1f} ms".format(v / 1000) if v >= 1000 else "{:.0f} µs".format(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--runs", default="redis")
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--flat-pct", type=float, default=20)
    ap.add_argument("--workload", default="")
    a = ap.parse_args()

    with open(os.path.join(a.out, "soak.csv")) as f:
        rows = list(csv.DictReader(f))
    md = ["# Soak", ""]
    md.append("Workload: {}; requests spread at random over the replicas; the stand-in with "
              "150 ms latency and a limit of 100 calls per 10 s per location. Samples every {} s from "
              "each replica's /metrics (`bench/out/soak.csv`). Verdict: *flat* when the least-squares "
              "trend over the second half of the load, extrapolated over one hour, is below {:g}% of "
              "the metric's mean over that half.".format(a.workload, a.interval, a.flat_pct))
    plots = []
    verdicts = []
    for run in a.runs.split(","):
        rr = [r for r in rows if r["run"] == run]
        replicas = sorted({r["replica"] for r in rr})
        md += ["", "## {} ({} replica{})".format(
            "Two replicas on one Redis" if run == "redis" else "One replica on the embedded store" if run == "embedded" else run,
            len(replicas), "s" if len(replicas) > 1 else ""), ""]
        try:
            with open(os.path.join(a.out, "soak-{}.uptime".format(run))) as f:
                up = [l.strip() for l in f if l.strip()]
            md.append("Load average at the start: `{}`; at the end: `{}` (2 shared cores).".format(
                up[0].split("load average:")[-1].strip(), up[-1].split("load average:")[-1].strip()))
            md.append("")
        except (OSError, IndexError):
            pass

        # The mix client's own figures.
        try:
            with open(os.path.join(a.out, "soak-{}.json".format(run))) as f:
                m = json.load(f)
        except (OSError, ValueError):
            m = None
        if m:
            st = {int(k): v for k, v in m.get("status", {}).items()}
            non2xx = {k: v for k, v in st.items() if not 200 <= k < 300}
            md.append("The mix client over its measured {:.0f} s: {:,} requests ({:.0f}/s), p50 {} and p99 {} "
                      "(hits p99 {}, reads p99 {}, searches p99 {}, updates p50 {} and p99 {}); "
                      "upstream calls {:.1f}% of requests, **{} upstream 429s**, {} answers 429 from the sidecar, "
                      "other non-2xx {}, transport errors {}, **{} leaks, {} stale reads** ({} of them begun more than 1 s "
                      "after the newer update was acknowledged; the stalest {:.0f} ms after).".format(
                          m["seconds"], m["requests"], m["rps"], us(m["all"]["p50"]), us(m["all"]["p99"]),
                          us(m["hits"]["p99"]), us(m["reads"]["p99"]), us(m["search"]["p99"]),
                          us(m["writes"]["p50"]), us(m["writes"]["p99"]), 100 * m["upstreamShare"],
                          m["upstream429"], st.get(429, 0),
                          {k: v for k, v in non2xx.items() if k not in (0, 429)} or 0, st.get(0, 0),
                          m["leaks"], m["stale"], m.get("staleOver1s", 0), m.get("staleMaxLagMs", 0)))
            if m.get("errors"):
                md.append("")
                md.append("First errors: " + "; ".join("`{}`".format(e) for e in m["errors"][:3]))
            md.append("")
        try:
            with open(os.path.join(a.out, "soak-{}.log".format(run))) as f:
                logs = [l.rstrip("\n") for l in f]
            md.append("Sidecar log lines at warn and above: {}.".format(len(logs)))
            md.append("")
            kinds = {}
            for l in logs:
                k = l.split(" ", 1)[-1].split(" err=")[0]
                kinds[k] = kinds.get(k, 0) + 1
            for k, n in sorted(kinds.items(), key=lambda kv: (not kv[0].startswith("ERR"), -kv[1]))[:10]:
                md.append("- {} × `{}`".format(n, k[:160]))
            if kinds:
                md.append("")
        except OSError:
            pass

        # Summary per replica.
        md.append("| replica | metric | idle | first | last | max | 20 s after | trend, 2nd half | per hour | verdict |")
        md.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for rep in replicas:
            s = [r for r in rr if r["replica"] == rep]
            load = [r for r in s if r["phase"] == "load" and r["goroutines"]]
            idle = next((r for r in s if r["phase"] == "idle"), None)
            after = next((r for r in s if r["phase"] == "after"), None)
            if not load:
                continue
            end = max(float(r["t_s"]) for r in load)
            half = [r for r in load if float(r["t_s"]) >= end / 2]
            for col, label, scale, spec in METRICS:
                vals = [num(r[col]) for r in load]
                pts = [(float(r["t_s"]) / 60, num(r[col])) for r in half if num(r[col]) is not None]
                sl = slope(pts)
                mean = sum(v for _, v in pts) / len(pts) if pts else 0
                pct = 100 * sl * 60 / mean if mean else 0
                flat = pct < a.flat_pct
                verdicts.append((run, rep, label, flat))
                md.append("| {} | {} | {} | {} | {} | {} | {} | {:+.3g}/min | {:+.1f}% | {} |".format(
                    rep, label, fmt(spec, num(idle[col]) if idle else None, scale), fmt(spec, vals[0], scale),
                    fmt(spec, vals[-1], scale), fmt(spec, max(v for v in vals if v is not None), scale),
                    fmt(spec, num(after[col]) if after else None, scale),
                    sl / scale, pct, "flat" if flat else "**growing**"))
        md.append("")

        # One row per minute and replica: the sample nearest each whole minute.
        md.append("| min | replica | goroutines | heap in use | heap goal | RSS | fds | req/s | upstream/s | load1 |")
        md.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for rep in replicas:
            load = [r for r in rr if r["replica"] == rep and r["phase"] == "load" and r["goroutines"]]
            if not load:
                continue
            end = max(float(r["t_s"]) for r in load)
            prev = None
            for minute in range(int(end // 60) + 2):
                r = min(load, key=lambda r: abs(float(r["t_s"]) - 60 * minute))
                if abs(float(r["t_s"]) - 60 * minute) > 30 or r is prev:
                    continue
                rate = up = ""
                if prev:
                    dt = float(r["t_s"]) - float(prev["t_s"])
                    rate = "{:.0f}".format((int(r["requests"]) - int(prev["requests"])) / dt)
                    up = "{:.1f}".format((int(r["upstream"]) - int(prev["upstream"])) / dt)
                md.append("| {:.1f} | {} | {} | {:.1f} MiB | {:.1f} MiB | {:.1f} MiB | {} | {} | {} | {} |".format(
                    float(r["t_s"]) / 60, rep, r["goroutines"], float(r["heap_inuse_bytes"]) / MIB,
                    float(r["heap_goal_bytes"]) / MIB, float(r["rss_bytes"]) / MIB, r["open_fds"], rate, up, r["load1"]))
                prev = r
            dat = "soak-{}.dat".format(rep)
            with open(os.path.join(a.out, dat), "w") as f:
                for r in load:
                    f.write("{:.3f} {} {:.2f} {:.2f}\n".format(float(r["t_s"]) / 60, r["goroutines"],
                                                              float(r["heap_inuse_bytes"]) / MIB, float(r["rss_bytes"]) / MIB))
            plots.append((dat, rep))
        md.append("")

    bad = [v for v in verdicts if not v[3]]
    md.insert(3, "")
    md.insert(4, "**Verdict: {}.**".format(
        "every metric flat" if not bad else "growing: " + ", ".join("{} {}".format(v[1], v[2]) for v in bad)))
    md += ["![soak](soak.png)", ""]
    with open(os.path.join(a.out, "soak.md"), "w") as f:
        f.write("\n".join(md))

    panels = []
    for col, label in ((2, "goroutines"), (3, "heap in use (MiB)"), (4, "RSS (MiB)")):
        lines = ", ".join("'{}' using 1:{} with lines lw 2 title '{}'".format(d, col, rep) for d, rep in plots)
        panels.append("set ylabel '{}'\nset yrange [0:*]\nplot {}".format(label, lines))
    with open(os.path.join(a.out, "soak.gp"), "w") as f:
        f.write("set terminal pngcairo size 900,900 noenhanced\nset output 'soak.png'\n"
                "set multiplot layout 3,1 title 'ghlproxy soak: steady mixed load'\n"
                "set grid\nset key top left\nset xlabel 'minutes under load'\n"
                + "\n".join(panels) + "\nunset multiplot\n")


if __name__ == "__main__":
    main()
