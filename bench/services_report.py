#!/usr/bin/env python3
"""Renders bench/services.sh's raw figures as a Markdown report: connection setup to the
last of N Services for fibril and the iptables peer, its growth against N = 1, how long
programming took, the fibril agent's resources, and issue 4's goals with PASS/MISS.

Usage:
  services_report.py meta NOTES_FILE > meta.json     (the rest of the metadata from B_* env)
  services_report.py report RESULTS_TSV META_JSON > report.md
  RESULTS_TSV: lines `setup <TAB> path <TAB> N <TAB> metric <TAB> value` (value `-` if failed)
"""

import json
import os
import sys

MIB = 1024.0
RSS_GOAL_MIB = 64.0
GROWTH_GOAL = 1.05
PROGRAM_GOAL_MS = 1000.0


def load(path):
    figures = {}
    for line in open(path):
        line = line.rstrip("\n")
        if not line:
            continue
        setup, where, n, metric, value = line.split("\t")
        try:
            figures[(setup, where, int(n), metric)] = float(value)
        except ValueError:
            figures[(setup, where, int(n), metric)] = None
    return figures


def fmt(v, digits=1):
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def fmt_n(n):
    return f"{n:,}"


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}×"


def meta(notes_path):
    e = os.environ
    reps, secs, connects = e["B_REPS"], e["B_SECONDS"], e["B_CONNECTS"]
    mode = e["B_SVC_MODE"]
    how_services = (
        "Services with the selector `app: server`; the lab's EndpointSlice controller wrote "
        "their slices (one endpoint each: the server pod)"
        if mode == "selector"
        else "selector-less Services, each created with one EndpointSlice listing the server "
        "pod (written by the bench, as a controller would)"
    )
    ports = e["B_PORTS"]
    method = [
        "Four labs of 2 nodes each, all with `--service-cidr "
        f"{e['B_SERVICE_CIDR']}` and without their cluster DNS (its Deployment is deleted after "
        "`lab up`: the bench resolves no name, and the DNS server rebuilds its zone on every "
        "Service change): **fibril** and **fibril-ref** (`--cni fibril`, native routing), the "
        "**iptables peer** and **iptables-ref** (`--cni bridge`, the reference bridge plugin; "
        "the lab runs no kube-proxy). Same pods in all: `server` (the lab's `fibril/echo` HTTP "
        "server on port 8080, label `app: server`) on node 2, `client-cross` on node 1 and "
        "`client-same` on node 2. fibril and iptables hold N Service ports; the two `-ref` "
        "labs hold 1 all along and are measured in the same rounds, so that \"the cost at 1 "
        "Service\" is taken at the same moment as the cost at N (a run is long, and other jobs "
        "on the machine come and go).",
        "N counts Service ports (frontends: ClusterIP and port), which is what a new connection "
        "is looked up against: kube-proxy writes one KUBE-SERVICES rule, one KUBE-SVC chain and "
        "one KUBE-SEP chain per Service port, fibril one service map entry (with its backend "
        "list). In both setups they come in Services of up to "
        f"{ports} ports (TCP 80, 81, …, all to the pods' 8080). Why not N one-port Services: "
        "the lab API server's Service create collects every existing Service to allocate a "
        "ClusterIP (`InUse::collect` in crates/fibril-apiserver), so creating Services is "
        "O(existing Services) each, and 100k would take hours (the agent section gives how long "
        f"its {e['B_RES_SERVICES']} one-port Services took to create). The agent figures use "
        "real one-port Services.",
        f"fibril: the Services `bench/svc-<i>` are {how_services}, created through the lab API "
        f"server's unix socket by `bench/svc_load.py` ({e['B_WORKERS']} requests in flight), N "
        "growing from one step to the next. A step is measured once both agents' status shows "
        "every frontend with its backend and no sync error; `fibril bpf services` then confirms "
        "node 1's pinned maps (the notes give the count and the last port's backend).",
        "iptables peer: for each N, `bench/kube_proxy_rules.py` generates kube-proxy's nat "
        "layout (PREROUTING/OUTPUT → KUBE-SERVICES: one rule per Service port → KUBE-SVC-<hash> "
        "(masquerade mark for off-cluster sources) → KUBE-SEP-<hash> (hairpin mark, DNAT); "
        "KUBE-NODEPORTS last; KUBE-POSTROUTING masquerade) and `iptables-restore` replaces the "
        "nat table of the client's node (node 1) only, through `fibril lab exec --node`. Every "
        "endpoint is the server pod, and a connection to the last Service port walks the whole "
        "KUBE-SERVICES chain, as in a cluster (the notes give the packets its KUBE-SVC chain "
        "counted). Only cross-node is measured: same-node, the server's replies are bridged "
        "straight back to the client and would need br_netfilter (a global module, not loaded) "
        "to be un-DNATed.",
        "Every setup targets its LAST Service port, from `client-cross` (node 1 → node 2; "
        f"fibril also from `client-same`). For each N, {reps} rounds, each running every setup "
        f"in turn (wrk for all, then connect times for all, starting with another setup each round); a figure is the median of its "
        f"{reps} runs (each run is in the .tsv).",
        f"new connections/s: `wrk {e['B_WRK']} -d{secs}s -H 'Connection: close'`: one request "
        "per TCP connection, so Requests/sec = connections/s; not pinned.",
        f"connect time: `bench/connect_rtt.py`, {connects} connections one after the other "
        "(after 100 warm-up ones): a non-blocking connect(), then poll() until the socket is "
        "writable (the SYN-ACK arrived), timed with CLOCK_MONOTONIC; closed with an RST "
        "(SO_LINGER 0) so no TIME_WAIT piles up. The median and p99 are of one run's samples; "
        "the tables give the median of the rounds' medians (p99s). It includes Python's own "
        "overhead (a few µs), the same for every setup.",
        "Growth: `cost(N) / cost(1)`, the cost being the connect time (median, p99) or the time "
        "per connection (1 / conn/s, so the ratio is conn/s(1) / conn/s(N)); above 1 means "
        "dearer than with 1 Service port. The goal is checked against the `-ref` lab of the same "
        "rounds; the ratio against the lab's own first step is shown too.",
        f"Agent figures: a separate fibril lab (1 node, pod CIDR 10.240.0.0/12) with "
        f"{e['B_RES_SERVICES']} selector-less Services, each with one EndpointSlice of "
        f"{e['B_RES_ENDPOINTS']} ready endpoints at distinct addresses of the pod CIDR (no such "
        "pods: the datapath only needs addresses). RSS is VmRSS (and the peak, VmHWM) from "
        "/proc/<pid>/status of the node's agent process (its PID from the lab supervisor's "
        "components file); CPU is utime + stime from /proc/<pid>/stat. Idle: over "
        f"{e['B_RES_IDLE']} s, which holds one of the agent's periodic (30 s) resync passes "
        "(translation of every Service, no map write when nothing changed).",
        "Full resync: SIGTERM to the agent; the lab supervisor starts a new one (as a "
        "DaemonSet restarts a pod) which lists every Service and EndpointSlice, translates them "
        "for the node, reads the pinned service maps back and diffs: nothing to write. Its CPU "
        "and peak RSS are taken at its first `service maps synced` log line, and the wall time "
        "from the process's start to that line.",
        "Programming from empty maps: as after a node reboot (bpffs starts empty), the service "
        "maps' pins (fibril_svc, fibril_svc_be, fibril_svc_memb, fibril_svc_aff, "
        "fibril_svc_meta, fibril_ct) are removed and the agent restarted: it creates new, empty "
        "maps, and its first sync writes every Service. The figure is that sync's own "
        "`elapsed_ms` from the agent's log (the agent's timer around `Datapath::sync_services`: "
        "validating the table, reading the empty maps back, planning, and every map write for "
        "frontends, backends and meta); it excludes listing the objects from the API server "
        "and translating them, which the wall time from process start covers.",
        f"The machine has {os.cpu_count()} CPUs shared by clients, servers, both labs' control "
        "planes and, during this run, other jobs (see the notes): compare figures within one "
        "run, not across runs.",
    ]
    json.dump(
        {
            "date": e["B_DATE"],
            "commit": e["B_COMMIT"],
            "host": e["B_HOST"],
            "services": [int(n) for n in e["B_SERVICES"].split()],
            "ports": int(e["B_PORTS"]),
            "res_services": int(e["B_RES_SERVICES"]),
            "res_endpoints": int(e["B_RES_ENDPOINTS"]),
            "kernel": e["B_KERNEL"],
            "cpu": e["B_CPU"],
            "tools": e["B_TOOLS"],
            "method": method,
            "notes": [l.rstrip() for l in open(notes_path) if l.strip()],
        },
        sys.stdout,
        indent=1,
        ensure_ascii=False,
    )


def report(results_path, meta_path):
    f = load(results_path)
    m = json.load(open(meta_path))
    ns = m["services"]
    out = []
    w = out.append
    g = lambda s, p, n, metric: f.get((s, p, n, metric))

    w(f"# Services benchmark, {m['date']}\n")
    w(f"One run of `bench/services.sh` on {m['host']}: fibril {m['commit']}. "
      "The raw figures, each run included, are in the .tsv next to this file.\n")

    def measured(setup, path):
        return [n for n in ns if g(setup, path, n, "conn_per_s") is not None
                or g(setup, path, n, "rtt_median_us") is not None]

    fib_ns, ipt_ns = measured("fibril", "cross"), measured("iptables", "cross")
    for setup, got in (("fibril", fib_ns), ("the iptables peer", ipt_ns)):
        missing = [n for n in ns if n not in got]
        if missing:
            w(f"**{setup} was not measured at N = {', '.join(fmt_n(n) for n in missing)}**: "
              "see the notes for why.\n")
    w("N is the number of Service ports (frontends: ClusterIP and port), what both datapaths "
      "look up for a new connection; they come in Services of up to "
      f"{m['ports']} ports (see How it was measured). `fibril-ref` and `iptables-ref` are "
      "identical labs holding 1 Service port all along, measured in the same rounds: the "
      "cost at 1 Service, at the same moment.\n")

    def cell(setup, path, n, metric, digits=1):
        return fmt(g(setup, path, n, metric), digits)

    def rtt_cell(setup, path, n):
        med, p99 = g(setup, path, n, "rtt_median_us"), g(setup, path, n, "rtt_p99_us")
        return "—" if med is None else f"{fmt(med)} ({fmt(p99)})"

    w("## Connection setup to the last Service port, cross-node\n")
    w("Client pod on node 1, server pod on node 2, through the last Service port's ClusterIP. "
      "Connect time: median (p99) in µs.\n")
    w("| N | fibril conn/s | fibril-ref conn/s | iptables conn/s | iptables-ref conn/s | fibril connect | fibril-ref connect | iptables connect | iptables-ref connect |")
    w("|---|---|---|---|---|---|---|---|---|")
    for n in ns:
        cells = [cell(s_, "cross", n, "conn_per_s", 0) for s_ in ("fibril", "fibril-ref", "iptables", "iptables-ref")]
        cells += [rtt_cell(s_, "cross", n) for s_ in ("fibril", "fibril-ref", "iptables", "iptables-ref")]
        w(f"| {fmt_n(n)} | " + " | ".join(cells) + " |")
    w("")
    if any(g("fibril", "same", n, "conn_per_s") is not None for n in ns):
        w("fibril, same-node (client and server pods on node 2; the iptables peer is not measured "
          "same-node, see How it was measured):\n")
        w("| N | fibril conn/s | fibril-ref conn/s | fibril connect | fibril-ref connect |")
        w("|---|---|---|---|---|")
        for n in ns:
            w(f"| {fmt_n(n)} | {cell('fibril', 'same', n, 'conn_per_s', 0)} | {cell('fibril-ref', 'same', n, 'conn_per_s', 0)} | "
              f"{rtt_cell('fibril', 'same', n)} | {rtt_cell('fibril-ref', 'same', n)} |")
        w("")

    base = ns[0]

    def cost_ratio(a, b, metric):
        if a is None or b is None or a == 0 or b == 0:
            return None
        return b / a if metric == "conn_per_s" else a / b

    def growth_ref(setup, path, n, metric):
        """Against the 1-port reference lab measured in the same rounds."""
        return cost_ratio(g(setup, path, n, metric), g(setup + "-ref", path, n, metric), metric)

    def growth_first(setup, path, n, metric):
        """Against the same lab at the first step."""
        return cost_ratio(g(setup, path, n, metric), g(setup, path, base, metric), metric)

    metrics = (("conn_per_s", "per connection"), ("rtt_median_us", "connect median"), ("rtt_p99_us", "connect p99"))
    for title, fn, intro in (
        ("Growth: cost at N / cost at 1 Service port, the reference measured in the same rounds",
         growth_ref,
         "The cost of a connection: the time per connection (1 / conn/s) or the connect time. "
         "Above 1: dearer than with one Service port. At the first step both labs hold the same "
         "(one Service port): that row shows the spread between two identical labs."),
        (f"Growth: cost at N / cost at N = {fmt_n(base)} in the same lab (earlier in the run)",
         growth_first,
         "The same ratio against the lab's own first step, minutes earlier: it also carries "
         "whatever else the machine was doing then and now."),
    ):
        w(f"## {title}\n")
        w(intro + "\n")
        w("| N | path | " + " | ".join(f"fibril: {t} | iptables: {t}" for _, t in metrics) + " |")
        w("|---|---|" + "---|" * (2 * len(metrics)))
        for path in ("cross", "same"):
            for n in ns:
                if g("fibril", path, n, "conn_per_s") is None and g("iptables", path, n, "conn_per_s") is None:
                    continue
                cells = []
                for mt, _ in metrics:
                    cells.append(fmt_ratio(fn("fibril", path, n, mt)))
                    cells.append(fmt_ratio(fn("iptables", path, n, mt)) if path == "cross" else "n/a")
                w(f"| {fmt_n(n)} | {path}-node | " + " | ".join(cells) + " |")
        w("")

    w("## Programming the Services\n")
    w("| N | fibril: bench Services in all | fibril: creating the step's Services (s) | fibril: until both agents held all N (s) | fibril: bench frontends in node 1's maps | fibril agent RSS node 1 / node 2 (MiB) | iptables: iptables-restore of the whole layout (s) |")
    w("|---|---|---|---|---|---|---|")
    for n in ns:
        r1, r2 = g("fibril", "node-1", n, "agent_rss_kib"), g("fibril", "node-2", n, "agent_rss_kib")
        rss = "—" if r1 is None else f"{r1 / MIB:.1f} / {'—' if r2 is None else f'{r2 / MIB:.1f}'}"
        fe = g("fibril", "node-1", n, "datapath_frontends")
        sv = g("fibril", "api", n, "services")
        w(f"| {fmt_n(n)} | {'—' if sv is None else fmt_n(int(sv))} | {fmt(g('fibril', 'api', n, 'create_s'), 2)} | {fmt(g('fibril', 'api', n, 'programmed_s'), 2)} | "
          f"{'—' if fe is None else fmt_n(int(fe))} | {rss} | {fmt(g('iptables', 'api', n, 'restore_s'), 2)} |")
    w("")
    w("fibril's step times are the lab API server's and controllers' (Service creation, "
      "EndpointSlices, watches), not the datapath's: the datapath's own time is in the agent "
      "section. The iptables time is one `iptables-restore` of the full nat table, which is "
      "what kube-proxy runs on every sync.\n")

    rn = m["res_services"]
    a = lambda metric: g("agent", "node-1", rn, metric)
    w(f"## fibril agent with {fmt_n(rn)} Services / {fmt_n(rn * m['res_endpoints'])} endpoints\n")
    w("| figure | value |")
    w("|---|---|")
    kib = lambda v: "—" if v is None else f"{v / MIB:.1f} MiB"
    rows = [
        ("RSS before the bench's Services (VmRSS)", kib(g("agent", "node-1", 0, "rss_kib"))),
        ("idle: RSS (VmRSS), the agent that saw every Service arrive", kib(a("idle_rss_kib"))),
        ("idle: peak RSS so far (VmHWM), same agent", kib(a("idle_hwm_kib"))),
        ("idle: CPU", "—" if a("idle_cpu_pct") is None else f"{a('idle_cpu_pct'):.2f}% of one CPU"),
        ("full resync (restart): wall time from process start to its first sync", "—" if a("resync_wall_ms") is None else f"{a('resync_wall_ms'):,.0f} ms"),
        ("full resync: CPU used by then", "—" if a("resync_cpu_s") is None else f"{a('resync_cpu_s'):.2f} s"),
        ("full resync: the sync itself (read-back + diff, datapath)", "—" if a("resync_sync_ms") is None else f"{a('resync_sync_ms'):.1f} ms"),
        ("full resync: peak RSS (VmHWM)", kib(a("resync_hwm_kib"))),
        ("after the resync, idle: RSS (VmRSS)", kib(a("restarted_rss_kib"))),
        ("after the resync, idle: peak RSS (VmHWM)", kib(a("restarted_hwm_kib"))),
        ("after the resync, idle: CPU", "—" if a("restarted_idle_cpu_pct") is None else f"{a('restarted_idle_cpu_pct'):.2f}% of one CPU"),
        ("from empty maps: frontends added by the first sync", "—" if a("empty_added") is None else fmt_n(int(a("empty_added")))),
        ("from empty maps: the sync's datapath programming time", "—" if a("empty_sync_ms") is None else f"{a('empty_sync_ms'):.1f} ms"),
        ("from empty maps: wall time from process start to that sync", "—" if a("empty_wall_ms") is None else f"{a('empty_wall_ms'):,.0f} ms"),
        ("from empty maps: peak RSS (VmHWM)", kib(a("empty_hwm_kib"))),
        ("creating the Services and their EndpointSlices (lab API server)", "—" if a("create_s") is None else f"{a('create_s'):,.1f} s"),
        ("while the Services were created: syncs, and their datapath time in all",
         "—" if a("incremental_syncs") is None else f"{a('incremental_syncs'):.0f} syncs, {a('incremental_sync_total_ms'):.1f} ms"),
    ]
    for k, v in rows:
        w(f"| {k} | {v} |")
    w("")

    w("## Goals (issue 4, acceptance 4)\n")
    w("| goal | measured | result |")
    w("|---|---|---|")
    top_f = fib_ns[-1] if fib_ns else None
    top_i = ipt_ns[-1] if ipt_ns else None
    biggest = ns[-1]
    for metric, what in (("rtt_median_us", "connect time (median)"), ("conn_per_s", "time per connection (1 / conn/s)")):
        if top_f is None:
            w(f"| fibril {what} at {fmt_n(biggest)} ≤ {GROWTH_GOAL}× at 1 | not measured | — |")
            continue
        r, r1 = growth_ref("fibril", "cross", top_f, metric), growth_first("fibril", "cross", top_f, metric)
        res = "—" if r is None else ("PASS" if r <= GROWTH_GOAL else "**MISS**")
        if top_f != biggest:
            res += f" (only up to N = {fmt_n(top_f)})"
        w(f"| fibril {what} at {fmt_n(biggest)} Service ports ≤ {GROWTH_GOAL}× at 1, cross-node | "
          f"{fmt_ratio(r)} against fibril-ref at N = {fmt_n(top_f)} (against its own first step: {fmt_ratio(r1)}) | {res} |")
    for metric, what in (("rtt_median_us", "connect time (median)"), ("conn_per_s", "time per connection")):
        if top_i is None:
            continue
        r, r1 = growth_ref("iptables", "cross", top_i, metric), growth_first("iptables", "cross", top_i, metric)
        grows = "—" if r is None else ("yes" if r > GROWTH_GOAL else "**no**")
        w(f"| … while the iptables peer's {what} grows | {fmt_ratio(r)} against iptables-ref at N = {fmt_n(top_i)} "
          f"(against its own first step: {fmt_ratio(r1)}) | grows: {grows} |")
    rss = [a(k) for k in ("idle_rss_kib", "restarted_rss_kib") if a(k) is not None]
    hwm = [a(k) for k in ("idle_hwm_kib", "resync_hwm_kib", "restarted_hwm_kib", "empty_hwm_kib") if a(k) is not None]
    for vals, what in ((rss, "idle RSS (VmRSS, the larger of the two agents)"), (hwm, "peak RSS (VmHWM, the largest seen)")):
        if vals:
            v = max(vals) / MIB
            w(f"| agent {what} < {RSS_GOAL_MIB:.0f} MiB at {fmt_n(rn)} Services / {fmt_n(rn * m['res_endpoints'])} endpoints | "
              f"{v:.1f} MiB | {'PASS' if v < RSS_GOAL_MIB else '**MISS**'} |")
        else:
            w(f"| agent {what} < {RSS_GOAL_MIB:.0f} MiB | not measured | — |")
    v = a("empty_sync_ms")
    w(f"| {fmt_n(rn)} Services programmed into empty maps in < 1 s (the sync's datapath time) | "
      f"{'not measured' if v is None else f'{v:.1f} ms'} | {'—' if v is None else ('PASS' if v < PROGRAM_GOAL_MS else '**MISS**')} |")
    w("")

    w("## How it was measured\n")
    for line in m["method"]:
        w(f"- {line}")
    w("")
    if m.get("notes"):
        w("## Notes from the run\n")
        for line in m["notes"]:
            w(f"- {line}")
        w("")
    w("## Environment\n")
    for k in ("kernel", "cpu", "tools"):
        if m.get(k):
            w(f"- {k}: {m[k]}")
    print("\n".join(out))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "meta":
        meta(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
