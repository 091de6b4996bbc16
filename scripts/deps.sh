#!/usr/bin/env bash
# Installs the Debian packages Shoal needs, only when some are missing.
# As root it runs apt-get itself; otherwise it uses sudo when that works without a
# password prompt, and else prints the exact command and fails.
set -eu
PKGS="build-essential erlang-nox erlang-dev erlang-src erlang-eunit erlang-common-test
erlang-dialyzer erlang-proper erlang-tools erlang-poolboy elixir rebar3 libuv1-dev libcunit1-dev valgrind clang
libclang-rt-14-dev git pkg-config chromium gnuplot-nox spin"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "shoal: installing missing Debian packages:$missing"
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else
  echo "shoal: cannot install packages (not root, no password-less sudo). Run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
