#!/usr/bin/env bash
# Debian's chromium (driven by Playwright in the browser tests), CJK fonts, iproute2 (the LAN tests
# put a second host in a network namespace), postgresql and MariaDB's server and client programs (the
# storage tests on PostgreSQL and MariaDB: throwaway servers of their own,
# tests/fixtures/database_servers.py), installed when missing.
set -euo pipefail
packages=(chromium fonts-noto-cjk iproute2 postgresql mariadb-server-core mariadb-client-core)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "The tests need Debian's ${missing[*]}; install them with your package manager." >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "Installing ${missing[*]} for the tests..."
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
