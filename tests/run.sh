#!/usr/bin/env bash
# The test command (README): installs any missing test peer, then builds everything
# (benches included, so that they keep compiling) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v swaks >/dev/null || need+=(swaks)
# swaks speaks TLS through these Perl modules (only recommended by its package).
perl -MNet::SSLeay -MIO::Socket::SSL -e 1 2>/dev/null || need+=(libnet-ssleay-perl libio-socket-ssl-perl)
command -v python3 >/dev/null || need+=(python3)
# A real LMTP server for tests/lmtp_dovecot.rs.
[ -x /usr/sbin/dovecot ] && [ -x /usr/lib/dovecot/lmtp ] || need+=(dovecot-core dovecot-lmtpd)
# promtool validates the metrics endpoint's output (tests/metrics.rs).
command -v promtool >/dev/null || need+=(prometheus)
# Headless Chromium loads the status page (tests/status_page.rs).
command -v chromium >/dev/null || need+=(chromium)
# A real policy server over Postfix's policy delegation protocol (tests/policy_delegation.rs).
[ -x /usr/sbin/postgrey ] || need+=(postgrey)
# OpenDKIM signs as a milter (tests/milter.rs).
[ -x /usr/sbin/opendkim ] || need+=(opendkim)
command -v opendkim-genkey >/dev/null || need+=(opendkim-tools)
# dkimpy's ARC verifier checks the lists' ARC seals (tests/lists.rs), with Debian's Python.
/usr/bin/python3 -c "import dkim" 2>/dev/null || need+=(python3-dkim)
# rspamd's proxy worker as a milter (tests/milter.rs).
command -v rspamd >/dev/null || need+=(rspamd)
# systemd-analyze verifies the shipped unit (tests/smtp_tcp.rs).
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "tests/run.sh: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/usr/local/sbin"

cargo build --workspace --all-targets --locked
# The fuzz targets must keep building; with a nightly toolchain each also gets a short smoke
# run from its seeds (tests/fuzz/run.sh; docs/fuzzing.md has the long runs).
cargo check --manifest-path tests/fuzz/Cargo.toml --target-dir target/fuzz
if rustup run nightly rustc --version >/dev/null 2>&1; then
  if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "tests/run.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
  fi
  for t in wire session dialog client dsn; do
    echo "tests/run.sh: fuzz smoke run: $t"
    log=$(mktemp)
    if ! bash tests/fuzz/run.sh "$t" -runs=3000 -max_total_time=120 >"$log" 2>&1; then
      tail -60 "$log" >&2
      echo "tests/run.sh: fuzz target $t failed" >&2
      exit 1
    fi
    grep -E "^Done " "$log" || true
    rm -f "$log"
  done
else
  echo "tests/run.sh: no nightly toolchain: fuzz smoke runs skipped"
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --locked
else
  cargo test --workspace --no-fail-fast --locked
fi
# The Debian package, built from the binary under test, installed, run and purged.
bash tests/package.sh
