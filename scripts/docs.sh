#!/usr/bin/env bash
# scripts/docs.sh -- builds every DocC catalogue (Sources/*/Docs.docc) with the toolchain's docc, warnings as
# errors, so a broken symbol link or a missing article fails. Symbol graphs come from the debug build's modules
# (swift-symbolgraph-extract: public API, with its documentation comments); the output goes to
# .build/docs/<Module> (open with `docc preview` or any static server).
# Links between modules cannot resolve in a per-module build: write another module's symbol as `Name` (Module).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
build
modules=$(swift build --show-bin-path)/Modules
graphs=.build/symbol-graphs
out=.build/docs
# Every module map a public module's imports reach (C targets and the packages' C shims), and libnl's headers.
includes=()
while IFS= read -r dir; do includes+=(-I "$dir"); done < <(
  find CModules .build/checkouts -name module.modulemap -printf '%h\n' | sort -u)
status=0
for catalogue in Sources/*/Docs.docc; do
  module=$(basename "$(dirname "$catalogue")")
  rm -rf "${graphs:?}/$module" "${out:?}/$module"
  mkdir -p "$graphs/$module" "$out/$module"
  swift-symbolgraph-extract -module-name "$module" -target "$(uname -m)-unknown-linux-gnu" -I "$modules" \
    "${includes[@]}" -Xcc -I/usr/include/libnl3 -minimum-access-level public -output-dir "$graphs/$module"
  if docc convert "$catalogue" --additional-symbol-graph-dir "$graphs/$module" --fallback-display-name "$module" \
      --fallback-bundle-identifier "org.winsock-secure-socket.$module" --output-path "$out/$module" \
      --warnings-as-errors >"$out/$module.log" 2>&1; then
    echo "docs: $module ($(find "$graphs/$module" -name '*.symbols.json' -exec cat {} + | grep -o '"kind":{"identifier"' | wc -l) symbols)"
  else
    status=1
    echo "docs: $module FAILED"
    grep -E -A4 '(warning|error):' "$out/$module.log" | head -60
  fi
done
exit "$status"
