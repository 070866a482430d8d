#!/usr/bin/env bash
# The project's main job: per-socket IPsec with the Winsock secure-socket functions, end to end. Builds
# secure-echo, wss-inspect and wss-demo, and runs wss-demo inside the user-mode-linux kernel (the host kernel has
# no ESP): two namespaces, a private charon in each, certificates made for the run, secure-echo at both ends
# (peer name required, a second authentication round, query, impersonation, revert), a wrong-name client refused,
# wss-inspect during the connection, a capture on the wire. It prints each claim and whether it held, and exits
# non-zero if one did not.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/install-deps.sh
for product in secure-echo wss-inspect wss-demo; do
  build -c release --product "$product"
done
bin=$(swift build -c release --show-bin-path)
exec scripts/uml/run.sh --timeout 300 -- "$bin/wss-demo" --binaries "$bin" "$@"
