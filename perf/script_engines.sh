#!/usr/bin/env bash
# Decision 006: the script engines considered for [scripts], measured on a hook's work
# (build the context, call, read the verdict). Builds perf/script_engines (not a workspace
# member: it links two interpreters the server does not need) into the shared target/.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_TARGET_DIR="$PWD/target" cargo build --release --quiet --manifest-path perf/script_engines/Cargo.toml
exec target/release/script-engines "${1:-3}"
