#!/usr/bin/env bash
# Installs the system packages xks-bridge needs on Debian/Ubuntu when they are missing:
# SoftHSM2 (the embedded default token), OpenSC's pkcs11-tool, curl, and a C toolchain for crates
# that build C code and for the tests' fault-injection shim. Every tool a test uses is installed
# here: a test whose tool is missing fails and names it.
set -euo pipefail
need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)   # tests verify the unit file
command -v openssl >/dev/null 2>&1 || need+=(openssl)           # tests check that TLS 1.1 is refused
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)        # tests run commands as an unprivileged user
type -P kill >/dev/null 2>&1 || need+=(procps)                    # tests send the daemon signals (kill(1), not the shell builtin)
command -v flock >/dev/null 2>&1 || need+=(util-linux)          # tests hold the daemon's state lock from outside
command -v useradd >/dev/null 2>&1 || need+=(passwd)            # tests create an admin-group member in the group database
command -v getent >/dev/null 2>&1 || need+=(libc-bin)           # tests look the group up
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)             # scripts/package.sh and tests/package.rs unpack the .deb
command -v man >/dev/null 2>&1 || need+=(man-db)                # tests render the packaged man pages (man-db pulls groff-base)
command -v faketime >/dev/null 2>&1 || need+=(faketime)         # tests run a daemon days ahead (rotate_after_days)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)           # scripts/fleet.sh and tests/fleet_lb.rs put HAProxy in front of a fleet
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from https://rustup.rs (stable toolchain) and re-run" >&2
  exit 1
fi
