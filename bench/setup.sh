#!/usr/bin/env bash
# Install the benchmark tools on Debian 12 (idempotent): run as root.
#   sockperf  TCP_RR ping-pong latency (avg, p99)
#   iperf3    TCP stream throughput
#   wrk       new connections per second (HTTP with Connection: close)
#   jq        reading `fibril lab get -o json`
#   python3   the CNI ADD driver and the report (already on Debian 12)
#   util-linux taskset, to pin client and server to one CPU; iptables, for the bridge + ipMasq
#             baseline (both usually installed already)
# All four are in Debian 12 (bookworm) main: sockperf 3.7, iperf3 3.12, wrk 4.1.0, jq 1.6.
# fibril's own build dependencies (clang, iproute2, containernetworking-plugins, ...) come
# from scripts/setup.sh.
set -euo pipefail

PACKAGES=(sockperf iperf3 wrk jq python3 iproute2 util-linux iptables containernetworking-plugins)

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (apt-get install)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # iperf3's postinst asks whether to start a daemon; the answer is no.
  echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
