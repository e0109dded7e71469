#!/usr/bin/env bash
# Runs one fuzz target from its seeds, with the SMTP dictionary where it helps:
#   tests/fuzz/run.sh TARGET [libFuzzer flags...]      e.g. -max_total_time=600, -runs=2000
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). New inputs go to
# tests/fuzz/corpus/TARGET (not committed); crashes to tests/fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${1:?target: wire, session, dialog, client or dsn}
shift
mkdir -p "tests/fuzz/corpus/$target"
seeds=()
[ -d "tests/fuzz/seeds/$target" ] && seeds+=("tests/fuzz/seeds/$target")
dict=()
case $target in
  wire | session | dialog) dict=(-dict=tests/fuzz/smtp.dict) ;;
esac
exec cargo +nightly fuzz run --fuzz-dir tests/fuzz "$target" "tests/fuzz/corpus/$target" "${seeds[@]}" -- \
  "${dict[@]}" -print_final_stats=1 "$@"
