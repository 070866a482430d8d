# Sourced by the scripts: the toolchain on PATH and the one way they build.
export PATH=/opt/swift/usr/bin:$PATH

# build ARGS...: `swift build ARGS` with its progress lines dropped; on failure the whole log is shown and the
# calling script stops (never a stale binary run after a failed build).
build() {
  local log rc
  log=$(mktemp /tmp/wss-build.XXXXXX)
  if swift build "$@" >"$log" 2>&1; then rc=0; else rc=$?; fi
  if [[ $rc -ne 0 ]]; then
    cat "$log" >&2
    rm -f "$log"
    echo "build failed (exit $rc): swift build $*" >&2
    exit 1
  fi
  grep -Ev '^\[[0-9]+/[0-9]+\]' "$log" || true
  rm -f "$log"
}
