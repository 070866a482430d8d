#!/usr/bin/env bash
# scripts/fuzz.sh -- builds the libFuzzer targets (Fuzzing/, README "Fuzzing") with
# -sanitize=fuzzer,address and runs each one in turn, one process at a time, then prints per target:
# executions, exec/s, crashes, corpus size and time. Exits 1 if any target crashed (or timed out, or ran
# out of memory); the inputs are kept in SCRATCH/fuzz-crashes/NAME/. Fix the parser, then commit the input
# as Fuzzing/Crashes/NAME/<what-it-was> so the tier-1 replay (Tests/FuzzingUnitTests) keeps covering it.
#
# Usage: scripts/fuzz.sh [--ci | --long | --seconds N] [--budget SECONDS] [--release] [--only NAME[,NAME]]
#                        [--scratch PATH] [--fresh]
#   --ci          (default) the whole stage, build included, within --budget (default 180 s): the build is
#                 timed and what is left is split evenly between the targets, at least 3 s each.
#   --long        30 minutes per target (the long run); add --release for a faster (slower to build) binary.
#   --seconds N   N seconds per target.
#   --only LIST   only these targets (comma-separated names: vici, netlink, windows-structs, keying-file,
#                 identity-map, static-keys, control).
#   --scratch P   the build's scratch path (default .build-fuzz): its own, never the normal .build.
#   --fresh       forget the corpus grown by earlier runs (SCRATCH/fuzz-corpus).
# Each target reads the committed seeds (Fuzzing/Corpus/NAME) and crash inputs (Fuzzing/Crashes/NAME) and
# writes what it finds to SCRATCH/fuzz-corpus/NAME, never into the repository. Results are also appended to
# SCRATCH/fuzz-results.txt. Assumes the dependencies of scripts/install-deps.sh (Swift at /opt/swift).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH

all_targets=(vici netlink windows-structs keying-file identity-map static-keys control)
mode=ci budget=180 seconds="" configuration=debug scratch=.build-fuzz fresh=0 targets=("${all_targets[@]}")
while (($# > 0)); do
  case $1 in
    --ci) mode=ci; shift ;;
    --long) mode=long; seconds=1800; shift ;;
    --seconds) seconds=${2:?--seconds needs a value}; mode=fixed; shift 2 ;;
    --budget) budget=${2:?--budget needs a value}; shift 2 ;;
    --release) configuration=release; shift ;;
    --only) IFS=, read -r -a targets <<<"${2:?--only needs a list}"; shift 2 ;;
    --scratch) scratch=${2:?--scratch needs a path}; shift 2 ;;
    --fresh) fresh=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for target in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $target "* ]] || { echo "fuzz.sh: no target $target" >&2; exit 2; }
done
[[ $seconds =~ ^[0-9]*$ && $budget =~ ^[0-9]+$ ]] || { echo "fuzz.sh: seconds must be whole numbers" >&2; exit 2; }

# libFuzzer reports traps itself (input saved, stack symbolized, "Swift runtime failure: ..." among the frames);
# Swift's own backtracer would run first and trip AddressSanitizer while reading the crashed process.
export SWIFT_BACKTRACE=enable=no
stage_start=$(date +%s)
# -DFUZZING selects libFuzzer's driver as the targets' main (Fuzzing/FuzzTargets/FuzzTarget.swift); lld because
# gold fails on these links ("internal error in format_file_lineno").
flags=(-c "$configuration" --scratch-path "$scratch"
       -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -use-ld=lld)
echo "=== build (${configuration}, -sanitize=fuzzer,address, scratch $scratch) ==="
for target in "${targets[@]}"; do
  swift build "${flags[@]}" --product "fuzz-$target" 2>&1 | grep -Ev '^(\[[0-9]+/[0-9]+\]|Building for)' \
    || { echo "fuzz.sh: build of fuzz-$target failed" >&2; exit 1; }
done
bin=$(swift build "${flags[@]}" --show-bin-path)
build_seconds=$(( $(date +%s) - stage_start ))
echo "build: ${build_seconds} s"

if [[ $mode == ci ]]; then
  # Per target: its share of what the budget leaves, less ~2 s of start-up and corpus loading each.
  left=$(( budget - build_seconds ))
  seconds=$(( left / ${#targets[@]} - 2 ))
  if (( seconds < 3 )); then
    echo "fuzz.sh: the build took ${build_seconds} s of the ${budget} s budget; fuzzing 3 s per target anyway (the long runs are scripts/fuzz.sh --long)" >&2
    seconds=3
  fi
fi
echo "=== fuzzing: ${#targets[@]} target(s), ${seconds} s each ==="

(( fresh )) && rm -rf "$scratch/fuzz-corpus"
results=()
status=0
for target in "${targets[@]}"; do
  corpus=$scratch/fuzz-corpus/$target crashes=$scratch/fuzz-crashes/$target log=$scratch/fuzz-logs/$target.log
  mkdir -p "$corpus" "$crashes" "$(dirname "$log")"
  inputs=("$corpus" "Fuzzing/Corpus/$target")
  [[ -d Fuzzing/Crashes/$target ]] && inputs+=("Fuzzing/Crashes/$target")
  before=$(find "$crashes" -type f | sort)
  t0=$(date +%s)
  set +e
  # One process, no -jobs/-workers. -timeout: an input taking 10 s is a hang, reported like a crash.
  "$bin/fuzz-$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$crashes/" "${inputs[@]}" >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$(( $(date +%s) - t0 ))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corp=$(grep -Eo 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1 | sed 's/corp: //')
  saved=$(comm -13 <(echo "$before") <(find "$crashes" -type f | sort) | sed '/^$/d')
  found=$(echo -n "$saved" | grep -c . || true)
  seeds=$(find "Fuzzing/Corpus/$target" -type f | wc -l)
  line="$target: ${runs:-?} executions in ${elapsed} s, ${rate:-?} exec/s, crashes ${found}, corpus ${corp:-?}"
  line+=" (units/bytes; ${seeds} committed seeds), exit ${rc}"
  if (( rc != 0 || found > 0 )); then
    status=1
    reason=$(grep -m1 -oE 'Swift runtime failure: [^/]*|Fatal error: .*' "$log" \
      || grep -m1 -oE '(ERROR|SUMMARY): .*' "$log" || echo "see $log")
    line+=" -- FAILED: $reason"
    for file in $saved; do line+=$'\n'"    input saved: $file"; done
    echo "--- $target: tail of $log"
    tail -30 "$log"
  fi
  echo "$line"
  results+=("$line")
done

revision=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
verdict=$([[ $status == 0 ]] && echo PASSED || echo FAILED)
echo
echo "=== fuzz summary ($(date -u +%FT%TZ), $revision, $configuration, $seconds s per target) ==="
printf '%s\n' "${results[@]}"
echo "build ${build_seconds} s, whole stage $(( $(date +%s) - stage_start )) s, $verdict"
{
  echo "=== $(date -u +%FT%TZ) $revision $configuration, $seconds s per target, build $build_seconds s: $verdict"
  printf '%s\n' "${results[@]}"
} >>"$scratch/fuzz-results.txt"
exit "$status"
