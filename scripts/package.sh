#!/usr/bin/env bash
# Builds the Debian package (and an RPM when `cargo generate-rpm` is installed) from one
# release build:
#   1. cargo build --release --locked;
#   2. the freshly built binary writes its man pages and shell completions
#      (`xks-bridge generate-docs`), so they always match the CLI;
#   3. the unit is copied with ExecStart/ExecReload pointing at /usr/bin instead of
#      /usr/local/bin (systemd/xks-bridge.service stays the single source);
#   4. cargo deb --no-build --dbgsym: the binary stripped, its debug symbols in a separate
#      xks-bridge-dbgsym .ddeb next to it (files and maintainer scripts:
#      [package.metadata.deb] in Cargo.toml, packaging/debian/).
# Prints the package's path on the last line of stdout. Installs cargo-deb when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# The asset paths in Cargo.toml name target/: build there whatever the environment says.
unset CARGO_TARGET_DIR
target=target
files="$target/package-files"

if ! cargo deb --version >/dev/null 2>&1; then
  echo "cargo-deb not found: installing it" >&2
  cargo install cargo-deb --locked >&2
fi

cargo build --release --locked >&2
bin="$target/release/xks-bridge"

rm -rf "$files"
mkdir -p "$files"
"$bin" generate-docs --out "$files"
sed -e 's#/usr/local/bin/xks-bridge #/usr/bin/xks-bridge #' \
    -e 's#^\# Install as /etc/systemd/system/xks-bridge.service together with#\# Installed by the xks-bridge package, together with#' \
    systemd/xks-bridge.service > "$files/xks-bridge.service"
if grep -q /usr/local/ "$files/xks-bridge.service"; then
  echo "package.sh: the packaged unit still names /usr/local/: update the sed above" >&2
  exit 1
fi
grep -qx 'ExecStart=/usr/bin/xks-bridge serve --config /etc/xks-bridge/config.toml' "$files/xks-bridge.service"

deb_dir="$target/debian"
rm -f "$deb_dir"/xks-bridge_*.deb "$deb_dir"/xks-bridge-dbgsym_*.ddeb
cargo deb --no-build --locked --dbgsym --output "$deb_dir" >&2
deb=$(ls "$deb_dir"/xks-bridge_*.deb)
echo "package contents:" >&2
dpkg-deb -c "$deb" >&2

if cargo generate-rpm --version >/dev/null 2>&1; then
  # cargo deb strips the binary itself; the RPM takes a stripped copy (the release profile
  # keeps debug info: 80 MiB unstripped, 11 MiB stripped).
  strip --strip-debug -o "$files/xks-bridge" "$bin"
  rm -f "$target"/generate-rpm/xks-bridge-*.rpm
  cargo generate-rpm >&2
  echo "rpm: $(ls "$target"/generate-rpm/xks-bridge-*.rpm)" >&2
else
  echo "cargo generate-rpm not installed: no RPM (cargo install cargo-generate-rpm --locked)" >&2
fi
echo "$deb"
