#!/usr/bin/env python3
"""Writes the `fibril doctor` fixtures: one directory per seed incident, plus `clean/`.

Each directory holds real export formats (Helm values, `kubectl get cm -o yaml`, `ip -j route`,
`sysctl -a`, `iptables-save`, `/etc/cni/net.d`, `kubectl get nodes,ciliumnodes -o json`), an
`args` file with the `fibril doctor` flags (one per line, paths relative to the directory) and
`expected.json`: the exact set of finding ids, and for each the file and key its evidence names.

Run from anywhere: python3 tests/doctor/generate.py
"""
import hashlib
import json
import os
import shutil
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.abspath(__file__))


def write(d, name, text):
    p = os.path.join(ROOT, d, name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text)


def fixture(d, args, expect):
    shutil.rmtree(os.path.join(ROOT, d), ignore_errors=True)
    os.makedirs(os.path.join(ROOT, d))
    write(d, "args", "\n".join(args) + "\n")
    write(d, "expected.json", json.dumps({"findings": expect}, indent=2) + "\n")


def ts(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def route(dst, dev, gateway=None, protocol=None, scope=None, prefsrc=None, metric=None, flags=None):
    r = {"dst": dst}
    if gateway:
        r["gateway"] = gateway
    r["dev"] = dev
    if protocol:
        r["protocol"] = protocol
    if scope:
        r["scope"] = scope
    if prefsrc:
        r["prefsrc"] = prefsrc
    if metric is not None:
        r["metric"] = metric
    r["flags"] = flags or []
    return r


def k8s_node(name, created, ip, pod_cidr=None, labels=None):
    n = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "creationTimestamp": ts(created),
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})},
            "resourceVersion": "1",
            "uid": f"00000000-0000-0000-0000-{int(hashlib.md5(name.encode()).hexdigest()[:10], 16) % 10**12:012d}",
        },
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": ts(created), "lastTransitionTime": ts(created)}],
        },
    }
    if pod_cidr:
        n["spec"]["podCIDR"] = pod_cidr
        n["spec"]["podCIDRs"] = [pod_cidr]
    return n


def cilium_node(name, created, ip, cidr, generation=1, pool_ips=0):
    c = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNode",
        "metadata": {
            "name": name,
            "creationTimestamp": ts(created),
            "generation": generation,
            "resourceVersion": str(1000 + generation),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                                 "uid": f"00000000-0000-0000-0000-{int(hashlib.md5(name.encode()).hexdigest()[:10], 16) % 10**12:012d}"}],
        },
        "spec": {
            "addresses": [{"type": "InternalIP", "ip": ip}],
            "encryption": {},
            "eni": {},
            "health": {},
            "ipam": {},
        },
        "status": {"ipam": {"operator-status": {}}},
    }
    if cidr:
        c["spec"]["ipam"]["podCIDRs"] = [cidr]
        net = cidr.split("/")[0].rsplit(".", 1)[0]
        c["spec"]["addresses"].append({"type": "CiliumInternalIP", "ip": f"{net}.1"})
    if pool_ips:
        # ENI-style IPAM keeps every pre-allocated address in the object.
        c["spec"]["ipam"]["pool"] = {
            f"10.0.{i // 250}.{i % 250 + 2}": {"resource": f"eni-0{i % 7:016x}"} for i in range(pool_ips)
        }
    return c


def node_list(items):
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items,
                       "metadata": {"resourceVersion": ""}}, indent=4) + "\n"


def sysctl(entries):
    return "".join(f"{k} = {v}\n" for k, v in entries)


def base_sysctls(ifaces, rp, svm="0", extra=()):
    out = [("net.core.somaxconn", "4096"), ("net.ipv4.ip_forward", "1")]
    for i in ["all", "default"] + ifaces:
        out += [
            (f"net.ipv4.conf.{i}.accept_local", "0"),
            (f"net.ipv4.conf.{i}.forwarding", "1"),
            (f"net.ipv4.conf.{i}.rp_filter", rp.get(i, "0")),
            (f"net.ipv4.conf.{i}.src_valid_mark", svm if i in ("all",) or i.startswith("eth") or i.startswith("ens") else "0"),
        ]
    out += list(extra)
    out.append(("vm.swappiness", "60"))
    return sysctl(out)


GOOD_VALUES = """\
# Helm values for cilium/cilium
cluster:
  name: {cluster}
k8sServiceHost: {host}
k8sServicePort: 6443
kubeProxyReplacement: true
bpf:
  masquerade: true
ipam:
  mode: {ipam}
{ipam_extra}routingMode: {routing}
{routing_extra}hubble:
  relay:
    enabled: true
  metrics:
    enabled:
      - dns
      - drop
      - tcp
      - flow
      - "httpV2:exemplars=true;labelsContext=source_ip,source_namespace,source_workload,destination_ip,destination_namespace,destination_workload,traffic_direction"
"""


def values(cluster="prod", host="api.prod.example.com", ipam="cluster-pool", ipam_extra="",
           routing="tunnel", routing_extra=""):
    return GOOD_VALUES.format(cluster=cluster, host=host, ipam=ipam, ipam_extra=ipam_extra,
                              routing=routing, routing_extra=routing_extra)


# --- 000: Azure firewall subnet inside Cilium's default pool, found after 8 months of churn ----
def f000():
    d = "000-azure-firewall-overlap"
    start = datetime(2023, 5, 1, 8, 0, tzinfo=timezone.utc)
    rate = 3.1
    now = datetime(2023, 9, 1, 0, 0, tzinfo=timezone.utc)

    def block(i):
        return f"10.{i // 256}.{i % 256}.0/24"

    nodes = []
    # Three long-lived system nodes from day one, then user nodes replaced by the autoscaler on
    # every release: the live ones hold the most recent blocks.
    live = [(f"aks-system-3742-vmss00000{i}", i) for i in range(3)]
    live += [(f"aks-user-1337-vmss{b:06x}", b) for b in (365, 368, 371, 373, 374, 376, 378, 380, 381)]
    ips = {}
    for n, (name, b) in enumerate(live):
        created = start + timedelta(days=b / rate)
        ip = f"172.16.0.{4 + n}"
        ips[name] = ip
        nodes.append((name, created, ip, b))
    items = [k8s_node(n, c, ip, labels={"agentpool": n.split("-")[1]}) for n, c, ip, _ in nodes]
    items += [cilium_node(n, c, ip, block(b), generation=2) for n, c, ip, b in nodes]
    fixture(d, [
        "--cilium-values values.yaml",
        "--routes aks-user-1337-vmss00017d=routes/aks-user-1337-vmss00017d.json",
        "--nodes nodes.json",
        f"--now {ts(now)}",
    ], [
        {"id": "pod-cidr-overlap", "file": "values.yaml", "key": "ipam.operator.clusterPoolIPv4PodCIDRList"},
        {"id": "pod-cidr-overlap", "file": "routes/aks-user-1337-vmss00017d.json", "key": "[2].dst"},
        {"id": "pod-cidr-forecast", "file": "values.yaml", "key": "ipam.operator.clusterPoolIPv4PodCIDRList"},
        {"id": "pod-cidr-forecast", "file": "nodes.json", "key": "items[*].spec.ipam.podCIDRs"},
        {"id": "pod-cidr-forecast", "file": "routes/aks-user-1337-vmss00017d.json", "key": "[2].dst"},
    ])
    # Cilium's default pool: nothing under ipam.operator.
    write(d, "values.yaml", values(cluster="staging-us", host="staging-us-dns-4f2a.hcp.eastus.azmk8s.io"))
    me = "aks-user-1337-vmss00017d"
    r = [
        route("default", "eth0", gateway="172.16.0.1", protocol="dhcp", prefsrc=ips[me], metric=100),
        route("172.16.0.0/22", "eth0", protocol="kernel", scope="link", prefsrc=ips[me]),
        # The hub's Azure Firewall subnet, reached over the VNet peering.
        route("10.2.241.0/26", "eth0", gateway="172.16.0.1", protocol="static"),
        route("168.63.129.16", "eth0", gateway="172.16.0.1", protocol="dhcp", prefsrc=ips[me], metric=100),
    ]
    for name, _, ip, b in nodes:
        if name == me:
            r.append(route(block(b), "cilium_host", gateway=f"10.1.125.1", protocol="kernel", prefsrc="10.1.125.1"))
        else:
            r.append(route(block(b), "eth0", gateway=ip, protocol="kernel"))
    write(d, f"routes/{me}.json", json.dumps(r) + "\n")
    write(d, "nodes.json", node_list(items))


# --- 001: Deezer: bpf.masquerade unset, so legacy host routing --------------------------------
def f001():
    d = "001-deezer-bpf-masquerade-unset"
    fixture(d, ["--cilium-config cilium-config.yaml"], [
        {"id": "legacy-host-routing", "file": "cilium-config.yaml", "key": "data.enable-bpf-masquerade"},
    ])
    write(d, "cilium-config.yaml", """\
apiVersion: v1
data:
  agent-not-ready-taint-key: node.cilium.io/agent-not-ready
  arping-refresh-period: 30s
  auto-direct-node-routes: "false"
  bpf-lb-external-clusterip: "false"
  bpf-lb-map-max: "65536"
  bpf-lb-sock: "false"
  bpf-map-dynamic-size-ratio: "0.0025"
  bpf-policy-map-max: "16384"
  bpf-root: /sys/fs/bpf
  cluster-name: default
  cluster-pool-ipv4-cidr: 10.0.0.0/16
  cluster-pool-ipv4-mask-size: "24"
  enable-bpf-clock-probe: "false"
  enable-bpf-masquerade: "false"
  enable-endpoint-health-checking: "true"
  enable-health-checking: "true"
  enable-ipv4: "true"
  enable-ipv4-masquerade: "true"
  enable-ipv6: "false"
  enable-l7-proxy: "true"
  ipam: cluster-pool
  kube-proxy-replacement: strict
  monitor-aggregation: medium
  routing-mode: tunnel
  tunnel-protocol: vxlan
kind: ConfigMap
metadata:
  annotations:
    meta.helm.sh/release-name: cilium
    meta.helm.sh/release-namespace: cilium
  labels:
    app.kubernetes.io/managed-by: Helm
  name: cilium-config
  namespace: cilium
""")


# --- 002: GKE netd sets src_valid_mark=1 while a toFQDNs policy needs the DNS proxy ------------
def f002_svm():
    d = "002-gke-src-valid-mark"
    fixture(d, [
        "--sysctls gke-test-00-mainpool-v2-25dddc3-k0sj=sysctls/gke-test-00-mainpool-v2-25dddc3-k0sj.txt",
        "--manifests manifests",
    ], [
        {"id": "src-valid-mark", "file": "sysctls/gke-test-00-mainpool-v2-25dddc3-k0sj.txt",
         "key": "net.ipv4.conf.all.src_valid_mark"},
        {"id": "src-valid-mark", "file": "manifests/allow-some-egress.yaml", "key": "spec.egress[0].toFQDNs"},
    ])
    write(d, "sysctls/gke-test-00-mainpool-v2-25dddc3-k0sj.txt",
          base_sysctls(["cilium_host", "cilium_net", "eth0", "lo", "lxc1a2b3c4d"], {"eth0": "1"}, svm="1"))
    write(d, "manifests/allow-some-egress.yaml", """\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: allow-some-egress
spec:
  endpointSelector:
    matchLabels: {}
  egress:
    - toFQDNs:
        - matchPattern: "*.internal.com."
    - toEndpoints:
        - matchLabels:
            k8s-app: kube-dns
            io.kubernetes.pod.namespace: kube-system
      toPorts:
        - ports:
            - port: "53"
              protocol: ANY
          rules:
            dns:
              - matchPattern: "*"
""")


# --- 002: WireGuard cluster whose native-routing CIDR misses the pods -------------------------
def f002_native():
    d = "002-wireguard-native-routing-cidr"
    t0 = datetime(2024, 10, 1, 9, 0, tzinfo=timezone.utc)
    nodes = [
        ("gke-prod-pool-1-a1b2", "10.128.0.10", "10.4.0.0/24"),
        ("gke-prod-pool-1-c3d4", "10.128.0.11", "10.5.1.0/24"),
        ("gke-prod-pool-1-e5f6", "10.128.0.12", "10.6.2.0/24"),
    ]
    items = [k8s_node(n, t0 + timedelta(hours=i), ip, cidr) for i, (n, ip, cidr) in enumerate(nodes)]
    items += [cilium_node(n, t0 + timedelta(hours=i), ip, None) for i, (n, ip, cidr) in enumerate(nodes)]
    fixture(d, ["--cilium-values values.yaml", "--nodes nodes.json", "--now 2024-10-11T18:00:00Z"], [
        {"id": "native-routing-cidr", "file": "values.yaml", "key": "ipv4NativeRoutingCIDR"},
        {"id": "native-routing-cidr", "file": "nodes.json", "key": "items[1].spec.podCIDRs[0]"},
        {"id": "native-routing-cidr", "file": "values.yaml", "key": "encryption.enabled"},
    ])
    write(d, "values.yaml", values(
        cluster="gke-prod", host="10.128.0.2", ipam="kubernetes", routing="native",
        routing_extra="ipv4NativeRoutingCIDR: 10.4.0.0/16\nencryption:\n  enabled: true\n  type: wireguard\n"))
    write(d, "nodes.json", node_list(items))


# --- 002: Hubble metrics with IP context and no labelsContext ---------------------------------
def f002_metrics():
    d = "002-hubble-metrics-ip-context"
    fixture(d, ["--cilium-values values.yaml"], [
        {"id": "metrics-cardinality", "file": "values.yaml", "key": "hubble.metrics.enabled[2]"},
    ])
    write(d, "values.yaml", """\
cluster:
  name: confluent-prod
k8sServiceHost: api.prod.example.com
k8sServicePort: 6443
kubeProxyReplacement: true
bpf:
  masquerade: true
ipam:
  mode: cluster-pool
  operator:
    clusterPoolIPv4PodCIDRList:
      - 100.64.0.0/14
    clusterPoolIPv4MaskSize: 24
hubble:
  enabled: true
  metrics:
    enabled:
      - dns
      - drop
      - flows-to-world:sourceContext=namespace|dns|ip;destinationContext=namespace|dns|ip;port
      - tcp
""")


# --- 002: AWS: strict rp_filter on a node with secondary ENIs ---------------------------------
def f002_rp():
    d = "002-aws-rp-filter"
    fixture(d, ["--sysctls ip-10-0-1-23.ec2.internal=sysctls/ip-10-0-1-23.ec2.internal.txt"], [
        {"id": "rp-filter", "file": "sysctls/ip-10-0-1-23.ec2.internal.txt", "key": "net.ipv4.conf.eth1.rp_filter"},
    ])
    write(d, "sysctls/ip-10-0-1-23.ec2.internal.txt",
          base_sysctls(["cilium_host", "cilium_net", "cilium_vxlan", "eth0", "eth1", "eth2", "lo", "lxc3f9e0a1b2c4d"],
                       {"all": "0", "eth0": "1", "eth1": "1", "eth2": "1"}))


# --- 002: Azure: KUBE-SERVICES before CILIUM_PRE_nat ------------------------------------------
def f002_hostport():
    d = "002-azure-hostport-chain-order"
    fixture(d, ["--iptables aks-nodepool1-31718369-vmss000000=iptables-save.txt"], [
        {"id": "hostport-chain-order", "file": "iptables-save.txt", "key": "nat PREROUTING"},
    ])
    write(d, "iptables-save.txt", """\
# Generated by iptables-save v1.8.7 on Tue Oct 15 09:12:44 2024
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CILIUM_PRE_mangle - [0:0]
-A PREROUTING -m comment --comment "cilium-feeder: CILIUM_PRE_mangle" -j CILIUM_PRE_mangle
COMMIT
# Completed on Tue Oct 15 09:12:44 2024
# Generated by iptables-save v1.8.7 on Tue Oct 15 09:12:44 2024
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CILIUM_OUTPUT_nat - [0:0]
:CILIUM_POST_nat - [0:0]
:CILIUM_PRE_nat - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
:KUBE-SEP-7XQ3K6WZ4QW2YBSJ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m comment --comment "cilium-feeder: CILIUM_PRE_nat" -j CILIUM_PRE_nat
-A OUTPUT -m comment --comment "cilium-feeder: CILIUM_OUTPUT_nat" -j CILIUM_OUTPUT_nat
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" -j CILIUM_POST_nat
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A CILIUM_PRE_nat -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 8443 -m comment --comment "cilium: hostPort monitoring/agent" -j DNAT --to-destination 10.244.3.17:8443
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.0.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment "default/kubernetes:https -> 20.51.12.7:443" -j KUBE-SEP-7XQ3K6WZ4QW2YBSJ
-A KUBE-SEP-7XQ3K6WZ4QW2YBSJ -s 20.51.12.7/32 -m comment --comment "default/kubernetes:https" -j KUBE-MARK-MASQ
-A KUBE-SEP-7XQ3K6WZ4QW2YBSJ -p tcp -m comment --comment "default/kubernetes:https" -m tcp -j DNAT --to-destination 20.51.12.7:443
COMMIT
# Completed on Tue Oct 15 09:12:44 2024
""")


# --- 002/004: kube-proxy replacement without k8sServiceHost -----------------------------------
def f_k8s_host():
    d = "004-kpr-without-k8s-service-host"
    fixture(d, ["--cilium-values values.yaml"], [
        {"id": "k8s-service-host", "file": "values.yaml", "key": "kubeProxyReplacement"},
        {"id": "k8s-service-host", "file": "values.yaml", "key": "k8sServiceHost"},
    ])
    write(d, "values.yaml", """\
# kind cluster created with kubeProxyMode: none
cluster:
  name: kind-kind
kubeProxyReplacement: strict
ipv4:
  enabled: true
ipv6:
  enabled: false
bpf:
  masquerade: true
ipam:
  mode: kubernetes
routingMode: native
ipv4NativeRoutingCIDR: 10.244.0.0/16
enableIPv4Masquerade: true
""")


# --- 003: a default-deny egress without DNS, and the most common fail -------------------------
def f003_dns():
    d = "003-default-deny-egress-no-dns"
    fixture(d, ["--manifests policies.yaml"], [
        {"id": "policy-blocks-dns", "file": "policies.yaml", "key": "doc[0].spec.policyTypes"},
        {"id": "policy-blocks-dns", "file": "policies.yaml", "key": "doc[1].spec.egress"},
    ])
    write(d, "policies.yaml", """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
  namespace: shop
spec:
  podSelector: {}
  policyTypes:
    - Egress
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: frontend-egress-allow-to-backend
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: frontend
  egress:
    - to:
        - podSelector:
            matchLabels:
              app: backend
""")


def f003_ndots():
    d = "003-ndots-external-lookups"
    fixture(d, ["--manifests deployment.yaml"], [
        {"id": "dns-ndots", "file": "deployment.yaml", "key": "spec.template.spec.containers[0].env[0].value"},
    ])
    write(d, "deployment.yaml", """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: checkout
  namespace: shop
spec:
  replicas: 3
  selector:
    matchLabels:
      app: checkout
  template:
    metadata:
      labels:
        app: checkout
    spec:
      containers:
        - name: checkout
          image: registry.example.com/shop/checkout:1.4.2
          env:
            - name: PAYMENTS_URL
              value: https://api.stripe.com/v1
            - name: CART_URL
              value: http://cart.shop.svc.cluster.local:8080
          ports:
            - containerPort: 8080
""")


def f003_externalip():
    d = "003-externalip-service"
    fixture(d, ["--manifests service.yaml"], [
        {"id": "external-ip-mitm", "file": "service.yaml", "key": "spec.externalIPs"},
    ])
    write(d, "service.yaml", """\
apiVersion: v1
kind: Service
metadata:
  name: mitm-externalip
  namespace: kubecon
spec:
  selector:
    app: echoserver
  ports:
    - name: http
      port: 80
      targetPort: 8080
  externalIPs:
    - 23.185.0.3
""")


def f003_cni():
    d = "003-leftover-cni-config"
    fixture(d, ["--cni-dir ip-10-0-1-23.ec2.internal=cni"], [
        {"id": "cni-config-conflict", "file": "cni/05-cilium.conflist", "key": "plugins[*].type"},
        {"id": "cni-config-conflict", "file": "cni/10-aws.conflist", "key": "plugins[*].type"},
    ])
    write(d, "cni/05-cilium.conflist", json.dumps({
        "cniVersion": "0.3.1", "name": "cilium",
        "plugins": [{"type": "cilium-cni", "enable-debug": False, "log-file": "/var/run/cilium/cilium-cni.log"}],
    }, indent=2) + "\n")
    write(d, "cni/10-aws.conflist", json.dumps({
        "cniVersion": "0.4.0", "name": "aws-cni", "disableCheck": True,
        "plugins": [
            {"name": "aws-cni", "type": "aws-cni", "vethPrefix": "eni", "mtu": "9001",
             "podSGEnforcingMode": "strict", "pluginLogFile": "/var/log/aws-routed-eni/plugin.log",
             "pluginLogLevel": "DEBUG"},
            {"name": "egress-cni", "type": "egress-cni", "mtu": "9001", "enabled": "false",
             "randomizeSNAT": "prng", "nodeIP": "", "ipam": {"type": "host-local", "ranges": [[{"subnet": "fd00::ac:00/118"}]],
                                                              "routes": [{"dst": "::/0"}], "dataDir": "/run/cni/v4pd/egress-v6-ipam"},
             "pluginLogFile": "/var/log/aws-routed-eni/egress-v6-plugin.log", "pluginLogLevel": "DEBUG"},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }, indent=2) + "\n")
    write(d, "cni/aws-cni.conflist.cilium_bak", "{}\n")


def f003_iptables():
    d = "003-kube-proxy-iptables-scale"
    fixture(d, ["--iptables worker-17=iptables-save.txt"], [
        {"id": "iptables-scale", "file": "iptables-save.txt", "key": "nat KUBE-SERVICES"},
    ])
    def h(s):
        return hashlib.sha256(s.encode()).hexdigest()[:16].upper()

    chains, rules = [], []
    for i in range(1100):
        svc = f"team-{i // 50}/api-{i}:http"
        c, sep = "KUBE-SVC-" + h(svc), "KUBE-SEP-" + h(svc + "ep")
        chains += [f":{c} - [0:0]", f":{sep} - [0:0]"]
        ip = f"10.96.{i // 250}.{i % 250 + 2}"
        ep = f"10.244.{i % 200}.{i // 200 + 10}"
        rules.append(f'-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment "{svc} cluster IP" -m tcp --dport 80 -j {c}')
        rules.append(f'-A {c} -m comment --comment "{svc} -> {ep}:8080" -j {sep}')
        rules.append(f'-A {sep} -s {ep}/32 -m comment --comment "{svc}" -j KUBE-MARK-MASQ')
        rules.append(f'-A {sep} -p tcp -m comment --comment "{svc}" -m tcp -j DNAT --to-destination {ep}:8080')
    text = "# Generated by iptables-save v1.8.9 (nf_tables) on Mon Mar  4 10:00:00 2024\n*nat\n"
    text += ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
    text += ":KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n"
    text += "\n".join(chains) + "\n"
    text += '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
    text += '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
    text += '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING\n'
    text += "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n"
    text += "\n".join(rules) + "\n"
    text += '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n'
    text += "COMMIT\n# Completed on Mon Mar  4 10:00:00 2024\n"
    write(d, "iptables-save.txt", text)


def f003_crd():
    d = "003-crd-watch-storm"
    t0 = datetime(2024, 3, 3, 10, 0, tzinfo=timezone.utc)
    now = t0 + timedelta(days=1)
    items = []
    for i in range(40):
        name = f"ip-10-0-{i // 200}-{i % 200 + 10}.ec2.internal"
        ip = f"10.0.{i // 200}.{i % 200 + 10}"
        # Rewritten once a second since creation.
        items.append(cilium_node(name, t0, ip, None, generation=86401, pool_ips=60))
    fixture(d, ["--nodes nodes.json", f"--now {ts(now)}"], [
        {"id": "crd-watch-bandwidth", "file": "nodes.json", "key": "items[0].metadata.generation"},
    ])
    write(d, "nodes.json", node_list(items))


def f004_autodirect():
    d = "004-autodirect-routes-across-subnets"
    fixture(d, [
        "--cilium-values values.yaml",
        "--routes kind-worker=routes/kind-worker.json",
        "--routes kind-worker2=routes/kind-worker2.json",
    ], [
        {"id": "autodirect-routes-l2", "file": "values.yaml", "key": "autoDirectNodeRoutes"},
        {"id": "autodirect-routes-l2", "file": "routes/kind-worker.json", "key": "[0]"},
    ])
    write(d, "values.yaml", values(
        cluster="kind-kind", host="kind-control-plane", ipam="kubernetes", routing="native",
        routing_extra="ipv4NativeRoutingCIDR: 10.244.0.0/16\nautoDirectNodeRoutes: true\n"))
    write(d, "routes/kind-worker.json", json.dumps([
        route("default", "eth0", gateway="172.18.0.1"),
        route("10.244.1.0/24", "eth0", gateway="172.19.0.4", protocol="kernel"),
        route("10.244.2.0/24", "cilium_host", gateway="10.244.2.224", protocol="kernel", prefsrc="10.244.2.224"),
        route("10.244.2.224", "cilium_host", protocol="kernel", scope="link"),
        route("172.18.0.0/24", "eth0", protocol="kernel", scope="link", prefsrc="172.18.0.3"),
    ]) + "\n")
    write(d, "routes/kind-worker2.json", json.dumps([
        route("default", "eth0", gateway="172.19.0.1"),
        route("10.244.1.0/24", "cilium_host", gateway="10.244.1.77", protocol="kernel", prefsrc="10.244.1.77"),
        route("10.244.1.77", "cilium_host", protocol="kernel", scope="link"),
        route("10.244.2.0/24", "eth0", gateway="172.18.0.3", protocol="kernel"),
        route("172.19.0.0/24", "eth0", protocol="kernel", scope="link", prefsrc="172.19.0.4"),
    ]) + "\n")


def f_input_errors():
    d = "input-errors"
    fixture(d, [
        "--cilium-values values.yaml",
        "--routes node-a=routes/node-a.json",
        "--sysctls node-a=sysctls/node-a.txt",
        "--reserved 10.8.1.0/33",
        "--agent-status node-a=agent-status.json",
    ], [
        {"id": "input-unknown-key", "file": "values.yaml", "key": "bpf.masqurade"},
        {"id": "legacy-host-routing", "file": "values.yaml", "key": "bpf.masquerade"},
        {"id": "input-unparsable", "file": "routes/node-a.json", "key": ""},
        {"id": "input-invalid-value", "file": "--reserved", "key": ""},
        {"id": "rp-filter", "file": "sysctls/node-a.txt", "key": "net.ipv4.conf.all.rp_filter"},
        {"id": "input-unavailable", "file": "agent-status.json", "key": "[0].error"},
    ])
    # What `fibril status -o json` writes for an agent it cannot reach.
    write(d, "agent-status.json", json.dumps([{
        "node": "node-a",
        "error": "cannot reach the fibril agent's status socket /var/lib/fibril/agent-status.sock: "
                 "Connection refused (os error 111) (is the agent running? only root may connect)",
    }], indent=2) + "\n")
    write(d, "values.yaml", """\
k8sServiceHost: api.example.com
k8sServicePort: 6443
kubeProxyReplacement: true
bpf:
  masqurade: true
""")
    write(d, "routes/node-a.json", '[{"dst":"default","gateway":"10.0.0.1","dev":"eth0"},\n {"dst": "10.0.0.0/24", "dev": "eth0",,}]\n')
    write(d, "sysctls/node-a.txt", base_sysctls(["eth0", "eth1", "lo"], {"all": "1"}))


def f001_fibril():
    """A fibril agent that runs degraded (allowDegraded) on a kernel without bpf_redirect_peer:
    `fibril status -o json` names legacy host routing and its cause."""
    d = "001-fibril-agent-legacy-host-routing"
    fixture(d, ["--agent-status lab-node-2=agent-status.json"], [
        {"id": "legacy-host-routing", "file": "agent-status.json", "key": "hostRouting.cause"},
    ])
    cause = ("the BPF datapath cannot be loaded: loading program pod_ingress: the BPF verifier "
             "rejected it (kernel 5.4 lacks bpf_redirect_peer)")
    write(d, "agent-status.json", json.dumps({
        "node": "lab-node-2",
        "ready": True,
        "routingMode": "native",
        "nativeRoutingCidr": "10.244.0.0/16",
        "hostRouting": {"mode": "Legacy", "cause": cause},
        "degraded": f"legacy host routing: {cause}",
        "dataplane": "counters",
        "ipam": {"mode": "kubernetes", "nodeCidr": "10.244.2.0/24", "used": 3, "free": 250,
                 "total": 253, "exhausted": False},
        "endpoints": [],
        "programs": [],
        "drops": [],
        "api": {"server": "https://172.18.0.2:6443", "connected": True},
        "nodes": [],
        "conflist": "/etc/cni/net.d/05-fibril.conflist",
        "problems": [],
    }, indent=2) + "\n")


def f_clean():
    d = "clean"
    start = datetime(2024, 1, 10, 8, 0, tzinfo=timezone.utc)
    live = [("node-a", 0, 0.0), ("node-b", 1, 0.2), ("node-c", 40, 60.0), ("node-d", 44, 66.0), ("node-e", 47, 70.0)]
    items, cn = [], []
    for i, (name, b, day) in enumerate(live):
        created = start + timedelta(days=day)
        ip = f"192.168.10.{11 + i}"
        items.append(k8s_node(name, created, ip))
        cn.append(cilium_node(name, created, ip, f"10.244.{b}.0/24", generation=3))
    fixture(d, [
        "--cilium-values values.yaml",
        "--cilium-config cilium-config.yaml",
        "--routes node-c=routes/node-c.json",
        "--sysctls node-c=sysctls/node-c.txt",
        "--cni-dir node-c=cni",
        "--iptables node-c=iptables-save.txt",
        "--manifests manifests",
        "--nodes nodes.json",
        "--reserved 10.8.1.0/26",
        "--reserved 172.31.0.0/16",
        "--now 2024-03-25T00:00:00Z",
    ], [])
    write(d, "values.yaml", values(
        cluster="lab", host="192.168.10.2",
        ipam_extra="  operator:\n    clusterPoolIPv4PodCIDRList:\n      - 10.244.0.0/16\n    clusterPoolIPv4MaskSize: 24\n",
        routing="native",
        routing_extra="ipv4NativeRoutingCIDR: 10.244.0.0/16\nautoDirectNodeRoutes: true\nencryption:\n  enabled: true\n  type: wireguard\n"))
    write(d, "cilium-config.yaml", """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: cilium-config
  namespace: kube-system
data:
  auto-direct-node-routes: "true"
  cluster-name: lab
  cluster-pool-ipv4-cidr: 10.244.0.0/16
  cluster-pool-ipv4-mask-size: "24"
  enable-bpf-masquerade: "true"
  enable-ipv4-masquerade: "true"
  enable-wireguard: "true"
  hubble-metrics: dns drop tcp flow
  ipam: cluster-pool
  ipv4-native-routing-cidr: 10.244.0.0/16
  kube-proxy-replacement: "true"
  routing-mode: native
""")
    rs = [
        route("default", "eth0", gateway="192.168.10.1", protocol="static"),
        route("10.244.0.0/24", "eth0", gateway="192.168.10.11", protocol="kernel"),
        route("10.244.1.0/24", "eth0", gateway="192.168.10.12", protocol="kernel"),
        route("10.244.40.0/24", "cilium_host", gateway="10.244.40.1", protocol="kernel", prefsrc="10.244.40.1"),
        route("10.244.44.0/24", "eth0", gateway="192.168.10.14", protocol="kernel"),
        route("10.244.47.0/24", "eth0", gateway="192.168.10.15", protocol="kernel"),
        route("192.168.10.0/24", "eth0", protocol="kernel", scope="link", prefsrc="192.168.10.13"),
    ]
    write(d, "routes/node-c.json", json.dumps(rs) + "\n")
    write(d, "sysctls/node-c.txt", base_sysctls(["cilium_host", "cilium_net", "eth0", "lo"], {"all": "0", "eth0": "2"}))
    write(d, "cni/05-cilium.conflist", json.dumps({
        "cniVersion": "0.3.1", "name": "cilium", "plugins": [{"type": "cilium-cni"}]}, indent=2) + "\n")
    write(d, "cni/10-flannel.conflist.cilium_bak", "{}\n")
    write(d, "iptables-save.txt", """\
# Generated by iptables-save v1.8.9 (nf_tables) on Mon Mar 25 00:00:00 2024
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CILIUM_OUTPUT_nat - [0:0]
:CILIUM_POST_nat - [0:0]
:CILIUM_PRE_nat - [0:0]
-A PREROUTING -m comment --comment "cilium-feeder: CILIUM_PRE_nat" -j CILIUM_PRE_nat
-A OUTPUT -m comment --comment "cilium-feeder: CILIUM_OUTPUT_nat" -j CILIUM_OUTPUT_nat
-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" -j CILIUM_POST_nat
COMMIT
# Completed on Mon Mar 25 00:00:00 2024
""")
    write(d, "manifests/policies.yaml", """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
  namespace: shop
spec:
  podSelector: {}
  policyTypes:
    - Egress
  egress:
    - to:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: kube-system
          podSelector:
            matchLabels:
              k8s-app: kube-dns
      ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: frontend-egress-allow-to-backend
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: frontend
  egress:
    - to:
        - podSelector:
            matchLabels:
              app: backend
""")
    write(d, "manifests/app.yaml", """\
apiVersion: v1
kind: Service
metadata:
  name: frontend
  namespace: shop
spec:
  clusterIP: 10.96.12.40
  selector:
    app: frontend
  ports:
    - port: 80
      targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: frontend
  namespace: shop
  labels:
    app: frontend
spec:
  containers:
    - name: web
      image: registry.example.com/shop/frontend:2.0.1
      env:
        - name: PAYMENTS_URL
          value: https://api.stripe.com./v1
        - name: BACKEND_URL
          value: http://backend.shop.svc.cluster.local:8080
""")
    write(d, "nodes.json", node_list(items + cn))


for f in [f000, f001, f001_fibril, f002_svm, f002_native, f002_metrics, f002_rp, f002_hostport, f_k8s_host,
          f003_dns, f003_ndots, f003_externalip, f003_cni, f003_iptables, f003_crd, f004_autodirect,
          f_input_errors, f_clean]:
    f()
