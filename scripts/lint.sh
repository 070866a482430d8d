#!/usr/bin/env bash
# scripts/lint.sh -- the toolchain's swift-format in strict lint mode over every Swift file, with the committed
# .swift-format (4-space indentation, 120 columns). Fails on any finding. `scripts/lint.sh --fix` rewrites the
# files in place first (then lints what is left, which the formatter cannot fix by itself).
# Two default rules are off in .swift-format: AlwaysUseLowerCamelCase (the Windows functions keep their Windows
# names, WSASetSocketSecurity and the rest, and C constants keep the kernel's) and OnlyOneTrailingClosureArgument
# (XCTAssertThrowsError(try ...) { error in ... } is XCTest's own idiom).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
paths=(Package.swift Sources Tests Fuzzing)
if [[ ${1:-} == --fix ]]; then
  swift format format --in-place --recursive "${paths[@]}"
fi
swift format lint --strict --recursive "${paths[@]}"
echo "lint: no finding ($(find "${paths[@]}" -name '*.swift' | wc -l) files)"
