#!/usr/bin/env bash
# Services benchmark (issue 4): the cost of a new connection to a Service as the number of
# Services grows, fibril's BPF datapath against kube-proxy's iptables layout, in one run;
# and the fibril agent's resources and programming time at 10k Services.
#
#   - fibril: a lab `--cni fibril` (2 nodes). N Services are created through the lab API
#     server; the agents program them into the BPF service maps.
#   - the peer (iptables): a lab `--cni bridge` with the same pods, and kube-proxy's
#     iptables nat layout for N Services (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* DNAT,
#     bench/kube_proxy_rules.py) restored in the client node's namespace only.
#
# For each N (BENCH_SERVICES): new connections/s (wrk, Connection: close) and connect()
# time (the SYN round trip, bench/connect_rtt.py) to the LAST Service's ClusterIP, from a
# client pod on node 1 to the server pod on node 2 (and same-node for fibril).
# N counts Service ports (frontends: ClusterIP, port): what both datapaths look up per new
# connection (kube-proxy writes one KUBE-SERVICES rule and KUBE-SVC chain per Service port,
# fibril one service map entry). In the traffic labs they come in Services of up to
# BENCH_PORTS_PER_SERVICE ports, in both setups: the lab API server's Service create scans
# every existing Service (ClusterIP allocation), so 100k one-port Services would take it
# hours; the agent figures use 10k real one-port Services.
# Then (a separate fibril lab): the agent's RSS and CPU with 10k Services / 100k endpoints,
# idle and through a full resync, and the time to program 10k Services into empty maps.
# Writes bench/results/<date>-services.md (+ .tsv). See bench/README.md.
#
# Run as root, after bench/setup.sh and `cargo build --release --bins`.
#
# Environment:
#   FIBRIL_BIN_DIR        where fibril and fibril-cni are (default: <repo>/target/release)
#   BENCH_SERVICES        the N to measure, ascending (default "1 1000 10000 100000")
#   BENCH_PHASES          "traffic agent" (default both; traffic first)
#   BENCH_REPS            rounds of every traffic figure per N; the report has the median (3)
#   BENCH_SECONDS         length of one wrk run (default 2)
#   BENCH_CONNECTS        connect() samples per run of connect_rtt.py (default 2000)
#   BENCH_WRK_THREADS, BENCH_WRK_CONNS  wrk's load (default 2, 64)
#   BENCH_SERVICE_CIDR    both labs' --service-cidr (default 10.96.0.0/12: 1M addresses)
#   BENCH_PEER_VIP_BASE   the iptables peer's first ClusterIP (default 10.100.0.1)
#   BENCH_SVC_MODE        fibril's Services: "selector" (the lab's EndpointSlice controller
#                         writes their slices) or "slices" (selector-less, one slice written
#                         with each Service); default selector
#   BENCH_PORTS_PER_SERVICE  the traffic labs' Service ports per Service (default 100; see
#                         below)
#   BENCH_LOAD_WORKERS    API requests in flight while creating Services (default 8)
#   BENCH_STEP_TIMEOUT    seconds one fibril step (create + program) may take before the
#                         larger N are given up for fibril (default 3600)
#   BENCH_RES_SERVICES, BENCH_RES_ENDPOINTS  the agent figures' Services and endpoints per
#                         Service (default 10000, 10)
#   BENCH_RES_IDLE_SECONDS  the idle CPU window (default 35: one 30 s periodic resync in it)
#   BENCH_IDLE_WAIT       seconds to wait at the start for other load to go (default 60)
#   BENCH_OUT             the report (default bench/results/<date>-services.md)
#
# Safety: every lab, namespace and file the run creates is named fibs<run>…; the root
# network namespace is never changed (iptables only runs inside the peer lab's node 1
# namespace) and traffic only flows between the labs' pods. On exit (also on failure or
# Ctrl-C) a trap stops the bench's processes, takes every lab down and deletes every
# namespace it created.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
BIN_DIR=${FIBRIL_BIN_DIR:-$repo/target/release}
FIBRIL=$BIN_DIR/fibril
SERVICES=${BENCH_SERVICES:-1 1000 10000 100000}
PHASES=${BENCH_PHASES:-traffic agent}
REPS=${BENCH_REPS:-3}
SECS=${BENCH_SECONDS:-2}
CONNECTS=${BENCH_CONNECTS:-2000}
WRK_THREADS=${BENCH_WRK_THREADS:-2} WRK_CONNS=${BENCH_WRK_CONNS:-64}
SERVICE_CIDR=${BENCH_SERVICE_CIDR:-10.96.0.0/12}
PEER_VIP_BASE=${BENCH_PEER_VIP_BASE:-10.100.0.1}
SVC_MODE=${BENCH_SVC_MODE:-selector}
PORTS=${BENCH_PORTS_PER_SERVICE:-100}
LOAD_WORKERS=${BENCH_LOAD_WORKERS:-8}
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-3600}
RES_SERVICES=${BENCH_RES_SERVICES:-10000}
RES_ENDPOINTS=${BENCH_RES_ENDPOINTS:-10}
RES_IDLE=${BENCH_RES_IDLE_SECONDS:-35}
IDLE_WAIT=${BENCH_IDLE_WAIT:-60}
DATE=$(date +%F)
OUT=${BENCH_OUT:-$here/results/$DATE-services.md}
SVC_PORT=80 HTTP_PORT=8080
POD_CIDR=10.244.0.0/16       # the traffic labs' pod CIDR (fibril lab up's default)
RES_POD_CIDR=10.240.0.0/12   # the agent lab's: room for 100k distinct endpoint addresses
RES_EP_BASE=10.241.0.1       # its endpoints: in the pod CIDR, outside node 1's block
# The BPF service maps (bpf/include/fibril_shared.h): removed to start from empty maps.
SVC_MAPS="fibril_svc fibril_svc_be fibril_svc_memb fibril_svc_aff fibril_svc_meta fibril_ct"
HZ=$(getconf CLK_TCK)

# shellcheck source=bench/lib.sh
source "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root: the bench creates network namespaces and labs"
[ -x "$FIBRIL" ] || die "no fibril binary at $FIBRIL: build with cargo build --release --bins, or set FIBRIL_BIN_DIR"
[ -x "$BIN_DIR/fibril-cni" ] || die "no fibril-cni next to fibril in $BIN_DIR (cargo build --release --bins)"
for t in wrk jq python3 ip iptables-restore; do
  command -v "$t" >/dev/null || die "$t is missing: run bench/setup.sh"
done
prev=0
for n in $SERVICES; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "BENCH_SERVICES: $n is not a positive number"
  [ "$n" -gt "$prev" ] || die "BENCH_SERVICES: must be ascending (got $n after $prev)"
  prev=$n
done
for p in $PHASES; do
  case $p in traffic | agent) ;; *) die "BENCH_PHASES: unknown phase $p (traffic, agent)" ;; esac
done
case $SVC_MODE in selector | slices) ;; *) die "BENCH_SVC_MODE: selector or slices, got $SVC_MODE" ;; esac
[[ $PORTS =~ ^[1-9][0-9]*$ ]] && [ "$PORTS" -le 1000 ] || die "BENCH_PORTS_PER_SERVICE: 1 to 1000, got $PORTS"
# The pods run the host's binaries: the real interpreter, not a shell shim.
PY=$(python3 -c 'import sys; print(sys.executable)')

run=$(printf '%05x' $(( ((RANDOM << 15) | RANDOM) & 0xfffff )))
PREFIX=fibs$run
WORK=$(mktemp -d "/tmp/$PREFIX.XXXXXX")
export FIBRIL_STATE_ROOT=$WORK/labs
mkdir -p "$FIBRIL_STATE_ROOT"
RESULTS=$WORK/results.tsv NOTES=$WORK/notes.txt
: >"$RESULTS"; : >"$NOTES"
LAB_R=${PREFIX}r   # the agent figures' lab; the traffic labs are ${PREFIX}f, g, b, c
UP_LABS=()

cleanup() {
  local rc=$? ns l p
  set +e
  trap - EXIT INT TERM
  for l in "${UP_LABS[@]}"; do
    log "lab down $l"
    "$FIBRIL" lab down --name "$l" >/dev/null 2>&1 || echo "warning: lab down $l failed" >&2
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX"); do
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

# record SETUP PATH N METRIC VALUE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:--}" >>"$RESULTS"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }


# ---------------------------------------------------------------- labs and pods
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
  labels:
    app: server
spec:
  nodeSelector:
    kubernetes.io/hostname: $2
  containers:
    - name: http
      image: fibril/echo
      ports:
        - {name: http, containerPort: $HTTP_PORT, protocol: TCP}
---
apiVersion: v1
kind: Pod
metadata:
  name: client-cross
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
  name: client-same
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

# lab_up LAB CNI NODES POD_CIDR: up, or a note and failure.
lab_up() {
  local lab=$1 cni=$2 nodes=$3 pod_cidr=$4 t0
  log "fibril lab up --name $lab --nodes $nodes --cni $cni --service-cidr $SERVICE_CIDR --pod-cidr $pod_cidr"
  UP_LABS+=("$lab")
  t0=$(now_ms)
  if ! "$FIBRIL" lab up --name "$lab" --nodes "$nodes" --cni "$cni" --service-cidr "$SERVICE_CIDR" \
    --pod-cidr "$pod_cidr" >"$WORK/$lab-up.log" 2>&1; then
    note "lab $lab ($cni): lab up failed: $(tail -5 "$WORK/$lab-up.log" | tr '\n' ' ' | head -c 600)"
    return 1
  fi
  note "lab $lab ($cni, $nodes nodes, service CIDR $SERVICE_CIDR) up in $(( $(now_ms) - t0 )) ms"
}

# no_dns LAB: deletes the lab's cluster DNS (the fibril-dns Deployment, its pod goes with
# it). The bench resolves no name, and the DNS server rebuilds its zone on every Service
# change: with thousands of Services it would take CPU from what is measured.
no_dns() {
  local i
  "$PY" - "$FIBRIL_STATE_ROOT/$1/api.sock" /apis/apps/v1/namespaces/kube-system/deployments/fibril-dns <<'EOF'
import http.client, socket, sys
c = http.client.HTTPConnection("localhost")
c.sock = socket.socket(socket.AF_UNIX)
c.sock.connect(sys.argv[1])
c.request("DELETE", sys.argv[2])
r = c.getresponse()
body = r.read()
if r.status not in (200, 202):
    sys.exit(f"DELETE {sys.argv[2]}: HTTP {r.status}: {body[:300]!r}")
EOF
  for i in $(seq 1 150); do
    if [ "$("$FIBRIL" lab get pods --name "$1" -n kube-system -o json 2>/dev/null | jq '[.items[] | select(.metadata.name | startswith("fibril-dns"))] | length')" = 0 ]; then
      return 0
    fi
    sleep 0.2
  done
  note "lab $1: the fibril-dns pod is still there 30 s after its Deployment was deleted"
}

# bench_pods LAB: the server and the two clients, Ready; prints the server's IP.
bench_pods() {
  local lab=$1 pods i
  bench_manifest "$lab-node-1" "$lab-node-2" >"$WORK/$lab.yaml"
  "$FIBRIL" lab apply --name "$lab" -f "$WORK/$lab.yaml" >/dev/null
  for i in $(seq 1 300); do
    pods=$("$FIBRIL" lab get pods --name "$lab" -n bench -o json 2>/dev/null) || true
    if [ "$(jq '[.items[] | select(any(.status.conditions[]?; .type=="Ready" and .status=="True"))] | length' <<<"$pods" 2>/dev/null)" = 3 ]; then
      jq -r '.items[] | select(.metadata.name=="server") | .status.podIP' <<<"$pods"
      return 0
    fi
    sleep 0.2
  done
  note "lab $lab: bench pods not Ready in 60 s: $(jq -c '[.items[] | {n: .metadata.name, phase: .status.phase}]' <<<"$pods" 2>/dev/null | head -c 400)"
  return 1
}

wait_listening() { # LAB
  local i ports=
  for i in $(seq 1 100); do
    ports=$("$FIBRIL" lab exec --name "$1" -n bench server -- ss -Hltn 2>/dev/null | awk '{print $4}' | sed 's/.*://' | tr '\n' ' ') || true
    [[ " $ports " == *" $HTTP_PORT "* ]] && return 0
    sleep 0.2
  done
  note "lab $1: the echo server does not listen on $HTTP_PORT"
  return 1
}

# The PID of a lab component (from the supervisor's components file), or nothing.
component_pid() { # LAB ID
  jq -r --arg id "$2" '.components[] | select(.id==$id and .state=="running") | .pid // empty' \
    "$FIBRIL_STATE_ROOT/$1/components.json" 2>/dev/null || true
}

# CPU seconds (user + system) a process has used so far.
cpu_secs() { # PID
  local stat
  stat=$(cat "/proc/$1/stat") || return 1
  # Fields after the command (which is in parentheses and may hold spaces): 14 utime, 15 stime.
  awk -v hz="$HZ" '{print ($12 + $13) / hz}' <<<"${stat##*) }"
}
mem_kib() { # PID FIELD (VmRSS, VmHWM)
  awk -v f="$2:" '$1==f {print $2}' "/proc/$1/status"
}

# A node's agent status (JSON), or nothing.
agent_status() { # LAB NODE
  "$FIBRIL" status --name "$1" --node "$2" -o json 2>/dev/null || true
}

# "frontends without_backends sync_error" of a node's agent.
svc_counts() { # LAB NODE
  agent_status "$1" "$2" | jq -r '[.services.frontends // -1, .services.withoutBackends // -1, (.services.syncError // "" | length)] | @tsv' 2>/dev/null || echo "-1 -1 0"
}

# "frontends without_backends" once a node's agent has synced and two readings 1 s apart
# agree (the lab's own Services, right after lab up).
settled_counts() { # LAB NODE
  local a b i
  for i in $(seq 1 60); do
    a=$(svc_counts "$1" "$2"); sleep 1; b=$(svc_counts "$1" "$2")
    if [ "$a" = "$b" ] && [ "$(cut -f1 <<<"$a")" -ge 0 ] && [ "$(cut -f3 <<<"$a")" = 0 ] &&
      agent_status "$1" "$2" | jq -e '.services.lastSync' >/dev/null 2>&1; then
      cut -f1,2 <<<"$a" | tr '\t' ' '
      return 0
    fi
  done
  note "lab $1: $2's agent did not settle: $b"
  echo "-1 -1"
}

# wait_programmed LAB NODE FRONTENDS WITHOUT TIMEOUT_S: until the node's agent has synced
# a table of FRONTENDS frontends, WITHOUT of them without backends, with no sync error.
wait_programmed() {
  local lab=$1 node=$2 want=$3 wb=$4 deadline=$(( $(date +%s) + $5 )) got
  while :; do
    read -r f w e <<<"$(svc_counts "$lab" "$node")"
    got="$f frontends, $w without backends"
    if [ "$f" = "$want" ] && [ "$w" = "$wb" ] && [ "$e" = 0 ]; then return 0; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      note "lab $lab: $node's agent did not program $want frontends ($wb without backends) in time: it has $got"
      return 1
    fi
    sleep 0.5
  done
}

# Agent log lines "service maps synced" as TSV: added updated removed elapsed_ms frontends.
sync_lines() { # LOG_FILE [FROM_LINE]
  tail -n +"${2:-1}" "$1" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep 'service maps synced' |
    sed -E 's/.*frontends=([0-9]+).*added=([0-9]+).*updated=([0-9]+).*removed=([0-9]+).*elapsed_ms=([0-9.]+).*/\2\t\3\t\4\t\5\t\1/' || true
}
agent_log() { echo "$FIBRIL_STATE_ROOT/$1/logs/fibril-agent_$2.log"; }

# jq: the entries of node 1 in `fibril bpf services -o json` that belong to namespace bench.
bench_entries() {
  echo '[.[0].entries[] | select((.service | if type == "string" then . else "\(.namespace)/\(.name)" end) | startswith("bench/"))]'
}

# ---------------------------------------------------------------- traffic figures
# Four setups, each its own lab: fibril and iptables hold N Service ports; fibril-ref and
# iptables-ref hold 1 all along, and are measured in the same rounds: their figures are
# "the cost at 1 Service" at the same moment, so load from other jobs on the machine, which
# changes over a long run, does not pass for growth.
declare -A VIP=() PORT_OF=() LAB_OF=() SERVER_IP=() SVC_NEXT=() BASE_FE=() BASE_WB=()

client() { # SLOT CMD...
  local setup=${1%%:*} path=${1#*:}
  shift
  "$FIBRIL" lab exec --name "${LAB_OF[$setup]}" -n bench "client-$path" -- "$@"
}

conns() { # SLOT N RUN
  local slot=$1 n=$2 r=$3 st=${1%%:*} out v
  out=$(client "$slot" timeout $((SECS + 30)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${SECS}s" \
          -H 'Connection: close' "http://${VIP[$st]}:${PORT_OF[$st]}/" 2>&1) || true
  v=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  [ -n "$v" ] || note "$slot N=$n: wrk failed: $(tail -3 <<<"$out" | tr '\n' ' ')"
  if grep -q 'Socket errors\|Non-2xx' <<<"$out"; then
    note "$slot N=$n run $r: wrk reported $(grep 'Socket errors\|Non-2xx' <<<"$out" | tr -s ' ' | tr '\n' ';')"
  fi
  record "$st" "${slot#*:}" "$n" "conn_per_s#$r" "$v"
}

rtt() { # SLOT N RUN
  local slot=$1 n=$2 r=$3 st=${1%%:*} out m
  out=$(client "$slot" timeout 600 "$PY" "$here/connect_rtt.py" --ip "${VIP[$st]}" \
          --port "${PORT_OF[$st]}" --count "$CONNECTS" 2>&1) || true
  if ! jq -e '.median_us' <<<"$out" >/dev/null 2>&1; then
    note "$slot N=$n: connect_rtt failed: $(head -c 300 <<<"$out")"
  elif [ "$(jq '.errors' <<<"$out")" != 0 ]; then
    note "$slot N=$n run $r: $(jq -c '{errors, first_errors}' <<<"$out")"
  fi
  for m in median p99 mean; do
    record "$st" "${slot#*:}" "$n" "rtt_${m}_us#$r" "$(jq -r ".${m}_us // empty" <<<"$out" 2>/dev/null)"
  done
}

# setup_lab SETUP: the lab, without DNS, with the bench pods; its agents' own frontends.
setup_lab() {
  local st=$1 lab=${LAB_OF[$1]} cni fe wb n
  case $st in fibril*) cni=fibril ;; *) cni=bridge ;; esac
  lab_up "$lab" "$cni" 2 "$POD_CIDR" || return 1
  no_dns "$lab"
  SERVER_IP[$st]=$(bench_pods "$lab") || return 1
  wait_listening "$lab" || return 1
  SVC_NEXT[$st]=0
  if [ "$cni" = fibril ]; then
    for n in 1 2; do
      read -r fe wb <<<"$(settled_counts "$lab" "$lab-node-$n")"
      BASE_FE[$st:$n]=$fe BASE_WB[$st:$n]=$wb
    done
    note "$st: before the bench's Services, the agents held ${BASE_FE[$st:1]} and ${BASE_FE[$st:2]} frontends (the lab's kube-dns Service), ${BASE_WB[$st:1]}/${BASE_WB[$st:2]} without backends"
  else
    note "$st: node 1 has $("$FIBRIL" lab exec --name "$lab" --node "$lab-node-1" -- iptables-save -t nat 2>/dev/null | grep -c '^-A' || true) nat rules before the bench's (no kube-proxy in the lab)"
  fi
}

# fibril_grow SETUP FROM TO: the Service ports FROM..TO-1, in new Services of up to PORTS
# ports (the last one fewer), then wait until both agents hold them.
fibril_grow() {
  local st=$1 from=$2 to=$3 lab=${LAB_OF[$1]} t0 out f n full rest secs=0 svcs=0 slices=0 batch
  full=$(( (to - from) / PORTS )) rest=$(( (to - from) % PORTS ))
  log "$st: Service ports $from..$((to - 1)): $full Services of $PORTS ports$([ "$rest" -gt 0 ] && echo " and one of $rest") ($SVC_MODE)"
  t0=$(now_ms)
  for batch in "$full $PORTS" "$([ "$rest" -gt 0 ] && echo "1 $rest")"; do
    [ -n "$batch" ] && [ "${batch%% *}" -gt 0 ] || continue
    local args=(--socket "$FIBRIL_STATE_ROOT/$lab/api.sock" --namespace bench --first "${SVC_NEXT[$st]}"
      --count "${batch%% *}" --ports "${batch##* }" --port $SVC_PORT --target-port $HTTP_PORT
      --workers "$LOAD_WORKERS")
    if [ "$SVC_MODE" = selector ]; then
      args+=(--selector app=server)
    else
      args+=(--endpoints 1 --endpoint-base "${SERVER_IP[$st]}" --same-endpoints)
    fi
    if ! out=$(timeout "$STEP_TIMEOUT" "$PY" "$here/svc_load.py" "${args[@]}" 2>"$WORK/svc_load.err"); then
      note "$st N=$to: creating the Services failed or timed out after $(( ($(now_ms) - t0) / 1000 )) s: $(head -c 400 <<<"$out") $(tail -2 "$WORK/svc_load.err" | tr '\n' ' ')"
      return 1
    fi
    SVC_NEXT[$st]=$(( SVC_NEXT[$st] + ${batch%% *} ))
    secs=$(awk -v a="$secs" -v b="$(jq -r '.elapsed_s' <<<"$out")" 'BEGIN {print a + b}')
    svcs=$(( svcs + $(jq -r '.services' <<<"$out") )) slices=$(( slices + $(jq -r '.slices' <<<"$out") ))
    VIP[$st]=$(jq -r '.last.clusterIP' <<<"$out") PORT_OF[$st]=$(jq -r '.last.port' <<<"$out")
  done
  record "$st" api "$to" create_s "$secs"
  record "$st" api "$to" services "${SVC_NEXT[$st]}"
  for n in 1 2; do
    local left=$(( STEP_TIMEOUT - ($(now_ms) - t0) / 1000 ))
    [ "$left" -gt 0 ] || left=1
    wait_programmed "$lab" "$lab-node-$n" $(( BASE_FE[$st:$n] + to )) "${BASE_WB[$st:$n]}" "$left" || return 1
  done
  local ready_ms=$(( $(now_ms) - t0 ))
  record "$st" api "$to" programmed_s "$(awk -v m="$ready_ms" 'BEGIN {printf "%.3f", m / 1000}')"
  note "$st N=$to: $svcs new Services ($((to - from)) Service ports; ${SVC_NEXT[$st]} bench Services in all) created in $secs s ($slices slices written by the bench); both agents held all $to Service ports $ready_ms ms after the first create"
  # The datapath itself: node 1's pinned maps hold N bench frontends, the last one's backend
  # is the server pod.
  "$FIBRIL" bpf services --name "$lab" --node "$lab-node-1" -o json >"$WORK/dump.json" 2>"$WORK/dump.err" || true
  f=$(jq -r --arg ip "${VIP[$st]}" --argjson port "${PORT_OF[$st]}" "$(bench_entries)"'
      | [length, ([.[] | select(.frontend.ip == $ip and .frontend.port == $port)][0].backends // [] | map("\(.ip):\(.port)") | join(","))]
      | @tsv' "$WORK/dump.json" 2>/dev/null || echo "? ?")
  note "$st N=$to: fibril bpf services on node 1: $(cut -f1 <<<"$f") bench frontends; the last (${VIP[$st]}:${PORT_OF[$st]}) -> $(cut -f2 <<<"$f") (server ${SERVER_IP[$st]}:$HTTP_PORT)"
  record "$st" node-1 "$to" datapath_frontends "$(cut -f1 <<<"$f")"
  rm -f "$WORK/dump.json"
  for n in 1 2; do
    local pid
    pid=$(component_pid "$lab" "fibril-agent/$lab-node-$n")
    [ -n "$pid" ] && record "$st" "node-$n" "$to" agent_rss_kib "$(mem_kib "$pid" VmRSS)"
  done
  return 0
}

# peer_program SETUP N: kube-proxy's layout for N Service ports restored in the client's
# node (node 1).
peer_program() {
  local st=$1 n=$2 lab=${LAB_OF[$1]} t0 ms
  "$PY" "$here/kube_proxy_rules.py" --services "$n" --ports-per-service "$PORTS" --vip-base "$PEER_VIP_BASE" \
    --port $SVC_PORT --endpoint "${SERVER_IP[$st]}:$HTTP_PORT" --cluster-cidr "$POD_CIDR" >"$WORK/rules"
  log "$st: restoring kube-proxy's layout for $n Service ports ($(wc -l <"$WORK/rules") lines) in $lab-node-1"
  t0=$(now_ms)
  if ! "$FIBRIL" lab exec --name "$lab" --node "$lab-node-1" -- iptables-restore -w <"$WORK/rules" 2>"$WORK/restore.err"; then
    note "$st N=$n: iptables-restore failed: $(tail -3 "$WORK/restore.err" | tr '\n' ' ')"
    return 1
  fi
  ms=$(( $(now_ms) - t0 ))
  rm -f "$WORK/rules"
  record "$st" api "$n" restore_s "$(awk -v m="$ms" 'BEGIN {printf "%.3f", m / 1000}')"
  # The last Service port: port (N-1) % PORTS of Service (N-1) / PORTS.
  VIP[$st]=$("$PY" -c 'import ipaddress, sys; print(ipaddress.IPv4Address(sys.argv[1]) + (int(sys.argv[2]) - 1) // int(sys.argv[3]))' "$PEER_VIP_BASE" "$n" "$PORTS")
  PORT_OF[$st]=$(( SVC_PORT + (n - 1) % PORTS ))
  note "$st N=$n: iptables-restore of the rules for $n Service ports ($(( (n + PORTS - 1) / PORTS )) Services) in $lab-node-1 took $ms ms; the last is ${VIP[$st]}:${PORT_OF[$st]}"
}

# peer_evidence SETUP N: the packets the last Service's KUBE-SVC chain counted (the
# connections walked KUBE-SERVICES to its end).
peer_evidence() {
  local st=$1 n=$2 lab=${LAB_OF[$1]} chain pk
  chain=$("$PY" -B -c 'import sys; sys.path.insert(0, sys.argv[1]); import kube_proxy_rules as k
i, per = int(sys.argv[2]) - 1, int(sys.argv[3])
name = f"bench/svc-{i}:http" if per == 1 else f"bench/svc-{i // per}:p{i % per}"
print(k.chain("KUBE-SVC-", name + "tcp"))' "$here" "$n" "$PORTS")
  pk=$("$FIBRIL" lab exec --name "$lab" --node "$lab-node-1" -- iptables -w -t nat -L "$chain" -nvx 2>/dev/null |
    awk 'NR > 2 && $3 ~ /KUBE-SEP/ {print $1}' | head -1)
  note "$st N=$n: the last Service port's chain $chain sent ${pk:-?} packets to its KUBE-SEP"
}

traffic_phase() {
  local st n prev=0 r s counts
  LAB_OF[fibril]=${PREFIX}f LAB_OF[fibril-ref]=${PREFIX}g LAB_OF[iptables]=${PREFIX}b LAB_OF[iptables-ref]=${PREFIX}c
  for st in fibril fibril-ref iptables iptables-ref; do
    setup_lab "$st" || { note "$st: setup failed, the traffic phase is skipped"; return 0; }
  done
  # The references: 1 Service port each, for the whole phase.
  fibril_grow fibril-ref 0 1 || { note "fibril-ref: no Service, the traffic phase is skipped"; return 0; }
  peer_program iptables-ref 1 || { note "iptables-ref: no rules, the traffic phase is skipped"; return 0; }
  note "with the four labs up and idle, $(cpu_busy)% of the CPUs were busy"

  local fibril_ok=1 peer_ok=1
  for n in $SERVICES; do
    local slots=()
    if [ -n "$fibril_ok" ]; then
      if fibril_grow fibril "$prev" "$n"; then
        slots+=(fibril:cross fibril:same)
      else
        fibril_ok=
        note "fibril: N=$n and above not measured (see above)"
      fi
    fi
    if [ -n "$peer_ok" ]; then
      if peer_program iptables "$n"; then
        slots+=(iptables:cross)
      else
        peer_ok=
        note "iptables: N=$n and above not measured (see above)"
      fi
    fi
    slots+=(fibril-ref:cross fibril-ref:same iptables-ref:cross)
    note "N=$n: before its figures, $(cpu_busy)% of the CPUs were busy"
    for r in $(seq 1 "$REPS"); do
      # Each round starts with another setup: none always runs first, right after the
      # previous batch's load.
      local order=() k
      for k in "${!slots[@]}"; do order+=("${slots[$(( (k + r - 1) % ${#slots[@]} ))]}"); done
      log "N=$n round $r/$REPS: wrk -t$WRK_THREADS -c$WRK_CONNS ${SECS}s, then $CONNECTS connects, to the last Service port"
      for s in "${order[@]}"; do conns "$s" "$n" "$r"; done
      sleep 1
      for s in "${order[@]}"; do rtt "$s" "$n" "$r"; done
    done
    note "N=$n: after its figures, $(cpu_busy)% of the CPUs were busy"
    [[ " ${slots[*]} " == *" iptables:cross "* ]] && peer_evidence iptables "$n"
    prev=$n
  done
  peer_evidence iptables-ref 1
  for st in fibril fibril-ref; do
    counts=
    for n in 1 2; do
      counts+="node-$n: $("$FIBRIL" lab exec --name "${LAB_OF[$st]}" --node "${LAB_OF[$st]}-node-$n" -- cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo '?'); "
    done
    note "$st: netfilter conntrack entries in the node namespaces after all the traffic: $counts(0: the Service path used no netfilter)"
  done
  note "iptables: netfilter conntrack entries in node 1 after the traffic: $("$FIBRIL" lab exec --name "${LAB_OF[iptables]}" --node "${LAB_OF[iptables]}-node-1" -- cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo '?')"
  log "traffic phase done: taking its labs down"
  for st in fibril fibril-ref iptables iptables-ref; do
    "$FIBRIL" lab down --name "${LAB_OF[$st]}" >/dev/null 2>&1 || note "lab down ${LAB_OF[$st]} failed"
  done
  UP_LABS=()
}

# ---------------------------------------------------------------- the agent's resources
# restart_agent LAB NODE: SIGTERM to the agent (by its PID); the lab supervisor starts a new
# one, as a DaemonSet would. Prints the new PID.
restart_agent() {
  local lab=$1 node=$2 old new i
  old=$(component_pid "$lab" "fibril-agent/$node")
  [ -n "$old" ] || { note "agent $node: no running agent to restart"; return 1; }
  kill -TERM "$old"
  for i in $(seq 1 200); do
    new=$(component_pid "$lab" "fibril-agent/$node")
    if [ -n "$new" ] && [ "$new" != "$old" ] && [ -e "/proc/$new" ]; then
      echo "$new"
      return 0
    fi
    sleep 0.05
  done
  note "agent $node: no new agent 10 s after SIGTERM to $old"
  return 1
}

# watch_first_sync LOG FROM_LINE PID TIMEOUT_S: waits for the new agent's first
# "service maps synced" line; prints "wall_ms cpu_s hwm_kib <sync line TSV>".
watch_first_sync() {
  local logf=$1 from=$2 pid=$3 deadline=$(( $(date +%s) + $4 )) start_ticks boot_ms line cpu hwm
  # The process's start, from /proc (ticks since boot), against the boot time.
  start_ticks=$(awk '{print $20}' <<<"$(cut -d')' -f2- "/proc/$pid/stat")")
  while :; do
    line=$(sync_lines "$logf" "$from" | head -1)
    if [ -n "$line" ]; then
      cpu=$(cpu_secs "$pid") hwm=$(mem_kib "$pid" VmHWM)
      boot_ms=$(awk '{printf "%d", $1 * 1000}' /proc/uptime)
      echo "$(( boot_ms - start_ticks * 1000 / HZ )) $cpu $hwm $line"
      return 0
    fi
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

agent_phase() {
  local node=$LAB_R-node-1 pid out base_fe base_wb t0 logf from w cpu0 cpu1 r
  lab_up "$LAB_R" fibril 1 "$RES_POD_CIDR" || return 0
  no_dns "$LAB_R"
  logf=$(agent_log "$LAB_R" "$node")
  read -r base_fe base_wb <<<"$(settled_counts "$LAB_R" "$node")"
  pid=$(component_pid "$LAB_R" "fibril-agent/$node")
  note "agent: lab $LAB_R (1 node, pod CIDR $RES_POD_CIDR); before the bench's Services the agent (PID $pid) held $base_fe frontends and had RSS $(mem_kib "$pid" VmRSS) KiB"
  record agent node-1 0 rss_kib "$(mem_kib "$pid" VmRSS)"
  printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n' >"$WORK/ns.yaml"
  "$FIBRIL" lab apply --name "$LAB_R" -f "$WORK/ns.yaml" >/dev/null

  log "agent: creating $RES_SERVICES selector-less Services with an EndpointSlice of $RES_ENDPOINTS endpoints each"
  from=$(( $(wc -l <"$logf") + 1 ))
  t0=$(now_ms)
  out=$("$PY" "$here/svc_load.py" --socket "$FIBRIL_STATE_ROOT/$LAB_R/api.sock" --namespace bench \
    --first 0 --count "$RES_SERVICES" --port $SVC_PORT --target-port $HTTP_PORT \
    --endpoints "$RES_ENDPOINTS" --endpoint-base "$RES_EP_BASE" --workers "$LOAD_WORKERS" 2>&1) ||
    { note "agent: creating the Services failed: $(head -c 400 <<<"$out")"; return 0; }
  wait_programmed "$LAB_R" "$node" $(( base_fe + RES_SERVICES )) "$base_wb" "$STEP_TIMEOUT" || return 0
  w=$(( $(now_ms) - t0 ))
  read -r _ _ backends _ <<<"$(agent_status "$LAB_R" "$node" | jq -r '[.services.frontends, .services.withoutBackends, .services.backends] | @tsv')" || true
  note "agent: $(jq -r '.services' <<<"$out") Services and $(jq -r '.slices' <<<"$out") EndpointSlices created in $(jq -r '.elapsed_s' <<<"$out") s; the agent held all of them (status: $backends distinct backends) $w ms after the first create"
  sync_lines "$logf" "$from" >"$WORK/syncs.tsv"
  note "agent: while they were created, the agent synced $(wc -l <"$WORK/syncs.tsv") times (added $(awk '{s += $1} END {print s + 0}' "$WORK/syncs.tsv") frontends in all); their datapath times add up to $(awk '{s += $4} END {printf "%.1f", s}' "$WORK/syncs.tsv") ms, the longest $(awk '$4 > m {m = $4} END {printf "%.1f", m}' "$WORK/syncs.tsv") ms"
  record agent node-1 "$RES_SERVICES" create_s "$(jq -r '.elapsed_s' <<<"$out")"
  record agent node-1 "$RES_SERVICES" incremental_syncs "$(wc -l <"$WORK/syncs.tsv")"
  record agent node-1 "$RES_SERVICES" incremental_sync_total_ms "$(awk '{s += $4} END {printf "%.1f", s}' "$WORK/syncs.tsv")"

  # Idle, with the Services in place: RSS, and CPU over a window holding one periodic
  # (30 s) resync pass.
  sleep 5
  pid=$(component_pid "$LAB_R" "fibril-agent/$node")
  cpu0=$(cpu_secs "$pid"); sleep "$RES_IDLE"; cpu1=$(cpu_secs "$pid")
  record agent node-1 "$RES_SERVICES" idle_cpu_pct "$(awk -v a="$cpu0" -v b="$cpu1" -v s="$RES_IDLE" 'BEGIN {printf "%.2f", 100 * (b - a) / s}')"
  record agent node-1 "$RES_SERVICES" idle_rss_kib "$(mem_kib "$pid" VmRSS)"
  record agent node-1 "$RES_SERVICES" idle_hwm_kib "$(mem_kib "$pid" VmHWM)"
  note "agent (PID $pid, the one that saw every Service arrive): idle over ${RES_IDLE} s used $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.2f", b - a}') CPU s; VmRSS $(mem_kib "$pid" VmRSS) KiB, VmHWM $(mem_kib "$pid" VmHWM) KiB"

  # A full resync: a new agent process lists every Service and EndpointSlice, translates,
  # reads the pinned maps back and diffs (nothing to write: the maps are current).
  log "agent: full resync (restart, maps kept)"
  from=$(( $(wc -l <"$logf") + 1 ))
  pid=$(restart_agent "$LAB_R" "$node") || return 0
  if r=$(watch_first_sync "$logf" "$from" "$pid" 300); then
    read -r w cpu1 hwm a u rm ms fe <<<"$r"
    record agent node-1 "$RES_SERVICES" resync_wall_ms "$w"
    record agent node-1 "$RES_SERVICES" resync_cpu_s "$cpu1"
    record agent node-1 "$RES_SERVICES" resync_hwm_kib "$hwm"
    record agent node-1 "$RES_SERVICES" resync_sync_ms "$ms"
    note "agent: full resync by a restarted agent (PID $pid): its first sync ($fe frontends: added $a, updated $u, removed $rm; datapath $(printf %.1f "$ms") ms) came $w ms after the process started, having used $cpu1 CPU s (start-up, datapath load, list, translation, read-back, diff); VmHWM then $hwm KiB"
  else
    note "agent: the restarted agent did not sync in 300 s"
    return 0
  fi
  sleep 5
  cpu0=$(cpu_secs "$pid"); sleep "$RES_IDLE"; cpu1=$(cpu_secs "$pid")
  record agent node-1 "$RES_SERVICES" restarted_idle_cpu_pct "$(awk -v a="$cpu0" -v b="$cpu1" -v s="$RES_IDLE" 'BEGIN {printf "%.2f", 100 * (b - a) / s}')"
  record agent node-1 "$RES_SERVICES" restarted_rss_kib "$(mem_kib "$pid" VmRSS)"
  record agent node-1 "$RES_SERVICES" restarted_hwm_kib "$(mem_kib "$pid" VmHWM)"
  note "agent (PID $pid, restarted): idle over ${RES_IDLE} s used $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.2f", b - a}') CPU s; VmRSS $(mem_kib "$pid" VmRSS) KiB, VmHWM $(mem_kib "$pid" VmHWM) KiB"

  # From empty maps: as after a node reboot (bpffs is empty then), the service maps' pins
  # are removed (the running agent keeps its maps by fd) and the agent restarted: it
  # creates new, empty maps and its first sync programs every Service.
  log "agent: programming from empty maps (pins removed, restart)"
  local pin_dir=/sys/fs/bpf/fibril/$node m
  for m in $SVC_MAPS; do
    [ -e "$pin_dir/$m" ] || { note "agent: no pinned map $pin_dir/$m"; return 0; }
  done
  for m in $SVC_MAPS; do rm -f "$pin_dir/$m"; done
  from=$(( $(wc -l <"$logf") + 1 ))
  pid=$(restart_agent "$LAB_R" "$node") || return 0
  if r=$(watch_first_sync "$logf" "$from" "$pid" 300); then
    read -r w cpu1 hwm a u rm ms fe <<<"$r"
    record agent node-1 "$RES_SERVICES" empty_sync_ms "$ms"
    record agent node-1 "$RES_SERVICES" empty_added "$a"
    record agent node-1 "$RES_SERVICES" empty_wall_ms "$w"
    record agent node-1 "$RES_SERVICES" empty_hwm_kib "$hwm"
    note "agent: from empty maps, the restarted agent's (PID $pid) first sync added $a frontends (updated $u, removed $rm) in $(printf %.1f "$ms") ms of datapath programming; it came $w ms after the process started, having used $cpu1 CPU s; VmHWM $hwm KiB"
  else
    note "agent: the agent did not sync in 300 s after its maps were removed"
    return 0
  fi
  "$FIBRIL" bpf services --name "$LAB_R" --node "$node" -o json >"$WORK/dump.json" 2>/dev/null || true
  note "agent: fibril bpf services then shows $(jq "$(bench_entries) | length" "$WORK/dump.json" 2>/dev/null || echo '?') bench frontends with $(jq "$(bench_entries) | map(.backends | length) | add" "$WORK/dump.json" 2>/dev/null || echo '?') backends"
  rm -f "$WORK/dump.json"
  "$FIBRIL" lab down --name "$LAB_R" >/dev/null 2>&1 || note "lab down $LAB_R failed"
  UP_LABS=()
}

# ---------------------------------------------------------------- the run
started=$(date +%s)
wait_idle "$IDLE_WAIT"

for p in $PHASES; do
  case $p in
    traffic) traffic_phase ;;
    agent) agent_phase ;;
  esac
done
note "after the run, $(cpu_busy)% of the CPUs were busy"
note "the whole run took $(( $(date +%s) - started )) s"

# The median over the rounds of every traffic figure.
python3 - "$RESULTS" <<'EOF'
import collections, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    setup, path, n, metric, value = line.rstrip("\n").split("\t")
    if "#" in metric and value != "-":
        runs[(setup, path, n, metric.split("#")[0])].append(float(value))
with open(sys.argv[1], "a") as out:
    for (setup, path, n, metric), v in sorted(runs.items()):
        v.sort()
        out.write(f"{setup}\t{path}\t{n}\t{metric}\t{v[(len(v) - 1) // 2]:.3f}\n")
EOF

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$repo" diff --quiet HEAD -- crates bpf Cargo.toml Cargo.lock 2>/dev/null; then
  commit="$commit, with uncommitted changes in crates/ or bpf/"
fi
commit="$commit; binaries in $BIN_DIR built $(date -r "$FIBRIL" '+%F %T')"
export B_DATE=$DATE B_COMMIT=$commit B_HOST="$(hostname) ($(nproc) CPUs)" B_SERVICES=$SERVICES \
  B_SECONDS=$SECS B_REPS=$REPS B_CONNECTS=$CONNECTS B_KERNEL=$(uname -r) B_SVC_MODE=$SVC_MODE \
  B_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') x $(nproc)" \
  B_TOOLS="wrk $(dpkg-query -W -f='${Version}' wrk), $(iptables --version), python $("$PY" -c 'import platform; print(platform.python_version())')" \
  B_WRK="-t$WRK_THREADS -c$WRK_CONNS" B_SERVICE_CIDR=$SERVICE_CIDR B_RES_SERVICES=$RES_SERVICES \
  B_RES_ENDPOINTS=$RES_ENDPOINTS B_RES_IDLE=$RES_IDLE B_WORKERS=$LOAD_WORKERS B_PORTS=$PORTS
python3 "$here/services_report.py" meta "$NOTES" >"$WORK/meta.json"
mkdir -p "$(dirname "$OUT")"
python3 "$here/services_report.py" report "$RESULTS" "$WORK/meta.json" >"$OUT"
sort -t$'\t' -k1,1 -k2,2 -k3,3n -k4,4V "$RESULTS" >"${OUT%.md}.tsv"
log "report: $OUT"
cat "$OUT"
