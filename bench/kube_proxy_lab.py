#!/usr/bin/env python3
"""kube-proxy's iptables rules (mode iptables) for a lab's own Services, as
`iptables-restore --noflush` input: the bridge-CNI peer of pod-networking.sh with the
kube-proxy a bridge-CNI node runs to have Services at all.

What kube-proxy programs on every node (kube-proxy 1.29+, no NodePorts or LoadBalancers
in the lab's Services):
- nat: PREROUTING/OUTPUT -> KUBE-SERVICES, one rule per Service port (-d ClusterIP -p P
  --dport D -j KUBE-SVC-*), then the KUBE-NODEPORTS jump (addrtype LOCAL); KUBE-SVC-*:
  the masquerade mark for sources outside the cluster CIDR, then one KUBE-SEP-* per
  endpoint (statistic random, as kube-proxy spreads them); KUBE-SEP-*: hairpin mark, DNAT;
  POSTROUTING -> KUBE-POSTROUTING (MASQUERADE what carries the mark);
- filter: INPUT, FORWARD and OUTPUT jump to kube-proxy's chains: KUBE-PROXY-FIREWALL and
  KUBE-SERVICES / KUBE-EXTERNAL-SERVICES for new connections, KUBE-FORWARD for every
  forwarded packet (drop ctstate INVALID, accept the masquerade mark and
  RELATED,ESTABLISHED), KUBE-FIREWALL (localnet guard), KUBE-NODEPORTS.

Chain names follow kube-proxy's scheme (kube_proxy_rules.chain). The rule set is written
as kube-proxy writes it; pod-to-pod traffic matches none of its DNAT rules, it only pays
for conntrack and for walking the chains, as it does on a real node.

Usage: kube_proxy_lab.py SERVICES_JSON ENDPOINTSLICES_JSON --cluster-cidr CIDR
  (the `-o json` lists of `fibril lab get services -A` and `... endpointslices -A`)
Prints the rules on stdout and, on stderr, the number of Service ports and endpoints.
"""

import argparse
import json
import os
import sys

sys.dont_write_bytecode = True  # no bench/__pycache__ from the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kube_proxy_rules import chain  # noqa: E402  (same directory)


def endpoints_of(slices, ns, svc, port_name, proto):
    """Ready endpoint addresses and the target port of a Service port, from its slices."""
    out = []
    for s in slices:
        meta = s.get("metadata", {})
        if meta.get("namespace") != ns:
            continue
        if meta.get("labels", {}).get("kubernetes.io/service-name") != svc:
            continue
        port = next(
            (p.get("port") for p in s.get("ports") or []
             if (p.get("name") or "") == port_name and (p.get("protocol") or "TCP") == proto),
            None,
        )
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready", True):
                out.extend((a, port) for a in ep.get("addresses") or [])
    return sorted(set(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("services")
    ap.add_argument("slices")
    ap.add_argument("--cluster-cidr", required=True)
    args = ap.parse_args()
    services = json.load(open(args.services)).get("items", [])
    slices = json.load(open(args.slices)).get("items", [])

    chains, nat, n_ports, n_eps = [], [], 0, 0
    for svc in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        spec = svc.get("spec", {})
        vip = spec.get("clusterIP")
        if not vip or vip == "None":
            continue
        for p in spec.get("ports") or []:
            proto = p.get("protocol") or "TCP"
            pname = p.get("name") or ""
            lp = proto.lower()
            key = f"{ns}/{name}:{pname}"
            svc_chain = chain("KUBE-SVC-", key + lp)
            comment = f'"{key} cluster IP"'
            eps = endpoints_of(slices, ns, name, pname, proto)
            n_ports += 1
            n_eps += len(eps)
            if not eps:
                continue  # kube-proxy rejects these in filter KUBE-SERVICES instead
            chains.append(svc_chain)
            nat.append(f"-A KUBE-SERVICES -d {vip}/32 -p {lp} -m comment --comment {comment} "
                       f"-m {lp} --dport {p['port']} -j {svc_chain}")
            nat.append(f"-A {svc_chain} ! -s {args.cluster_cidr} -d {vip}/32 -p {lp} -m comment "
                       f"--comment {comment} -m {lp} --dport {p['port']} -j KUBE-MARK-MASQ")
            for i, (ip, port) in enumerate(eps):
                sep = chain("KUBE-SEP-", f"{key}{lp}{ip}:{port}")
                chains.append(sep)
                left = len(eps) - i
                prob = "" if left == 1 else f"-m statistic --mode random --probability {1 / left:.10f} "
                nat.append(f'-A {svc_chain} -m comment --comment "{key} -> {ip}:{port}" {prob}-j {sep}')
                nat.append(f'-A {sep} -s {ip}/32 -m comment --comment "{key}" -j KUBE-MARK-MASQ')
                nat.append(f'-A {sep} -p {lp} -m comment --comment "{key}" -m {lp} '
                           f"-j DNAT --to-destination {ip}:{port}")

    w = sys.stdout.write
    w("*nat\n")
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] + chains:
        w(f":{c} - [0:0]\n")
    w('-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n')
    w('-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n')
    w('-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING\n')
    w("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n")
    w("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n")
    w("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n")
    w('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
      "-j MASQUERADE --random-fully\n")
    for line in nat:
        w(line + "\n")
    w('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
      'the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n')
    w("COMMIT\n")

    w("*filter\n")
    for c in ["KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-NODEPORTS",
              "KUBE-PROXY-FIREWALL", "KUBE-SERVICES"]:
        w(f":{c} - [0:0]\n")
    new = "-m conntrack --ctstate NEW"
    w(f'-A INPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL\n')
    w('-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS\n')
    w(f'-A INPUT {new} -m comment --comment "kubernetes externally-visible service portals" '
      "-j KUBE-EXTERNAL-SERVICES\n")
    w("-A INPUT -j KUBE-FIREWALL\n")
    w(f'-A FORWARD {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL\n')
    w('-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD\n')
    w(f'-A FORWARD {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n')
    w(f'-A FORWARD {new} -m comment --comment "kubernetes externally-visible service portals" '
      "-j KUBE-EXTERNAL-SERVICES\n")
    w(f'-A OUTPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL\n')
    w(f'-A OUTPUT {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n')
    w("-A OUTPUT -j KUBE-FIREWALL\n")
    w('-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming '
      'localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n')
    w("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n")
    w('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark '
      "0x4000/0x4000 -j ACCEPT\n")
    w('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
      "--ctstate RELATED,ESTABLISHED -j ACCEPT\n")
    w("COMMIT\n")
    print(f"{n_ports} Service ports, {n_eps} endpoints", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
