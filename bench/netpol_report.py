#!/usr/bin/env python3
"""The NetworkPolicy benchmark's report (Markdown) from bench/netpol.sh's raw figures.

Usage: netpol_report.py RESULTS.tsv NOTES.txt  (run metadata in B_* environment variables)

RESULTS.tsv rows: server (open/one/many), path (same/cross/node), metric[#run], value.
"""
import collections
import os
import statistics
import sys

SERVERS = ["open", "one", "many"]
PATHS = [("same", "same-node"), ("cross", "cross-node")]
# metric, label, unit, lower is better
FIGURES = [
    ("rr_avg_us", "TCP_RR RTT avg, 1 CPU", "µs", True),
    ("rr_p50_us", "TCP_RR RTT p50, 1 CPU", "µs", True),
    ("rr_p99_us", "TCP_RR RTT p99, 1 CPU", "µs", True),
    ("conn_per_s", "new connections/s", "conn/s", False),
]
GOAL = 1.05


def load(path):
    runs = collections.defaultdict(dict)  # (server, path, metric) -> {run: value}
    single = {}
    for line in open(path):
        if not line.strip():
            continue
        server, where, metric, value = line.rstrip("\n").split("\t")
        if value in ("-", ""):
            continue
        if "#" in metric:
            name, run = metric.split("#")
            runs[(server, where, name)][int(run)] = float(value)
        else:
            single[(server, metric)] = float(value)
    return runs, single


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "conn/s":
        return f"{v:,.0f}"
    return f"{v:.1f}"


def main():
    runs, single = load(sys.argv[1])
    notes = [l.rstrip() for l in open(sys.argv[2]) if l.strip()]
    e = os.environ
    n = e["B_POLICIES"]

    def median(server, where, metric):
        v = runs.get((server, where, metric))
        return statistics.median(v.values()) if v else None

    out = []
    out.append(f"# NetworkPolicy benchmark, {e['B_DATE']}\n")
    out.append(
        f"One run of `bench/netpol.sh` on {e['B_HOST']}, kernel {e['B_KERNEL']}: fibril "
        f"{e['B_COMMIT']}. Tools: {e['B_TOOLS']}.\n"
    )
    out.append(
        f"One fibril lab (2 nodes, native routing). Three server pods on node 1, each in its "
        f"own namespace: **open** (no policy selects it), **one** (1 policy selects it: it "
        f"admits the clients on the benchmark ports) and **many** ({n} policies select it: the "
        f"same admitting policy plus {int(n) - 1} others with ipBlock /32s, /24s with except "
        f"lists, namespace selectors and port ranges). Clients in pods on node 1 (same-node) "
        f"and node 2 (cross-node). {e['B_REPS']} rounds; in each, every figure is measured "
        f"for every server in turn ({e['B_SECONDS']} s runs, the servers' order rotating "
        f"from round to round); a figure is the median of its {e['B_REPS']} runs (every run "
        f"is in the .tsv).\n"
    )
    out.append("- TCP_RR: `sockperf ping-pong --tcp --full-rtt`, client and server pinned to "
               f"CPU {e['B_CPU']}: one connection, so after its first packet every packet takes "
               "the policy conntrack path of an isolated endpoint (open: no policy lookup).")
    out.append(f"- new connections/s: `wrk {e['B_WRK']} -H 'Connection: close'` against "
               "fibril/echo, not pinned: every connection's first packet takes the full "
               "lookup (ipcache LPM, then the endpoint's policy map).\n")

    out.append("## Figures\n")
    out.append("| figure | path | open (no policy) | one (1 policy) | many "
               f"({n} policies) |")
    out.append("|---|---|---|---|---|")
    for metric, label, unit, _ in FIGURES:
        for where, wlabel in PATHS:
            cells = [fmt(median(s, where, metric), unit) for s in SERVERS]
            out.append(f"| {label} ({unit}) | {wlabel} | " + " | ".join(cells) + " |")

    out.append("\n## Ratios\n")
    out.append("For µs lower is better (above 1 is slower); for conn/s higher is better. "
               "`per round` is the ratio within each round (min-max), which shows the noise of "
               "the machine. The goal is checked on the average (as the pod-networking "
               "benchmark does) and on the median RTT, which a burst of other work on the "
               "machine moves less; the datapath's cost is in every packet, so it moves both.\n")
    out.append("| figure | path | many / one | per round | one / open | goal |")
    out.append("|---|---|---|---|---|---|")
    for metric, label, unit, lower in FIGURES:
        for where, wlabel in PATHS:
            m, o, z = (median(s, where, metric) for s in ("many", "one", "open"))
            ratio = m / o if m and o else None
            base = o / z if o and z else None
            per = []
            a = runs.get(("many", where, metric), {})
            b = runs.get(("one", where, metric), {})
            for r in sorted(set(a) & set(b)):
                if b[r]:
                    per.append(a[r] / b[r])
            spread = f"{min(per):.3f}-{max(per):.3f}" if per else "n/a"
            goal = ""
            if metric in ("rr_avg_us", "rr_p50_us") and ratio is not None:
                goal = f"≤ {GOAL}×: " + ("PASS" if ratio <= GOAL else "**MISS**")
            out.append(
                f"| {label} | {wlabel} | "
                f"{'n/a' if ratio is None else f'{ratio:.3f}×'} | {spread} | "
                f"{'n/a' if base is None else f'{base:.3f}×'} | {goal} |"
            )

    out.append(f"\n## Programming {n} policies (node 1's agent)\n")
    rows = [
        ("apply_ms", "`lab apply` of the policies (API writes, one request each)"),
        ("agent_has_all_ms", "from the start of `lab apply` until node 1's agent reported all "
                             "of them, both servers isolated"),
        ("compile_ms", "the agent's last compile of the whole cluster state (every policy, "
                       "identity and endpoint, from scratch)"),
        ("sync_ms", "the map sync after it (ipcache and policy maps, only what differs)"),
        ("recompile_ms", "one more policy on top: the compile"),
        ("resync_ms", "one more policy on top: the map sync (the many server's map "
                      "rewritten under a new generation)"),
    ]
    out.append("| what | ms |")
    out.append("|---|---|")
    for key, what in rows:
        v = single.get(("many", key))
        out.append(f"| {what} | {'n/a' if v is None else f'{v:,.1f}'} |")

    out.append("\n## Notes from the run\n")
    for l in notes:
        out.append(f"- {l}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
