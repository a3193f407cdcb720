#!/usr/bin/env bash
# Installs the Debian packages p11bridge needs to run and to test, when any is missing.
# Called by `make run` and `make test`; safe to call again (does nothing when all are present).
set -euo pipefail

need=()
command -v softhsm2-util >/dev/null 2>&1 && [ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "${1:-}" = "test" ]; then
  /usr/bin/python3 -c 'import kmip' >/dev/null 2>&1 || need+=(python3-pykmip)
  # The TLS-terminating proxy of the KES proxy tests, and the unit file's security review.
  command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  # The how-tos (docs/howto-*.md) run as written in the tests: JSON on the command line.
  command -v jq >/dev/null 2>&1 || need+=(jq)
  # The PostgreSQL keymap's tests run a real server (initdb in a temporary directory).
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
fi
command -v gcc >/dev/null 2>&1 || need+=(gcc)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "p11bridge: installing missing Debian packages: ${need[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
