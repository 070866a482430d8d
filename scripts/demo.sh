#!/usr/bin/env bash
# The project's main job, for now: the tier-3 scenario as a demo. Builds `xfrm-demo` and runs it inside the
# user-mode-linux kernel (the host kernel has no ESP): two namespaces, an AES-GCM SA pair installed through
# our XFRM client, a TCP client and server each with a per-socket `required` ESP policy, a capture on the
# veth. It prints each claim and whether it held, and exits non-zero if one did not.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
scripts/install-deps.sh
swift build -c release --product xfrm-demo 2>&1 | grep -Ev '^\[[0-9]+/[0-9]+\]' || true
bin=$(swift build -c release --show-bin-path)/xfrm-demo
[[ -x $bin ]] || { echo "build failed" >&2; exit 1; }
exec scripts/uml/run.sh --timeout 300 -- "$bin" "$@"
