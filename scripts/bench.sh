#!/usr/bin/env bash
# Benchmarks (not tests); every figure comes with a baseline measured in the same run.
# 1. xfrm-bench: XFRMClient vs `ip -batch`, fresh namespaces. Global policies on the host kernel, ESP SAs under
#    user-mode-linux (the host has no ESP). Prints ratios ours / iproute2. Arguments go to xfrm-bench.
# 2. secure-socket-bench: warm-path (setSecurity + setPeerTargetName vs two raw setsockopt, with 10 and
#    10,000 live endpoints) on the host; query (at 100 and 10,000 SAs, vs getState), first-contact (WSAConnect
#    to the first echoed byte vs strongSwan with a global trap policy) and new-connection (a new connection over
#    an established IKE SA, N = 10 / 100 / 1,000 in a row, vs one CREATE_CHILD_SA + connect; then 1,000 held
#    at once from one process and from 4 processes: time, memory per connection, query at 10 and 1,000 vs two
#    GETSA; 10,000 set-security + close cycles and what is left; 400 held from 1 and from 8 client processes through
#    one keying daemon, with its memory) under user-mode-linux; daemon-path (set-security,
#    a new connection and the query through the keying daemon vs an engine in the bench's own process, same charon
#    and peer). Ratios ours / baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/install-deps.sh
for product in xfrm-bench secure-socket-bench secure-echo wss-keyd; do
  build -c release --product "$product"
done
bin=$(swift build -c release --show-bin-path)/xfrm-bench
ssb=$(swift build -c release --show-bin-path)/secure-socket-bench
"$bin" policies "$@"
scripts/uml/run.sh --timeout 590 -- "$bin" states "$@"
echo
# Every secure-socket-bench section prints its rows and, for the closing table, `summary<TAB>…` lines.
log=$(mktemp /tmp/bench.XXXXXX)
trap 'rm -f "$log"' EXIT
{
  "$ssb" warm-path
  echo
  scripts/uml/run.sh --timeout 590 -- "$ssb" query
  echo
  scripts/uml/run.sh --timeout 590 -- "$ssb" first-contact
  echo
  scripts/uml/run.sh --timeout 1700 --mem 1024M -- "$ssb" new-connection
  echo
  # One keying daemon per namespace: 400 connections held from 1 client process and from 8.
  scripts/uml/run.sh --timeout 900 --mem 1024M -- "$ssb" new-connection --counts 1 --held 400 --processes 1 8 \
    --no-in-process-hold --churn 0
  echo
  scripts/uml/run.sh --timeout 590 -- "$ssb" daemon-path
} 2>&1 | tee "$log" | grep -v $'^summary\t'
echo
echo "=== issue 9's table: ours / baseline, measured in this run ==="
grep $'^summary\t' "$log" | awk -F'\t' '
  BEGIN { printf "%-66s %-34s %-40s %-9s %s\n", "measure", "ours", "baseline", "ratio", "goal" }
  { printf "%-66s %-34s %-40s %-9s %s\n", $2, $3, $4, $5, $6 }'

