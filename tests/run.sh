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
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "tests/run.sh: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/usr/local/sbin"

cargo build --workspace --all-targets --locked
# The fuzz targets (run with `cargo fuzz run --fuzz-dir tests/fuzz wire`) must keep building.
cargo check --manifest-path tests/fuzz/Cargo.toml --target-dir target/fuzz
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --locked
else
  cargo test --workspace --no-fail-fast --locked
fi
