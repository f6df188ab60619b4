#!/usr/bin/env python3
"""Renders bench/pod-networking.sh's raw figures as a Markdown report: the figures side by
side, their ratios against the direct veth pair and against the bridge CNI, and the
issue's goals with PASS/MISS.

Usage: report.py RESULTS_TSV META_JSON
  RESULTS_TSV: lines `config <TAB> path <TAB> metric <TAB> value` (value `-` when failed)
  META_JSON:   {"date", "commit", "host", "configs", "notes": [...], ...}
"""

import json
import sys

CONFIG_TITLES = {
    "veth": "veth pair",
    "bridge": "bridge CNI",
    "bridge-masq": "bridge CNI + ipMasq",
    "bridge-kp": "bridge CNI + kube-proxy",
    "fibril-native": "fibril native",
    "fibril-tunnel": "fibril tunnel",
}
# metric -> (title, unit, higher is better)
METRICS = {
    "rr_avg_us": ("TCP_RR RTT avg, 1 CPU", "µs", False),
    "rr_p50_us": ("TCP_RR RTT p50, 1 CPU", "µs", False),
    "rr_p99_us": ("TCP_RR RTT p99, 1 CPU", "µs", False),
    "rrx_avg_us": ("TCP_RR RTT avg, 2 CPUs", "µs", False),
    "rrx_p50_us": ("TCP_RR RTT p50, 2 CPUs", "µs", False),
    "rrx_p99_us": ("TCP_RR RTT p99, 2 CPUs", "µs", False),
    "stream_gbps": ("TCP stream, 1 CPU", "Gbit/s", True),
    "conn_per_s": ("new connections/s", "conn/s", True),
    "cni_add_p50_ms": ("CNI ADD p50", "ms", False),
    "cni_add_p99_ms": ("CNI ADD p99", "ms", False),
    "cni_del_p50_ms": ("CNI DEL p50", "ms", False),
}
PATHS = {"same": "same-node", "cross": "cross-node", "node": "one node"}


def load(path):
    figures = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            config, where, metric, value = line.split("\t")
            try:
                figures[(config, where, metric)] = float(value)
            except ValueError:
                figures[(config, where, metric)] = None
    return figures


def fmt(v, unit=""):
    if v is None:
        return "—"
    if unit in ("Gbit/s",) or abs(v) < 10:
        return f"{v:.2f}"
    if abs(v) < 1000:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}×"


def baseline(figures, config, where, metric):
    """The veth pair has one path: it is the baseline for same-node and cross-node."""
    if config == "veth":
        return figures.get(("veth", "same", metric))
    return figures.get((config, where, metric))


def main():
    figures = load(sys.argv[1])
    with open(sys.argv[2]) as f:
        meta = json.load(f)
    configs = [c for c in meta["configs"] if any(k[0] == c for k in figures)]
    labs = [c for c in configs if c != "veth"]
    bridges = [c for c in configs if c.startswith("bridge")]
    subjects = [c for c in configs if c != "veth" and c not in bridges]
    out = []
    w = out.append

    w(f"# Pod networking benchmark, {meta['date']}\n")
    w(f"One run of `bench/pod-networking.sh` on {meta['host']}: fibril {meta['commit']}.")
    w(f"CNI ADD/DEL: {meta['cni_pods']} attachments on one node. The raw figures, each run "
      "included, are in the .tsv next to this file.\n")

    # The figures, side by side.
    head = ["figure", "path"] + [CONFIG_TITLES.get(c, c) for c in configs]
    w("## Figures\n")
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * len(head))
    for metric, (title, unit, _) in METRICS.items():
        for where in ("same", "cross", "node"):
            row = [figures.get((c, where, metric)) for c in configs]
            if all(v is None for v in row) and not any((c, where, metric) in figures for c in configs):
                continue
            cells = []
            for c, v in zip(configs, row):
                if c == "veth" and where == "cross":
                    cells.append("(= same-node)")
                elif (c, where, metric) not in figures:
                    cells.append("n/a")
                else:
                    cells.append(fmt(v, unit))
            w(f"| {title} ({unit}) | {PATHS[where]} | " + " | ".join(cells) + " |")
    w("")

    # Ratios.
    w("## Ratios\n")
    w("`A / B` is A's figure divided by B's. For latencies (µs, ms) lower is better, so a "
      "ratio above 1 means slower; for Gbit/s and conn/s higher is better. The veth pair "
      "has one path, the baseline for both same-node and cross-node.\n")
    pairs = []
    for c in labs:
        if "veth" in configs:
            pairs.append((c, "veth"))
    for c in subjects:
        for b in bridges:
            pairs.append((c, b))
    head = ["figure", "path"] + [f"{CONFIG_TITLES[a]} / {CONFIG_TITLES[b]}" for a, b in pairs]
    if not pairs:
        w("(no pair of configurations to compare in this run)\n")
        metrics_for_ratios = {}
    else:
        metrics_for_ratios = METRICS
        w("| " + " | ".join(head) + " |")
        w("|" + "---|" * len(head))
    for metric, (title, unit, _) in metrics_for_ratios.items():
        for where in ("same", "cross", "node"):
            if not any((c, where, metric) in figures for c in labs):
                continue
            cells = []
            for a, b in pairs:
                if b == "veth" and where == "node":
                    cells.append("n/a")
                    continue
                cells.append(fmt_ratio(ratio(figures.get((a, where, metric)),
                                             baseline(figures, b, where, metric))))
            w(f"| {title} ({unit}) | {PATHS[where]} | " + " | ".join(cells) + " |")
    w("")

    # Goals.
    w("## Goals (issue 3, acceptance 7)\n")
    w("| goal | configuration | path | measured | result |")
    w("|---|---|---|---|---|")

    def goal(text, c, where, r, ok, shown):
        res = "—" if r is None else ("PASS" if ok(r) else "**MISS**")
        w(f"| {text} | {CONFIG_TITLES[c]} | {PATHS[where]} | {shown} | {res} |")

    for c in subjects:
        r = ratio(figures.get((c, "same", "rr_avg_us")), baseline(figures, "veth", "same", "rr_avg_us"))
        r50 = ratio(figures.get((c, "same", "rr_p50_us")), baseline(figures, "veth", "same", "rr_p50_us"))
        goal("TCP_RR ≤ 1.10× veth (avg RTT, 1 CPU)", c, "same", r, lambda r: r <= 1.10,
             f"{fmt_ratio(r)} (p50: {fmt_ratio(r50)})")
        for where in ("same", "cross"):
            r = ratio(figures.get((c, where, "stream_gbps")), baseline(figures, "veth", where, "stream_gbps"))
            goal("stream ≥ 0.85× veth (1 CPU)", c, where, r, lambda r: r >= 0.85, fmt_ratio(r))
        for b in bridges:
            for where in ("same", "cross"):
                r = ratio(figures.get((c, where, "conn_per_s")), figures.get((b, where, "conn_per_s")))
                goal(f"conn/s ≥ 1.5× {CONFIG_TITLES[b]}", c, where, r, lambda r: r >= 1.5, fmt_ratio(r))
        v = figures.get((c, "node", "cni_add_p99_ms"))
        goal("CNI ADD p99 < 50 ms", c, "node", v, lambda v: v < 50.0,
             "—" if v is None else f"{v:.1f} ms")
    w("")

    w("## How it was measured\n")
    for line in meta.get("method", []):
        w(f"- {line}")
    w("")
    if meta.get("notes"):
        w("## Notes from the run\n")
        for line in meta["notes"]:
            w(f"- {line}")
        w("")
    w("## Environment\n")
    for k in ("kernel", "cpu", "tools"):
        if meta.get(k):
            w(f"- {k}: {meta[k]}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
