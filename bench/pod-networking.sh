#!/usr/bin/env bash
# Pod-networking benchmark: one run, side by side,
#   - a direct veth pair between two namespaces (the physical limit here),
#   - the lab on the reference bridge CNI (--cni bridge), as the lab configures it (no
#     netfilter rules), with the masquerade rule of bridge's ipMasq (conntrack on), and with
#     kube-proxy's iptables rules for the lab's Services (what a bridge-CNI node runs to have
#     Services at all: conntrack, nat and filter chains on every pod packet),
#   - the lab on fibril (--cni fibril, native routing and tunnel routing),
# for pod-to-pod same-node and cross-node TCP_RR (sockperf), TCP stream (iperf3), new
# connections/s (wrk, Connection: close), and CNI ADD latency over 100 attachments.
# Writes bench/results/<date>-pod-networking.md (+ .tsv). See bench/README.md.
#
# Run as root, after bench/setup.sh and `cargo build --release --bins`.
#
# Every configuration is up at once (an idle lab costs ~0% CPU) and the measurements go
# round-robin over them, each repeated: a burst of load from something else on the
# machine then spreads over all configurations instead of spoiling one.
#
# Environment:
#   FIBRIL_BIN_DIR     where fibril and fibril-cni are (default: <repo>/target/release)
#   BENCH_CONFIGS      default "veth bridge bridge-masq bridge-kp fibril-native fibril-tunnel"
#   BENCH_REPS         rounds of every traffic figure; the report has the median (default 3)
#   BENCH_SECONDS      length of one run of a traffic figure (default 2; iperf3 omits 1 more)
#   BENCH_CNI_PODS     attachments for the CNI ADD figure (default 100)
#   BENCH_CPU          the CPU client and server share for TCP_RR and stream (default: the last)
#   BENCH_OTHER_CPU    the client's CPU for the two-CPU TCP_RR (default 0)
#   BENCH_WRK_THREADS, BENCH_WRK_CONNS  wrk's load (default 2, 64)
#   BENCH_IDLE_WAIT    seconds to wait at the start for other load to go (default 60)
#   BENCH_OUT          the report (default bench/results/<date>-pod-networking.md)
#
# Safety: everything lives in namespaces named fibb<run>…; the root network namespace is
# never changed and traffic only flows between the bench's own namespaces. On exit (also on
# failure or Ctrl-C) a trap stops the bench's processes, takes every lab down and deletes
# every namespace it created.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
BIN_DIR=${FIBRIL_BIN_DIR:-$repo/target/release}
FIBRIL=$BIN_DIR/fibril
CONFIGS=${BENCH_CONFIGS:-veth bridge bridge-masq bridge-kp fibril-native fibril-tunnel}
REPS=${BENCH_REPS:-3}
SECS=${BENCH_SECONDS:-2}
CNI_PODS=${BENCH_CNI_PODS:-100}
CNI_SETTLE=3   # seconds of pause around each lab's CNI ADDs
DATE=$(date +%F)
OUT=${BENCH_OUT:-$here/results/$DATE-pod-networking.md}
RR_PORT=11111 STREAM_PORT=5201 HTTP_PORT=8080
POD_CIDR=10.244.0.0/16   # fibril lab up's default --pod-cidr
WRK_THREADS=${BENCH_WRK_THREADS:-2} WRK_CONNS=${BENCH_WRK_CONNS:-64}
# TCP_RR and stream pin client and server to one CPU: on this VM a cross-CPU wake-up
# (an IPI, a VM exit) costs more than the whole datapath, and where the scheduler puts
# the two would decide the figure. TCP_RR is measured across two CPUs as well.
CPU=${BENCH_CPU:-$(( $(nproc) - 1 ))}
OTHER_CPU=${BENCH_OTHER_CPU:-0}
IDLE_WAIT=${BENCH_IDLE_WAIT:-60}

# shellcheck source=bench/lib.sh
source "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root: the bench creates network namespaces and labs"
[ -x "$FIBRIL" ] || die "no fibril binary at $FIBRIL: build with cargo build --release --bins, or set FIBRIL_BIN_DIR"
for t in sockperf iperf3 wrk jq python3 ip taskset; do
  command -v "$t" >/dev/null || die "$t is missing: run bench/setup.sh"
done
for cfg in $CONFIGS; do
  case $cfg in
    veth | bridge | fibril-native | fibril-tunnel) ;;
    bridge-masq | bridge-kp) command -v iptables >/dev/null || die "$cfg needs iptables: run bench/setup.sh" ;;
    *) die "unknown configuration $cfg (veth, bridge, bridge-masq, bridge-kp, fibril-native, fibril-tunnel)" ;;
  esac
  if [[ $cfg == fibril-* && ! -x $BIN_DIR/fibril-cni ]]; then
    die "no fibril-cni next to fibril in $BIN_DIR (cargo build --release --bins)"
  fi
done

# A unique run id: every name the bench creates starts with fibb<run>.
run=$(printf '%05x' $(( ((RANDOM << 15) | RANDOM) & 0xfffff )))
PREFIX=fibb$run
WORK=$(mktemp -d "/tmp/$PREFIX.XXXXXX")
export FIBRIL_STATE_ROOT=$WORK/labs   # the labs' state dirs: private to this run
mkdir -p "$FIBRIL_STATE_ROOT"
RESULTS=$WORK/results.tsv NOTES=$WORK/notes.txt
: >"$RESULTS"; : >"$NOTES"

declare -A LAB=() SERVER_IP=()   # per configuration
UP_LABS=()                       # labs that are (or may be) up
BG_PIDS=()                       # the veth pair's servers
SLOTS=()                         # config:path pairs that measure

cleanup() {
  local rc=$? ns l p
  set +e
  trap - EXIT INT TERM
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for l in "${UP_LABS[@]}"; do
    log "lab down $l"
    "$FIBRIL" lab down --name "$l" >/dev/null 2>&1 || echo "warning: lab down $l failed" >&2
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX"); do
    # Only processes inside the bench's own namespaces.
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null || echo "warning: could not delete netns $ns" >&2
  done
  wait 2>/dev/null
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:--}" >>"$RESULTS"; }

# Percentile (nearest rank) of the numbers on stdin; "-" when there are none.
percentile() {
  python3 -c 'import sys, math
v = sorted(float(x) for x in sys.stdin.read().split())
p = float(sys.argv[1])
print(round(v[max(0, math.ceil(p / 100 * len(v)) - 1)], 2) if v else "-")' "$1"
}



# client SLOT CMD...: runs CMD in the client's namespace of SLOT (config:path).
client() {
  local cfg=${1%%:*} path=${1#*:}
  shift
  if [ "$cfg" = veth ]; then
    ip netns exec "$PREFIX-a" "$@"
  else
    "$FIBRIL" lab exec --name "${LAB[$cfg]}" -n bench "client-$path" -- "$@"
  fi
}

# wait_listening CMD...: until the servers listen (CMD runs a command in the server's netns).
wait_listening() {
  local i ports=
  for i in $(seq 1 100); do
    ports=$("$@" ss -Hltn 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u | tr '\n' ' ') || true
    if [[ " $ports " == *" $RR_PORT "* && " $ports " == *" $STREAM_PORT "* && " $ports " == *" $HTTP_PORT "* ]]; then
      return 0
    fi
    sleep 0.2
  done
  die "servers not listening on $RR_PORT, $STREAM_PORT, $HTTP_PORT (got: $ports)"
}

# ---------------------------------------------------------------- the figures, one run each
# rr SLOT METRIC CLIENT_CPU RUN: one sockperf ping-pong.
rr() {
  local slot=$1 m=$2 cpu=$3 r=$4 ip=${SERVER_IP[${1%%:*}]} out v
  out=$(client "$slot" timeout $((SECS + 20)) taskset -c "$cpu" sockperf ping-pong --tcp -i "$ip" \
          -p $RR_PORT -t "$SECS" --full-rtt 2>&1 | sed 's/\x1b\[[0-9;]*m//g') || true
  v=$(grep -o 'avg-rtt=[0-9.]*' <<<"$out" | cut -d= -f2 || true)
  [ -n "$v" ] || note "$slot: sockperf failed: $(tail -3 <<<"$out" | tr '\n' ' ')"
  record "${slot%%:*}" "${slot#*:}" "${m}_avg_us#$r" "$v"
  record "${slot%%:*}" "${slot#*:}" "${m}_p50_us#$r" "$(awk '/percentile 50.000/ {print $NF}' <<<"$out")"
  record "${slot%%:*}" "${slot#*:}" "${m}_p99_us#$r" "$(awk '/percentile 99.000/ {print $NF}' <<<"$out")"
}

# stream SLOT RUN: one iperf3 run, client and server on one CPU.
stream() {
  local slot=$1 r=$2 ip=${SERVER_IP[${1%%:*}]} out v
  out=$(client "$slot" timeout $((SECS + 20)) taskset -c "$CPU" iperf3 -c "$ip" -p $STREAM_PORT \
          -t "$SECS" -O 1 -J 2>&1) || true
  v=$(jq -r '.end.sum_received.bits_per_second / 1e9' <<<"$out" 2>/dev/null || true)
  if ! [[ "$v" =~ ^[0-9.]+(e[+-]?[0-9]+)?$ ]]; then
    note "$slot: iperf3 failed: $(jq -r '.error? // empty' <<<"$out" 2>/dev/null | head -c 200)"
    v=
  fi
  record "${slot%%:*}" "${slot#*:}" "stream_gbps#$r" "$v"
}

# conns SLOT RUN: one wrk run, one request per connection.
conns() {
  local slot=$1 r=$2 ip=${SERVER_IP[${1%%:*}]} out v
  out=$(client "$slot" timeout $((SECS + 20)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${SECS}s" \
          -H 'Connection: close' "http://$ip:$HTTP_PORT/" 2>&1) || true
  v=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  [ -n "$v" ] || note "$slot: wrk failed: $(tail -3 <<<"$out" | tr '\n' ' ')"
  if grep -q 'Socket errors\|Non-2xx' <<<"$out"; then
    note "$slot run $r: wrk reported $(grep 'Socket errors\|Non-2xx' <<<"$out" | tr -s ' ' | tr '\n' ';')"
  fi
  record "${slot%%:*}" "${slot#*:}" "conn_per_s#$r" "$v"
}

# ---------------------------------------------------------------- the direct veth pair
veth_up() {
  local a=$PREFIX-a b=$PREFIX-b
  log "veth: namespaces $a and $b, veth ${PREFIX}a <-> ${PREFIX}b"
  ip netns add "$a"
  ip netns add "$b"
  ip -n "$a" link add "${PREFIX}a" type veth peer name "${PREFIX}b" netns "$b"
  ip -n "$a" addr add 10.250.0.1/24 dev "${PREFIX}a"
  ip -n "$b" addr add 10.250.0.2/24 dev "${PREFIX}b"
  ip -n "$a" link set lo up
  ip -n "$b" link set lo up
  ip -n "$a" link set "${PREFIX}a" up
  ip -n "$b" link set "${PREFIX}b" up
  # The same servers as in the pods; the echo server's request log goes to a file, as the
  # lab kubelet keeps a container's stdout.
  ip netns exec "$b" taskset -c "$CPU" sockperf server --tcp -i 0.0.0.0 -p $RR_PORT >"$WORK/veth-sockperf.log" 2>&1 &
  BG_PIDS+=($!)
  ip netns exec "$b" taskset -c "$CPU" iperf3 -s -p $STREAM_PORT >"$WORK/veth-iperf3.log" 2>&1 &
  BG_PIDS+=($!)
  ip netns exec "$b" "$FIBRIL" lab workload echo --pod-name server --pod-namespace bench \
    --node veth --tcp $HTTP_PORT >"$WORK/veth-echo.log" 2>&1 &
  BG_PIDS+=($!)
  wait_listening ip netns exec "$b"
  ip netns exec "$a" ping -c1 -W2 10.250.0.2 >/dev/null
  SERVER_IP[veth]=10.250.0.2
  SLOTS+=(veth:same)
}

# ---------------------------------------------------------------- a lab (bridge or fibril)
bench_manifest() { # NODE1 NODE2
  cat <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: bench
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: bench
spec:
  nodeSelector:
    kubernetes.io/hostname: $1
  containers:
    - name: sockperf
      image: debian
      command: ["taskset", "-c", "$CPU", "sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", "$RR_PORT"]
    - name: iperf3
      image: debian
      command: ["taskset", "-c", "$CPU", "iperf3", "-s", "-p", "$STREAM_PORT"]
    - name: http
      image: fibril/echo
      ports:
        - {name: http, containerPort: $HTTP_PORT, protocol: TCP}
---
apiVersion: v1
kind: Pod
metadata:
  name: client-same
  namespace: bench
spec:
  nodeSelector:
    kubernetes.io/hostname: $1
  containers:
    - name: client
      image: debian
      command: ["sleep", "infinity"]
---
apiVersion: v1
kind: Pod
metadata:
  name: client-cross
  namespace: bench
spec:
  nodeSelector:
    kubernetes.io/hostname: $2
  containers:
    - name: client
      image: debian
      command: ["sleep", "infinity"]
EOF
}

lab_up() { # CONFIG CNI ROUTING SUFFIX [masq|kube-proxy]
  local cfg=$1 cni=$2 routing=$3 lab=$PREFIX$4 extra=${5:-} t0 pods n ok=
  local n1=$lab-node-1 n2=$lab-node-2
  log "$cfg: fibril lab up --name $lab --nodes 2 --cni $cni --routing $routing"
  UP_LABS+=("$lab")
  t0=$(date +%s%N)
  if ! "$FIBRIL" lab up --name "$lab" --nodes 2 --cni "$cni" --routing "$routing" >"$WORK/$lab-up.log" 2>&1; then
    note "$cfg: lab up failed, not measured: $(tail -5 "$WORK/$lab-up.log" | tr '\n' ' ' | head -c 600)"
    return 0
  fi
  note "$cfg: lab up (2 nodes) took $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  if [ "$extra" = masq ]; then
    # What the bridge plugin's "ipMasq": true adds on a node: masquerade for traffic from
    # the pods leaving the pod network. Pod-to-pod traffic matches no rule, but the nat
    # table turns netfilter conntrack on for every packet through the node (bridged ones
    # too, where br_netfilter's bridge-nf-call-iptables is on).
    for n in "$n1" "$n2"; do
      "$FIBRIL" lab exec --name "$lab" --node "$n" -- iptables -w -t nat -A POSTROUTING \
        -s "$POD_CIDR" ! -d "$POD_CIDR" -j MASQUERADE
    done
  fi
  bench_manifest "$n1" "$n2" >"$WORK/$lab.yaml"
  "$FIBRIL" lab apply --name "$lab" -f "$WORK/$lab.yaml" >/dev/null
  for _ in $(seq 1 300); do
    pods=$("$FIBRIL" lab get pods --name "$lab" -n bench -o json 2>/dev/null) || true
    if [ "$(jq '[.items[] | select(any(.status.conditions[]?; .type=="Ready" and .status=="True"))] | length' <<<"$pods" 2>/dev/null)" = 3 ]; then
      ok=1
      break
    fi
    sleep 0.2
  done
  if [ -z "$ok" ]; then
    note "$cfg: bench pods not Ready in 60 s, not measured: $(jq -c '[.items[] | {n: .metadata.name, phase: .status.phase, msg: [.status.conditions[]?.message]}]' <<<"$pods" 2>/dev/null | head -c 600)"
    return 0
  fi
  LAB[$cfg]=$lab
  SERVER_IP[$cfg]=$(jq -r '.items[] | select(.metadata.name=="server") | .status.podIP' <<<"$pods")
  if [ "$extra" = kube-proxy ]; then
    kube_proxy_up "$cfg" "$lab" || return 0
  fi
  wait_listening "$FIBRIL" lab exec --name "$lab" -n bench server --
  for n in same cross; do
    client "$cfg:$n" ping -c1 -W2 "${SERVER_IP[$cfg]}" >/dev/null ||
      note "$cfg: client-$n cannot ping the server at ${SERVER_IP[$cfg]}"
  done
  SLOTS+=("$cfg:same" "$cfg:cross")
}

# kube_proxy_up CONFIG LAB: kube-proxy's iptables rules (mode iptables) for the lab's own
# Services, restored in both nodes, as kube-proxy keeps them on every node of a bridge-CNI
# cluster (bench/kube_proxy_lab.py). Pod-to-pod traffic matches none of the DNAT rules; every
# packet goes through conntrack and the filter chains, every new connection through the
# nat chains.
kube_proxy_up() {
  local cfg=$1 lab=$2 n counted
  "$FIBRIL" lab get services --name "$lab" -A -o json >"$WORK/$lab-svc.json"
  "$FIBRIL" lab get endpointslices --name "$lab" -A -o json >"$WORK/$lab-eps.json"
  if ! python3 -B "$here/kube_proxy_lab.py" "$WORK/$lab-svc.json" "$WORK/$lab-eps.json" \
      --cluster-cidr "$POD_CIDR" >"$WORK/$lab-kp.rules" 2>"$WORK/$lab-kp.err"; then
    note "$cfg: kube-proxy rules could not be generated, not measured: $(tail -2 "$WORK/$lab-kp.err" | tr '\n' ' ')"
    LAB[$cfg]=
    return 1
  fi
  counted=$(tail -1 "$WORK/$lab-kp.err")
  for n in "$lab-node-1" "$lab-node-2"; do
    if ! "$FIBRIL" lab exec --name "$lab" --node "$n" -- iptables-restore -w --noflush <"$WORK/$lab-kp.rules" 2>"$WORK/$lab-kp.err"; then
      note "$cfg: iptables-restore in $n failed, not measured: $(tail -2 "$WORK/$lab-kp.err" | tr '\n' ' ')"
      LAB[$cfg]=
      return 1
    fi
  done
  note "$cfg: kube-proxy's iptables rules for the lab's Services ($counted) in both nodes: $(grep -c '^-A' "$WORK/$lab-kp.rules") rules"
}

# After the traffic: what each lab's nodes show.
lab_evidence() { # CONFIG
  local cfg=$1 lab=${LAB[$1]} n counts= st
  for n in "$lab-node-1" "$lab-node-2"; do
    counts+="$n $("$FIBRIL" lab exec --name "$lab" --node "$n" -- cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo '?'); "
  done
  note "$cfg: conntrack entries in the node namespaces after the traffic: $counts"
  if [[ $cfg == fibril-* ]]; then
    st=$("$FIBRIL" status --name "$lab" --node "$lab-node-1" -o json 2>/dev/null) || true
    note "$cfg: fibril status on $lab-node-1: routing $(jq -r '.routingMode' <<<"$st" 2>/dev/null), host routing $(jq -r '.hostRouting.mode' <<<"$st" 2>/dev/null), degraded: $(jq -c '.degraded // "no"' <<<"$st" 2>/dev/null)"
    # The traffic went through fibril's pod programs: their per-endpoint counters moved.
    note "$cfg: packets counted by fibril's pod programs (all endpoints, both directions): $("$FIBRIL" bpf counters --name "$lab" -o json 2>/dev/null | jq '[.[].endpoints[]? | .fromPodPackets + .toPodPackets] | add' 2>/dev/null || echo '?')"
  fi
}

# ---------------------------------------------------------------- CNI ADD / DEL
# cni_call CONFIG add|del [NETNS_PATHS...]: bench/cni_add.py in node 2 of CONFIG's lab.
cni_call() {
  local cfg=$1 cmd=$2 lab=${LAB[$1]}
  shift 2
  local node=$lab-node-2
  local d=$FIBRIL_STATE_ROOT/$lab/nodes/$node/cni
  "$FIBRIL" lab exec --name "$lab" --node "$node" -- python3 "$here/cni_add.py" "$cmd" \
    --conf-dir "$d/net.d" --cni-path "$d/bin:/usr/lib/cni" --state "$WORK/$lab-cni.jsonl" \
    --id-prefix "${PREFIX}" "$@" >>"$WORK/$lab-cni-$cmd.json" 2>>"$WORK/$lab-cni.err" ||
    note "$cfg: cni_add.py $cmd failed: $(tail -2 "$WORK/$lab-cni.err" | tr '\n' ' ' | head -c 300)"
}

cni_figures() {
  local cfgs=() cfg i paths
  for cfg in $CONFIGS; do [ -n "${LAB[$cfg]:-}" ] && cfgs+=("$cfg"); done
  [ "${#cfgs[@]}" -gt 0 ] || return 0
  # One lab after the other, each after a pause: what a CNI ADD leaves the kernel doing for
  # a moment afterwards (seen with the bridge plugin: an ADD started right after a batch
  # of bridge ADDs sometimes waits 200-300 ms) must not land on the next lab's figure.
  for cfg in "${cfgs[@]}"; do
    log "$cfg: CNI ADD x$CNI_PODS on node 2"
    # Created here, in the root mount namespace, so that a node agent can open them too.
    paths=()
    for i in $(seq 1 "$CNI_PODS"); do
      ip netns add "${LAB[$cfg]}-cni-$i"
      paths+=("/run/netns/${LAB[$cfg]}-cni-$i")
    done
    sleep "$CNI_SETTLE"
    note "$cfg: before the CNI ADDs, $(cpu_busy)% of the CPUs were busy; load average $(loadavg)"
    cni_call "$cfg" add "${paths[@]}"
    sleep "$CNI_SETTLE"
  done
  log "CNI DEL of all of them"
  for cfg in "${cfgs[@]}"; do cni_call "$cfg" del; done
  for cfg in "${cfgs[@]}"; do
    local lab=${LAB[$cfg]} adds dels errors
    for i in $(seq 1 "$CNI_PODS"); do ip netns del "$lab-cni-$i" 2>/dev/null || true; done
    adds=$(jq -r '.add_ms[]?' "$WORK/$lab-cni-add.json" 2>/dev/null || true)
    dels=$(jq -r '.del_ms[]?' "$WORK/$lab-cni-del.json" 2>/dev/null || true)
    errors=$(jq -s '[.[].errors[]] | length' "$WORK/$lab-cni-add.json" "$WORK/$lab-cni-del.json" 2>/dev/null || echo "?")
    if [ "$errors" != 0 ]; then
      note "$cfg: $errors CNI errors, first: $(jq -rs '[.[].errors[]][0]' "$WORK/$lab-cni-add.json" "$WORK/$lab-cni-del.json" 2>/dev/null | head -c 300)"
    fi
    note "$cfg: CNI chain $(jq -c '.plugins' "$WORK/$lab-cni-add.json" 2>/dev/null | head -1), $(wc -w <<<"$adds") ADDs and $(wc -w <<<"$dels") DELs succeeded; ADD min/max $(percentile 0 <<<"$adds")/$(percentile 100 <<<"$adds") ms"
    i=0
    for v in $adds; do i=$((i + 1)); record "$cfg" node "cni_add_ms#$i" "$v"; done
    record "$cfg" node cni_add_p50_ms "$(percentile 50 <<<"$adds")"
    record "$cfg" node cni_add_p99_ms "$(percentile 99 <<<"$adds")"
    record "$cfg" node cni_del_p50_ms "$(percentile 50 <<<"$dels")"
  done
}

# ---------------------------------------------------------------- the run
started=$(date +%s)
wait_idle "$IDLE_WAIT"

for cfg in $CONFIGS; do
  case $cfg in
    veth) veth_up ;;
    bridge) lab_up bridge bridge native b ;;
    bridge-masq) lab_up bridge-masq bridge native m masq ;;
    bridge-kp) lab_up bridge-kp bridge native k kube-proxy ;;
    fibril-native) lab_up fibril-native fibril native n ;;
    fibril-tunnel) lab_up fibril-tunnel fibril tunnel t ;;
  esac
done
note "with everything up and idle, $(cpu_busy)% of the CPUs were busy"

for r in $(seq 1 "$REPS"); do
  log "round $r/$REPS: TCP_RR, client and server on CPU $CPU (${SECS}s each)"
  for s in "${SLOTS[@]}"; do rr "$s" rr "$CPU" "$r"; done
  log "round $r/$REPS: TCP_RR, client on CPU $OTHER_CPU, server on CPU $CPU"
  for s in "${SLOTS[@]}"; do rr "$s" rrx "$OTHER_CPU" "$r"; done
  log "round $r/$REPS: TCP stream (iperf3, client and server on CPU $CPU)"
  for s in "${SLOTS[@]}"; do stream "$s" "$r"; done
  log "round $r/$REPS: new connections/s (wrk -t$WRK_THREADS -c$WRK_CONNS, Connection: close)"
  for s in "${SLOTS[@]}"; do conns "$s" "$r"; done
  note "after round $r, with the bench idle, $(cpu_busy)% of the CPUs were busy; load average $(loadavg)"
done
for cfg in $CONFIGS; do [ -n "${LAB[$cfg]:-}" ] && lab_evidence "$cfg"; done
cni_figures
note "the whole run took $(( $(date +%s) - started )) s"

# The median over the rounds of every traffic figure (each CNI ADD time is in the .tsv too,
# as cni_add_ms#<n>, in the order they ran).
python3 - "$RESULTS" <<'EOF'
import collections, sys
runs = collections.defaultdict(list)
lines = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
for cfg, path, metric, value in lines:
    if "#" in metric and value != "-" and not metric.startswith("cni_"):
        runs[(cfg, path, metric.split("#")[0])].append(float(value))
with open(sys.argv[1], "a") as out:
    for (cfg, path, metric), v in sorted(runs.items()):
        v.sort()
        out.write(f"{cfg}\t{path}\t{metric}\t{v[(len(v) - 1) // 2]:.3f}\n")
EOF

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$repo" diff --quiet HEAD -- crates bpf Cargo.toml Cargo.lock 2>/dev/null; then
  commit="$commit, with uncommitted changes in crates/ or bpf/"
fi
commit="$commit; binaries in $BIN_DIR built $(date -r "$FIBRIL" '+%F %T')"
export B_DATE=$DATE B_COMMIT=$commit B_HOST="$(hostname) ($(nproc) CPUs)" B_CONFIGS=$CONFIGS \
  B_SECONDS=$SECS B_REPS=$REPS B_CNI_PODS=$CNI_PODS B_KERNEL=$(uname -r) \
  B_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') x $(nproc)" \
  B_TOOLS="sockperf $(dpkg-query -W -f='${Version}' sockperf), iperf3 $(dpkg-query -W -f='${Version}' iperf3), wrk $(dpkg-query -W -f='${Version}' wrk)" \
  B_WRK="-t$WRK_THREADS -c$WRK_CONNS" B_NPROC=$(nproc) B_CPU_ID=$CPU B_OTHER_CPU=$OTHER_CPU
python3 - "$WORK/meta.json" "$NOTES" <<'EOF'
import json, os, sys
e = os.environ
secs, reps, pods = e["B_SECONDS"], e["B_REPS"], e["B_CNI_PODS"]
json.dump({
  "date": e["B_DATE"], "commit": e["B_COMMIT"], "host": e["B_HOST"],
  "configs": e["B_CONFIGS"].split(), "cni_pods": int(pods),
  "kernel": e["B_KERNEL"], "cpu": e["B_CPU"], "tools": e["B_TOOLS"],
  "method": [
    "veth pair: two namespaces joined by one veth pair (10.250.0.1 <-> 10.250.0.2): no bridge, "
    "no routing, no netfilter rules. It has one path, the baseline for same-node and cross-node.",
    "bridge CNI + ipMasq: the bridge lab plus, in each node, the masquerade rule the bridge "
    "plugin's `ipMasq: true` adds (`iptables -t nat -A POSTROUTING -s 10.244.0.0/16 ! -d "
    "10.244.0.0/16 -j MASQUERADE`): pod-to-pod traffic matches no rule, but the nat table turns "
    "conntrack on for every packet through the node (bridged same-node ones too where "
    "br_netfilter's bridge-nf-call-iptables is on). The lab's plain bridge config has "
    "`ipMasq: false` and no kube-proxy, so it pays for no conntrack at all.",
    "bridge CNI + kube-proxy: the bridge lab plus, in each node, the iptables rules kube-proxy "
    "(mode iptables) keeps for the lab's own Services (`bench/kube_proxy_lab.py`: nat "
    "KUBE-SERVICES with a rule per Service port, KUBE-SVC/KUBE-SEP chains to the ready "
    "endpoints, KUBE-POSTROUTING; filter KUBE-FORWARD, KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, "
    "KUBE-PROXY-FIREWALL, KUBE-FIREWALL, KUBE-NODEPORTS jumps from INPUT, FORWARD and OUTPUT). "
    "A bridge-CNI node needs kube-proxy to have Services at all; fibril's labs do the same job "
    "in their BPF datapath, which is in the fibril figures. Pod-to-pod traffic matches no DNAT "
    "rule: it pays for conntrack on every packet, kube-proxy's filter chains on every forwarded "
    "packet and its nat chains on every new connection.",
    "labs: 2 nodes each. Pod `server` (node 1) runs sockperf server, iperf3 -s and the lab's "
    "fibril/echo HTTP server; `client-same` (node 1) and `client-cross` (node 2) run the clients "
    "through `fibril lab exec`.",
    f"All configurations were up at once and every figure went round-robin over them, {reps} "
    f"rounds of {secs} s runs; a figure is the median of its {reps} runs (each run is in the .tsv).",
    "TCP_RR: `sockperf ping-pong --tcp --full-rtt` (14-byte messages, one in flight): round-trip "
    f"times in µs. `1 CPU`: client and server pinned to CPU {e['B_CPU_ID']} (taskset); `2 CPUs`: "
    f"the client on CPU {e['B_OTHER_CPU']}. On this VM a wake-up across CPUs (an IPI, a VM exit) "
    "costs ~30-40 µs, more than the whole datapath, and an unpinned run lands on one placement or "
    "the other at random: the 1-CPU figure is the one that shows the datapath's cost.",
    f"TCP stream: `iperf3 -c -t {secs} -O 1`, one stream, client and server on CPU "
    f"{e['B_CPU_ID']}; the receiver's rate.",
    f"new connections/s: `wrk {e['B_WRK']} -d{secs}s -H 'Connection: close'` against "
    "fibril/echo, not pinned: one request per TCP connection, so Requests/sec = connections/s. "
    "The veth pair runs the same echo binary (`fibril lab workload echo`), its log also going "
    "to a file.",
    f"CNI ADD: `bench/cni_add.py` runs node 2's own CNI config (its conf dir and CNI_PATH) as "
    f"libcni does (plugin chain, prevResult), inside the node's netns: {pods} ADDs into scratch "
    "namespaces one after the other, one lab after the other with a 3 s pause before and after "
    "each lab's ADDs; then DEL of all of them. A time is the wall time of the whole chain, the "
    "plugin processes' start-up included. It is the plugin alone: not the kubelet's pod "
    "start-up, nor API round trips.",
    f"The machine has {e['B_NPROC']} CPUs shared by clients, servers and the labs' control "
    "planes: every figure is CPU-bound and can be disturbed by other work on the machine (see "
    "the notes). Compare the ratios within one run, not figures across runs.",
  ],
  "notes": [l.rstrip() for l in open(sys.argv[2]) if l.strip()],
}, open(sys.argv[1], "w"), indent=1, ensure_ascii=False)
EOF
mkdir -p "$(dirname "$OUT")"
python3 "$here/report.py" "$RESULTS" "$WORK/meta.json" >"$OUT"
sort -t$'\t' -k1,1 -k2,2 -k3,3V "$RESULTS" >"${OUT%.md}.tsv"
log "report: $OUT"
cat "$OUT"
