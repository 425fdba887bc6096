#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for N seconds each (default 60), growing the corpora in
# fuzz/corpus/<target>/. A crash stops that target, leaves its input in fuzz/artifacts/<target>/
# and makes this script exit 1 after the other targets have run.
#
#   scripts/fuzz.sh [seconds]          e.g. scripts/fuzz.sh 300
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). The targets need nightly-only compiler
# flags (-Z sanitizer, sancov); on a stable toolchain RUSTC_BOOTSTRAP=1 allows them. Set
# FUZZ_SANITIZER=none if the address sanitizer does not link; FUZZ_TARGETS="token routing" to run
# only some (by default every [[bin]] of fuzz/Cargo.toml, so a new target is run without being
# listed here); FUZZ_JOBS to run several processes per target; FUZZ_GROW=0 to leave fuzz/corpus/
# as it is (new inputs go to a scratch directory); FUZZ_DEV=1 for a quick unoptimised build (below).
# CI runs `FUZZ_DEV=1 FUZZ_GROW=0 scripts/fuzz.sh 20`.
#
# After a long run, shrink the corpora again before committing them:
#   (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz cmin -O <target> -- -dict=dict/json.dict)
set -euo pipefail

seconds="${1:-60}"
cd "$(dirname "$0")/../fuzz"

export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"
# Every `name = "..."` inside a [[bin]] table of Cargo.toml (what `cargo fuzz list` prints too,
# without building anything).
all_targets=$(awk '/^\[\[bin\]\]/ { bin = 1; next } /^\[/ { bin = 0 } bin && /^name *=/ { gsub(/.*= *"|".*/, ""); print }' Cargo.toml)
targets="${FUZZ_TARGETS:-$all_targets}"
if [ -z "$targets" ]; then
    echo "no fuzz targets found in fuzz/Cargo.toml" >&2
    exit 2
fi
jobs="${FUZZ_JOBS:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

# FUZZ_DEV=1: an unoptimised build with debug assertions (overflow checks included), much quicker
# to compile than -O (one codegen unit: 27 min against 5 min for all targets from scratch on a busy
# 2-core machine) and 12 to 14 times slower to run; what CI's short runs use.
profile=(-O)
if [ "${FUZZ_DEV:-0}" = 1 ]; then
    profile=(--dev)
fi

cargo fuzz build "${profile[@]}" --sanitizer "$sanitizer"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in $targets; do
    mkdir -p "corpus/$target"
    # libFuzzer writes new inputs into the first corpus directory and only reads the others.
    corpora=("corpus/$target")
    if [ "${FUZZ_GROW:-1}" = 0 ]; then
        corpora=("$scratch/$target" "corpus/$target")
        mkdir -p "$scratch/$target"
    fi
    echo "=== $target: ${seconds}s"
    # -max_total_time bounds the run; a crash, leak or timeout ends it early with a non-zero status.
    args=(-max_total_time="$seconds" -dict=dict/json.dict -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    if ((jobs > 1)); then
        args+=(-jobs="$jobs" -workers="$jobs")
    fi
    if ! cargo fuzz run "${profile[@]}" --sanitizer "$sanitizer" "$target" "${corpora[@]}" -- "${args[@]}"; then
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "fuzzing found problems in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "all fuzz targets ran ${seconds}s without a finding"
