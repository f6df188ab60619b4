#!/usr/bin/env bash
# Every test, privileged ones included (netns, BPF, whole labs): run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Privileged tests are #[ignore = "privileged: …"] so that a non-root `cargo test`
# does not run them; here, as root, they run for real.
cargo test --workspace -- --include-ignored --test-threads=2
