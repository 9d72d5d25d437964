#!/usr/bin/env bash
# Builds the fault-injecting PKCS#11 shim: hsm-fixtures/faultshim/build.sh [OUT_DIR]
# (default: target/faultshim). Prints the path of the built library. Needs a C compiler.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/faultshim}
mkdir -p "$out"
${CC:-cc} -shared -fPIC -O2 -Wall -Wextra -fvisibility=hidden -o "$out/libfaultshim.so" "$here/faultshim.c" -ldl -lpthread
echo "$out/libfaultshim.so"
