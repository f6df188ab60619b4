#!/usr/bin/env bash
# NetworkPolicy benchmark (issue 5, acceptance 3): is the per-packet cost flat from 1 to
# 1,000 policies selecting the same pod? One run, one lab (fibril, 2 nodes), three server
# pods on node 1, each in a namespace of its own:
#   - open: no policy selects it (the reference: not isolated, no policy lookup at all);
#   - one:  1 policy selects it (admits the clients on the benchmark ports);
#   - many: 1,000 policies select it (the same admitting policy, plus 999 others with
#           ipBlocks, except lists, namespace selectors and port ranges: ~1,000 ipcache
#           prefixes and a few thousand entries in its policy map).
# Clients on node 1 (same-node) and node 2 (cross-node) measure, interleaved round-robin
# over the three servers in every round:
#   - TCP_RR: sockperf ping-pong --tcp (one connection: after its first packet, every
#     packet of it takes the policy conntrack path);
#   - new connections/s: wrk with Connection: close against fibril/echo (every connection's
#     first packet takes the full policy lookup: ipcache LPM, then the policy map);
# and reports many/one (goal: TCP_RR <= 1.05x) and one/open. It also times the agent's
# compile and the map programming for the 1,000 policies (from `fibril status`), and the
# wall time from `lab apply` of the 1,000 policies until node 1's agent holds them.
# Writes bench/results/<date>-netpol.md (+ .tsv). See bench/README.md.
#
# Run as root, after bench/setup.sh and `cargo build --release --bins`.
#
# Environment:
#   FIBRIL_BIN_DIR   where fibril and fibril-cni are (default: <repo>/target/release)
#   BENCH_POLICIES   policies selecting the "many" server (default 1000)
#   BENCH_REPS       rounds (default 5); the report has the median of each figure
#   BENCH_SECONDS    length of one run (default 3)
#   BENCH_CPU        the CPU client and server share for TCP_RR (default: the last)
#   BENCH_WRK_THREADS, BENCH_WRK_CONNS  wrk's load (default 2, 32)
#   BENCH_IDLE_WAIT  seconds to wait at the start for other load to go (default 60)
#   BENCH_OUT        the report (default bench/results/<date>-netpol.md)
#
# Safety: the lab is named fibb<run>p and lives in namespaces with that prefix, its state
# in a private temp dir; the root network namespace is never changed and traffic only
# flows between the lab's pods. On exit (also on failure or Ctrl-C) a trap takes the lab
# down and removes the temp dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
BIN_DIR=${FIBRIL_BIN_DIR:-$repo/target/release}
FIBRIL=$BIN_DIR/fibril
POLICIES=${BENCH_POLICIES:-1000}
REPS=${BENCH_REPS:-5}
SECS=${BENCH_SECONDS:-3}
CPU=${BENCH_CPU:-$(( $(nproc) - 1 ))}
WRK_THREADS=${BENCH_WRK_THREADS:-2} WRK_CONNS=${BENCH_WRK_CONNS:-32}
IDLE_WAIT=${BENCH_IDLE_WAIT:-60}
DATE=$(date +%F)
OUT=${BENCH_OUT:-$here/results/$DATE-netpol.md}
RR_PORT=11111 HTTP_PORT=8080
SERVERS="open one many"


[ "$(id -u)" -eq 0 ] || die "run as root: the bench builds a lab (network namespaces, BPF)"
[ -x "$FIBRIL" ] || die "no fibril binary at $FIBRIL: build with cargo build --release --bins, or set FIBRIL_BIN_DIR"
[ -x "$BIN_DIR/fibril-cni" ] || die "no fibril-cni next to fibril in $BIN_DIR"
for t in sockperf wrk jq python3 taskset; do
  command -v "$t" >/dev/null || die "$t is missing: run bench/setup.sh"
done
[[ $POLICIES =~ ^[0-9]+$ ]] && [ "$POLICIES" -ge 1 ] && [ "$POLICIES" -le 60000 ] ||
  die "BENCH_POLICIES must be a whole number from 1 to 60000, not $POLICIES"

run=$(printf '%05x' $(( ((RANDOM << 15) | RANDOM) & 0xfffff )))
LAB=fibb${run}p
WORK=$(mktemp -d "/tmp/fibb$run.XXXXXX")
export FIBRIL_STATE_ROOT=$WORK/labs
mkdir -p "$FIBRIL_STATE_ROOT"
RESULTS=$WORK/results.tsv NOTES=$WORK/notes.txt
: >"$RESULTS"; : >"$NOTES"
LAB_UP=

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$LAB_UP" ]; then
    log "lab down $LAB"
    "$FIBRIL" lab down --name "$LAB" >/dev/null 2>&1 || echo "warning: lab down $LAB failed" >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:--}" >>"$RESULTS"; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

export FIBRIL_LAB=$LAB   # every fibril command below talks to the bench's lab
fib() { "$FIBRIL" "$@"; }
N1=$LAB-node-1 N2=$LAB-node-2
declare -A IP=()

# ---------------------------------------------------------------- manifests
manifest_pods() {
  cat <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: clients, labels: {bench: clients}}
EOF
  for s in $SERVERS; do
    cat <<EOF
---
apiVersion: v1
kind: Namespace
metadata: {name: srv-$s}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: srv-$s, labels: {app: server}}
spec:
  nodeSelector: {kubernetes.io/hostname: $N1}
  containers:
    - name: sockperf
      image: debian
      command: ["taskset", "-c", "$CPU", "sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", "$RR_PORT"]
    - name: http
      image: fibril/echo
      ports:
        - {name: http, containerPort: $HTTP_PORT, protocol: TCP}
EOF
  done
  for path in same cross; do
    local node=$N1
    [ $path = cross ] && node=$N2
    cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: client-$path, namespace: clients, labels: {role: client}}
spec:
  nodeSelector: {kubernetes.io/hostname: $node}
  containers:
    - {name: client, image: debian, command: ["sleep", "infinity"]}
EOF
  done
}

# The policy that admits the clients on the benchmark ports (namespace NS).
allow_clients() {
  cat <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-clients, namespace: $1}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {bench: clients}}
          podSelector: {matchLabels: {role: client}}
      ports:
        - {protocol: TCP, port: $RR_PORT}
        - {protocol: TCP, port: $HTTP_PORT}
EOF
}

# Policy I (1..N-1) of the "many" server: every one selects it and admits something else,
# in one of four shapes, so that the compile and the maps see the variety real clusters
# have (ipBlock /32s and /24s with except lists, namespace selectors, port ranges).
other_policy() {
  local i=$1 a=$(( $1 / 250 )) b=$(( $1 % 250 + 1 )) port=$(( 20000 + $1 ))
  printf -- '---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p%05d, namespace: srv-many}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n' "$i"
  case $(( i % 4 )) in
    0) printf '    - from: [{ipBlock: {cidr: 100.64.%d.%d/32}}]\n      ports: [{protocol: TCP, port: %d}]\n' "$a" "$b" "$port" ;;
    1) printf '    - from: [{ipBlock: {cidr: 100.%d.%d.0/24, except: [100.%d.%d.128/25]}}]\n      ports: [{protocol: UDP, port: %d}]\n' $(( 65 + a )) "$b" $(( 65 + a )) "$b" "$port" ;;
    2) printf '    - from: [{namespaceSelector: {matchLabels: {team: t%d}}}]\n      ports: [{protocol: TCP, port: %d}]\n' "$i" "$port" ;;
    3) printf '    - from: [{ipBlock: {cidr: 100.70.%d.%d/32}}, {namespaceSelector: {matchLabels: {bench: clients}}, podSelector: {matchLabels: {role: other}}}]\n      ports: [{protocol: TCP, port: %d, endPort: %d}]\n' "$a" "$b" "$port" $(( port + 7 )) ;;
  esac
}

# ---------------------------------------------------------------- figures
# client PATH CMD...: runs CMD in client-PATH.
client() { local p=$1; shift; fib lab exec -n clients "client-$p" -- "$@"; }

rr() { # SERVER PATH RUN
  local s=$1 p=$2 r=$3 out v
  out=$(client "$p" timeout $((SECS + 20)) taskset -c "$CPU" sockperf ping-pong --tcp -i "${IP[$s]}" \
          -p $RR_PORT -t "$SECS" --full-rtt 2>&1 | sed 's/\x1b\[[0-9;]*m//g') || true
  v=$(grep -o 'avg-rtt=[0-9.]*' <<<"$out" | cut -d= -f2 || true)
  [ -n "$v" ] || note "$s/$p run $r: sockperf failed: $(tail -3 <<<"$out" | tr '\n' ' ')"
  record "$s" "$p" "rr_avg_us#$r" "$v"
  record "$s" "$p" "rr_p50_us#$r" "$(awk '/percentile 50.000/ {print $NF}' <<<"$out")"
  record "$s" "$p" "rr_p99_us#$r" "$(awk '/percentile 99.000/ {print $NF}' <<<"$out")"
}

conns() { # SERVER PATH RUN
  local s=$1 p=$2 r=$3 out v
  out=$(client "$p" timeout $((SECS + 20)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${SECS}s" \
          -H 'Connection: close' "http://${IP[$s]}:$HTTP_PORT/" 2>&1) || true
  v=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  [ -n "$v" ] || note "$s/$p run $r: wrk failed: $(tail -3 <<<"$out" | tr '\n' ' ')"
  if grep -q 'Socket errors\|Non-2xx' <<<"$out"; then
    note "$s/$p run $r: wrk reported $(grep 'Socket errors\|Non-2xx' <<<"$out" | tr -s ' ' | tr '\n' ';')"
  fi
  record "$s" "$p" "conn_per_s#$r" "$v"
}

policy_status() { fib status --node "$N1" -o json | jq -c '.policy'; }

# ---------------------------------------------------------------- the run
started=$(date +%s)
wait_idle "$IDLE_WAIT"

log "fibril lab up --name $LAB --nodes 2 --cni fibril --routing native"
LAB_UP=1
"$FIBRIL" lab up --name "$LAB" --nodes 2 --cni fibril --routing native >"$WORK/up.log" 2>&1 ||
  die "lab up failed: $(tail -5 "$WORK/up.log")"
manifest_pods >"$WORK/pods.yaml"
fib lab apply -f "$WORK/pods.yaml" >/dev/null
ok=
for _ in $(seq 1 300); do
  n=$(fib lab get pods -A -o json 2>/dev/null | jq '[.items[] | select(any(.status.conditions[]?; .type=="Ready" and .status=="True")) | select(.metadata.namespace == "clients" or (.metadata.namespace | startswith("srv-")))] | length' 2>/dev/null) || true
  if [ "$n" = 5 ]; then ok=1; break; fi
  sleep 0.3
done
[ -n "$ok" ] || die "the bench pods did not become Ready"
for s in $SERVERS; do
  IP[$s]=$(fib lab get pods -n "srv-$s" -o json | jq -r '.items[] | select(.metadata.name=="server") | .status.podIP')
done
note "servers: open ${IP[open]}, one ${IP[one]}, many ${IP[many]} (node 1); clients on node 1 (same) and node 2 (cross)"

# The policies: one for "one"; the same one plus POLICIES-1 others for "many", applied in
# one go and timed until node 1's agent reports them all.
allow_clients srv-one >"$WORK/one.yaml"
fib lab apply -f "$WORK/one.yaml" >/dev/null
{
  allow_clients srv-many
  for i in $(seq 1 $((POLICIES - 1))); do other_policy "$i"; done
} >"$WORK/many.yaml"
want=$((POLICIES + 1))
t0=$(date +%s%N)
fib lab apply -f "$WORK/many.yaml" >/dev/null
apply_ms=$(ms_since "$t0")
st=
for _ in $(seq 1 600); do
  st=$(policy_status 2>/dev/null) || true
  if [ "$(jq -r '.policies' <<<"$st" 2>/dev/null)" = "$want" ] &&
     [ "$(jq -r '.revisions | length' <<<"$st")" = 2 ]; then
    break
  fi
  sleep 0.2
done
[ "$(jq -r '.policies' <<<"$st")" = "$want" ] || die "node 1's agent never reported $want policies: $st"
seen_ms=$(ms_since "$t0")
# The agent compiles on every batch of changes while they arrive: wait for the last one.
sleep 3
st=$(policy_status)
note "lab apply of the $POLICIES policies of srv-many took $apply_ms ms (API writes); node 1's agent reported all $want policies (and both servers isolated) $seen_ms ms after the apply started"
note "node 1's agent: $(jq -r '"\(.policies) policies, \(.identities) identities, \(.isolatedEndpoints)/\(.localEndpoints) local endpoints isolated; revisions \(.revisions|tostring); last compile \(.lastCompileMs) ms, last map sync \(.lastSyncMs) ms; problems \(.problems|length), warnings \(.warnings|length), sync error: \(.syncError // "none")"' <<<"$st")"
record many node compile_ms "$(jq -r '.lastCompileMs' <<<"$st")"
record many node sync_ms "$(jq -r '.lastSyncMs' <<<"$st")"
record many node apply_ms "$apply_ms"
record many node agent_has_all_ms "$seen_ms"
[ "$(jq -r '.syncError // empty' <<<"$st")" = "" ] || die "node 1's agent does not enforce: $(jq -r .syncError <<<"$st")"
# The rewrite of every map after a change touching the "many" server: one more policy.
t0=$(date +%s%N)
other_policy $POLICIES | sed 1d >"$WORK/extra.yaml"
fib lab apply -f "$WORK/extra.yaml" >/dev/null
for _ in $(seq 1 300); do
  st=$(policy_status 2>/dev/null) || true
  [ "$(jq -r '.policies' <<<"$st" 2>/dev/null)" = $((want + 1)) ] && break
  sleep 0.1
done
note "one more policy on top of the $want: node 1's agent had it $(ms_since "$t0") ms after lab apply started (compile $(jq -r '.lastCompileMs' <<<"$st") ms, map sync $(jq -r '.lastSyncMs' <<<"$st") ms)"
record many node recompile_ms "$(jq -r '.lastCompileMs' <<<"$st")"
record many node resync_ms "$(jq -r '.lastSyncMs' <<<"$st")"

# Enforcement is on: the servers admit the clients, and refuse anyone else.
for s in $SERVERS; do
  for p in same cross; do
    client "$p" curl -s --max-time 3 -o /dev/null "http://${IP[$s]}:$HTTP_PORT/" ||
      die "client-$p cannot reach server $s at ${IP[$s]}:$HTTP_PORT"
  done
done
for s in one many; do
  if fib lab exec -n srv-open server -- curl -s --max-time 2 -o /dev/null "http://${IP[$s]}:$HTTP_PORT/"; then
    die "srv-open/server reached server $s: its policies are not enforced"
  fi
done
note "checked: both clients reach every server; srv-open/server (not admitted) is dropped by the one and many servers"
note "with everything up and idle, $(cpu_busy)% of the CPUs were busy"

for r in $(seq 1 "$REPS"); do
  log "round $r/$REPS: TCP_RR (client and server on CPU $CPU, ${SECS}s each), then conn/s"
  for p in same cross; do
    for s in $SERVERS; do rr "$s" "$p" "$r"; done
  done
  for p in same cross; do
    for s in $SERVERS; do conns "$s" "$p" "$r"; done
  done
  # The order of the servers rotates, so that none always runs first or last.
  SERVERS="$(cut -d' ' -f2- <<<"$SERVERS") $(cut -d' ' -f1 <<<"$SERVERS")"
  note "after round $r, with the bench idle, $(cpu_busy)% of the CPUs were busy"
done
st=$(fib status --node "$N1" -o json)
note "policy drops seen by node 1's agent: $(jq '[.policy.recentDrops[]? | select(.reason=="policy_denied")] | length' <<<"$st") (of the last $(jq '.policy.recentDrops | length' <<<"$st") drops kept)"
note "the whole run took $(( $(date +%s) - started )) s"

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$repo" diff --quiet HEAD -- crates bpf Cargo.toml Cargo.lock 2>/dev/null; then
  commit="$commit, with uncommitted changes in crates/ or bpf/"
fi
mkdir -p "$(dirname "$OUT")"
B_DATE=$DATE B_COMMIT="$commit; binaries in $BIN_DIR built $(date -r "$FIBRIL" '+%F %T')" \
  B_HOST="$(hostname) ($(nproc) CPUs)" B_KERNEL=$(uname -r) B_POLICIES=$POLICIES \
  B_REPS=$REPS B_SECONDS=$SECS B_CPU=$CPU B_WRK="-t$WRK_THREADS -c$WRK_CONNS" \
  B_TOOLS="sockperf $(dpkg-query -W -f='${Version}' sockperf), wrk $(dpkg-query -W -f='${Version}' wrk)" \
  python3 "$here/netpol_report.py" "$RESULTS" "$NOTES" >"$OUT"
sort -t$'\t' -k1,1 -k2,2 -k3,3V "$RESULTS" >"${OUT%.md}.tsv"
log "report: $OUT"
cat "$OUT"
