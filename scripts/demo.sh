#!/usr/bin/env bash
# The main job: install, build, bring up a 3-node lab on fibril's own CNI and eBPF datapath,
# deploy an echo app and show real requests succeeding same-node and cross-node, over
# TCP/HTTP and UDP, through fibril's BPF programs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "==> building fibril and its CNI plugin (release)"
# The lab installs fibril-cni from next to the fibril binary into every node.
cargo build --release --bin fibril --bin fibril-cni
FIBRIL="$PWD/target/release/fibril"
LAB="${FIBRIL_LAB:-fibril}"

# fibril's CNI is the lab's default (--cni bridge runs the reference plugins instead).
"$FIBRIL" lab up --name "$LAB" --nodes 3
"$FIBRIL" lab apply --name "$LAB" -f demo/echo.yaml

echo "==> waiting for the demo pods to be Ready"
for _ in $(seq 1 120); do
  ready=$("$FIBRIL" lab get pods --name "$LAB" -n demo -o json |
    jq '[.items[] | select(any(.status.conditions[]?; .type=="Ready" and .status=="True"))] | length')
  [ "$ready" -ge 4 ] && break
  sleep 0.5
done
"$FIBRIL" lab get pods --name "$LAB" -n demo

client_node=$("$FIBRIL" lab get pods --name "$LAB" -n demo client -o json | jq -r .spec.nodeName)
echo "==> requests from pod demo/client on $client_node"
"$FIBRIL" lab get pods --name "$LAB" -n demo -o json |
  jq -r '.items[] | select(.metadata.labels.app=="echo") | "\(.status.podIP) \(.spec.nodeName) \(.metadata.name)"' |
  while read -r ip node name; do
    where=$([ "$node" = "$client_node" ] && echo same-node || echo cross-node)
    body=$("$FIBRIL" lab exec --name "$LAB" -n demo client -- curl -s --max-time 3 "http://$ip:8080/")
    echo "  HTTP $where -> $name ($ip on $node): $body"
    udp=$("$FIBRIL" lab exec --name "$LAB" -n demo client -- sh -c "printf hostname | nc -u -w1 $ip 9090")
    echo "  UDP  $where -> $name ($ip on $node): $udp"
  done

echo "==> per-endpoint packet counters from fibril's BPF programs on each pod veth"
"$FIBRIL" bpf counters --name "$LAB"

echo "==> fibril's agent on $client_node: BPF host routing, IPAM, endpoints, attached programs"
"$FIBRIL" status --name "$LAB" --node "$client_node"

echo "==> lab status"
"$FIBRIL" lab status --name "$LAB"
echo
echo "The lab stays up. Explore it with: $FIBRIL lab get pods -A --name $LAB"
echo "Remove it with:                    $FIBRIL lab down --name $LAB"
