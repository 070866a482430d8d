#!/usr/bin/env bash
# Runs every test tier, as root, on a fresh Debian 12 machine: installs dependencies, builds once,
# then runs tier 1 (unit), tier 2 (host kernel, own namespaces) and tier 3 (real ESP under
# user-mode-linux) from the built products. Set CI=true to make unreachable tiers fail, not skip.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/install-deps.sh

# C lives in CModules/ only.
stray=$(git ls-files '*.c' '*.h' '*.cc' '*.cpp' '*.m' | grep -v '^CModules/' || true)
if [[ -n $stray ]]; then echo "C sources outside CModules/: $stray" >&2; exit 1; fi

netns_before=$(ip netns list 2>/dev/null | sort || true)
xfrm_before=$( (ip xfrm state; ip xfrm policy) 2>/dev/null | md5sum)

start=$(date +%s)
build --build-tests
# The C ABI library the C sample programs link against (tier 3 compiles them with gcc).
build --product WinsockSecureSocket
echo "build: $(( $(date +%s) - start )) s"

summary=()
run_tier() {
  local name=$1 filter=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "=== $name ==="
  set +e
  local log
  log=$(mktemp /tmp/wss-tier.XXXXXX)
  swift test --skip-build --filter "$filter" "$@" 2>&1 | tee "$log" | grep -Ev '^Test Case .* started'
  rc=${PIPESTATUS[0]}
  set -e
  local executed
  executed=$(grep -E "Executed [0-9]+ tests?" "$log" | tail -1 | sed 's/^[[:space:]]*//')
  # In parallel mode each test runs in its own process: count them instead.
  [[ -n $executed ]] || executed="$(grep -cE '^\[[0-9]+/[0-9]+\] Testing ' "$log") tests run in parallel"
  summary+=("$name: exit $rc, $(( $(date +%s) - t0 )) s, $executed")
  rm -f "$log"
  return "$rc"
}

status=0
# Style and documentation: swift-format's strict lint (.swift-format) and every DocC catalogue, warnings as errors.
for check in lint docs; do
  t0=$(date +%s)
  echo "=== $check (scripts/$check.sh) ==="
  if scripts/$check.sh; then
    summary+=("$check: passed, $(( $(date +%s) - t0 )) s")
  else
    summary+=("$check: FAILED, $(( $(date +%s) - t0 )) s")
    status=1
  fi
done
# Test targets are named by tier: *UnitTests (1), *KernelTests (2), *ESPTests (3).
run_tier "tier 1 (unit)" 'UnitTests\.' || status=1
run_tier "tier 2 (host kernel)" 'KernelTests\.' || status=1
# Tier 3: each test boots a user-mode-linux kernel of its own, so two run at once (one per core).
run_tier "tier 3 (ESP under user-mode-linux)" 'ESPTests\.' --parallel --num-workers 2 || status=1

# Fuzzing: every parser of untrusted bytes under libFuzzer with AddressSanitizer, a bounded stage (its own build
# with -sanitize=fuzzer,address, then the fuzzing time split between the targets); any crash fails CI.
fuzz_start=$(date +%s)
echo "=== fuzzing (scripts/fuzz.sh --ci) ==="
if scripts/fuzz.sh --ci; then
  summary+=("fuzzing: no crash, $(( $(date +%s) - fuzz_start )) s")
else
  summary+=("fuzzing: FAILED, $(( $(date +%s) - fuzz_start )) s")
  status=1
fi

# The demo's own claims (README's main command), from the debug build: fails if one does not hold.
demo_start=$(date +%s)
echo "=== demo (wss-demo under user-mode-linux) ==="
if scripts/uml/run.sh --timeout 300 -- "$(swift build --show-bin-path)/wss-demo" --binaries "$(swift build --show-bin-path)"; then
  summary+=("demo: every claim held, $(( $(date +%s) - demo_start )) s")
else
  summary+=("demo: FAILED, $(( $(date +%s) - demo_start )) s")
  status=1
fi

# Nothing may be left on the host.
netns_after=$(ip netns list 2>/dev/null | sort || true)
if [[ "$netns_before" != "$netns_after" ]]; then
  echo "network namespaces left behind: $(comm -13 <(echo "$netns_before") <(echo "$netns_after"))" >&2
  status=1
fi
if [[ "$xfrm_before" != "$( (ip xfrm state; ip xfrm policy) 2>/dev/null | md5sum)" ]]; then
  echo "the host namespace's XFRM states or policies changed during the tests" >&2
  status=1
fi

echo
echo "=== summary ==="
printf '%s\n' "${summary[@]}"
echo "total: $(( $(date +%s) - start )) s, $([[ $status == 0 ]] && echo PASSED || echo FAILED)"
exit "$status"
