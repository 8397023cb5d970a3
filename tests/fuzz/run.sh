#!/usr/bin/env bash
# Builds every fuzz target and runs each in turn for SECONDS (default 20),
# starting from its committed corpus. Prints executions, coverage and the
# outcome per target; exits non-zero if any target crashed, leaked, timed
# out or ran out of memory (the input that did it is in
# tests/fuzz/artifacts/<target>/).
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# Environment:
#   MESHGOV_FUZZ_TOOLCHAIN  a rustup toolchain for the build, e.g. `nightly`.
#                           Default: the active toolchain with
#                           RUSTC_BOOTSTRAP=1, which lets stable accept the
#                           -Z flags cargo-fuzz passes.
#   MESHGOV_FUZZ_SANITIZER  none (default) or address (AddressSanitizer;
#                           slower to build and run).
#   MESHGOV_FUZZ_OUT        where new inputs and logs go (default: a
#                           temporary directory); the committed corpus is
#                           only read.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."

secs="${1:-20}"
shift || true
sanitizer="${MESHGOV_FUZZ_SANITIZER:-none}"
toolchain=()
if [ -n "${MESHGOV_FUZZ_TOOLCHAIN:-}" ]; then
  toolchain=("+$MESHGOV_FUZZ_TOOLCHAIN")
else
  export RUSTC_BOOTSTRAP=1
fi
out="${MESHGOV_FUZZ_OUT:-$(mktemp -d -t meshgov-fuzz.XXXXXX)}"
mkdir -p "$out"

fuzz=(cargo "${toolchain[@]}" fuzz)
# The dev profile (opt-level 1, see Cargo.toml) and 16 codegen units: a much
# shorter build of this large dependency tree, for somewhat slower runs.
common=(--fuzz-dir tests/fuzz --dev --sanitizer "$sanitizer" --codegen-units 16)

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir tests/fuzz)
fi

echo "fuzz: building ${#targets[@]} target(s) (sanitizer: $sanitizer)"
build_start=$(date +%s)
if [ $# -gt 0 ]; then
  for t in "${targets[@]}"; do "${fuzz[@]}" build "${common[@]}" "$t"; done
else
  "${fuzz[@]}" build "${common[@]}"
fi
echo "fuzz: built in $(( $(date +%s) - build_start )) s"
host="$(rustc "${toolchain[@]}" -vV | sed -n 's/^host: //p')"
bin_dir="${CARGO_TARGET_DIR:-tests/fuzz/target}/$host/debug"

failed=0
passed=0
printf '%-16s %10s %8s %8s %8s  %s\n' target runs seconds cov ft result
for t in "${targets[@]}"; do
  mkdir -p "$out/corpus/$t" "tests/fuzz/corpus/$t"
  log="$out/$t.log"
  status=ok
  # New inputs go to the first directory (scratch); the committed corpus is
  # read as seeds. -timeout: one input taking 10 s is a hang.
  # The binary is run directly: `cargo fuzz run` rebuilds in another
  # configuration after a crash just to print the input.
  mkdir -p "tests/fuzz/artifacts/$t"
  if ! "$bin_dir/$t" -artifact_prefix="tests/fuzz/artifacts/$t/" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      "$out/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    status="FAILED (log: $log)"
  fi
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  took=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-16s %10s %8s %8s %8s  %s\n' "$t" "${runs:--}" "${took:--}" "${cov:--}" "${ft:--}" "$status"
  if [ "$status" = ok ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/    /'
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
