#!/usr/bin/env bash
# Install what fibril needs on Debian 12 (idempotent), then build it.
# Used by both README commands and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  clang llvm libbpf-dev linux-libc-dev   # the C datapath: clang -target bpf, bpf_helpers.h, kernel headers; libclang for bindgen
  gcc make pkg-config                    # C parts of Rust crates
  iproute2 iputils-ping iptables         # ip netns exec for pod processes; ping in tests; iptables-save for fibril doctor
  nftables                               # nft list ruleset: the services test proves the nodes have no netfilter rules
  containernetworking-plugins            # the reference CNI plugins: the lab's --cni bridge baseline
  curl netcat-openbsd dnsutils jq        # tools the demo and tests run inside pods
  podman runc busybox-static             # the podman CNI-client test (with containernetworking-plugins above)
)

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root: the lab creates network namespaces and loads BPF programs" >&2
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
  apt-get install -y -qq "${missing[@]}"
fi

# The Rust toolchain (>= 1.89, see Cargo.toml) comes from rustup.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: no Rust toolchain found: install one with rustup (stable >= 1.89), then rerun" >&2
  exit 1
fi

# bpffs holds fibril's pinned maps; mount it if this machine has not.
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi
