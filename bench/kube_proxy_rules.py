#!/usr/bin/env python3
"""Generate kube-proxy's iptables layout for N Services, as `iptables-restore` input.

The peer of the services benchmark: what kube-proxy (mode iptables) programs in the nat
table of every node for N ClusterIP Services with one endpoint each:

    PREROUTING/OUTPUT -> KUBE-SERVICES
    KUBE-SERVICES: one rule per Service (-d VIP -p tcp --dport P -j KUBE-SVC-<hash>),
                   and last the KUBE-NODEPORTS jump (addrtype LOCAL)
    KUBE-SVC-<hash>: masquerade mark for off-cluster sources, then -j KUBE-SEP-<hash>
    KUBE-SEP-<hash>: hairpin masquerade mark, then DNAT to the endpoint
    KUBE-POSTROUTING: MASQUERADE what carries the mark

Chain names follow kube-proxy's scheme (the first 16 characters of base32(sha256(...))).
Service i gets VIP = the i-th address after --vip-base; all Services share the endpoints
given with --endpoint (round-robin), so the last Service is a real, reachable one and a new
connection to it walks the whole KUBE-SERVICES chain, as it does in a real cluster.
kube-proxy writes one KUBE-SERVICES rule, KUBE-SVC chain and KUBE-SEP chain per Service
*port*: with --ports-per-service P, the N service ports are grouped into Services of P
ports (VIP --vip-base + i // P, port --port + i % P, port names p0..p<P-1>).

Usage: kube_proxy_rules.py --services N --vip-base 10.96.0.10 --port 80 \
           --endpoint 10.244.1.5:8080 [--endpoint ...] --cluster-cidr 10.244.0.0/16 \
           [--ports-per-service P]
Prints the rules on stdout. Pure text: it changes nothing by itself.
"""

import argparse
import base64
import hashlib
import ipaddress
import sys


def chain(prefix: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, required=True)
    ap.add_argument("--vip-base", required=True, type=ipaddress.IPv4Address)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument(
        "--ports-per-service",
        type=int,
        default=1,
        help="group the N service ports into Services of this many ports (default 1)",
    )
    ap.add_argument("--endpoint", action="append", required=True, help="IP:PORT")
    ap.add_argument("--cluster-cidr", required=True)
    args = ap.parse_args()
    if args.services < 1:
        ap.error("--services: must be at least 1")
    per = args.ports_per_service
    if per < 1 or args.port + per - 1 > 65535:
        ap.error("--ports-per-service: at least 1, and --port + it - 1 at most 65535")
    endpoints = []
    for ep in args.endpoint:
        ip, _, port = ep.rpartition(":")
        try:
            endpoints.append((ipaddress.IPv4Address(ip), int(port)))
        except ValueError:
            ap.error(f"--endpoint {ep!r}: expected IPv4:PORT")

    out = sys.stdout
    svc_chains, sep_chains, rules = [], [], []
    for i in range(args.services):
        # Service port i: port k of Service s (one port: the port `http` of Service i).
        s, k = divmod(i, per)
        vip = args.vip_base + s
        port = args.port + k
        name = f"bench/svc-{s}:http" if per == 1 else f"bench/svc-{s}:p{k}"
        svc = chain("KUBE-SVC-", name + "tcp")
        ep_ip, ep_port = endpoints[i % len(endpoints)]
        sep = chain("KUBE-SEP-", f"{name}tcp{ep_ip}:{ep_port}")
        svc_chains.append(svc)
        sep_chains.append(sep)
        comment = f'"{name} cluster IP"'
        rules.append(
            f"-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment {comment} "
            f"-m tcp --dport {port} -j {svc}"
        )
        rules.append(
            f"-A {svc} ! -s {args.cluster_cidr} -d {vip}/32 -p tcp -m comment --comment {comment} "
            f"-m tcp --dport {port} -j KUBE-MARK-MASQ"
        )
        rules.append(f'-A {svc} -m comment --comment "{name} -> {ep_ip}:{ep_port}" -j {sep}')
        rules.append(f'-A {sep} -s {ep_ip}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
        rules.append(
            f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp '
            f"-j DNAT --to-destination {ep_ip}:{ep_port}"
        )

    out.write("*nat\n")
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]:
        out.write(f":{c} - [0:0]\n")
    for c in svc_chains + sep_chains:
        out.write(f":{c} - [0:0]\n")
    out.write('-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n')
    out.write('-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n')
    out.write('-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING\n')
    out.write("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n")
    out.write("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n")
    out.write("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n")
    out.write(
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully\n"
    )
    out.write("\n".join(rules))
    out.write("\n")
    out.write(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
        'the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n'
    )
    out.write("COMMIT\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
