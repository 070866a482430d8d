#!/usr/bin/env bash
# Fuzzing/SeedTools/capture.sh -- re-captures the real-world seeds of the `netlink` and `vici` fuzz targets:
# the kernel's own NETLINK_XFRM datagrams (netlink.py) and real charons' VICI packets (vici.py), both under
# user-mode-linux (scripts/uml/run.sh), whose kernel has ESP. Writes into Fuzzing/Corpus/netlink and
# Fuzzing/Corpus/vici, replacing the captured seeds there (hand-written ones, named hand-*, are kept).
# As root, after scripts/install-deps.sh. Not part of any test: seeds change (SPIs, keys, times) on every run.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/wss-capture.XXXXXX)
trap 'rm -rf "$work"' EXIT
scripts/uml/run.sh --timeout 300 -- unshare --net python3 Fuzzing/SeedTools/netlink.py "$work/netlink"
scripts/uml/run.sh --timeout 300 -- python3 Fuzzing/SeedTools/vici.py "$work/vici"
for target in netlink vici; do
  find "Fuzzing/Corpus/$target" -type f ! -name 'hand-*' -delete 2>/dev/null || true
  mkdir -p "Fuzzing/Corpus/$target"
  cp "$work/$target"/* "Fuzzing/Corpus/$target/"
  echo "Fuzzing/Corpus/$target: $(ls "Fuzzing/Corpus/$target" | wc -l) seeds"
done
