#!/usr/bin/env bash
# Benchmark (not a test): XFRMClient vs `ip -batch`, same run, fresh namespaces. Global policies on the host
# kernel, ESP SAs under user-mode-linux (the host has no ESP). Prints ratios ours / iproute2.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
scripts/install-deps.sh
swift build -c release --product xfrm-bench 2>&1 | grep -Ev '^\[[0-9]+/[0-9]+\]' || true
bin=$(swift build -c release --show-bin-path)/xfrm-bench
"$bin" policies "$@"
scripts/uml/run.sh --timeout 590 -- "$bin" states "$@"
