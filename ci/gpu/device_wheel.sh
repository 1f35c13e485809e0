#!/usr/bin/env bash
# Sourced by the carry builders (build_flashinfer_carry.sh, build_fa3_carry.sh,
# tools/build_device_wheelhouse.sh): one pinned wheel of ci/device-wheelhouse.txt for the
# device's Python (3.12, x86_64), without its deps, and what a call carries besides.
#   device_wheel_pin NAME          -> "NAME==VERSION" as pinned
#   download_device_wheel DIR PIN  -> the wheel in DIR
#   working_tree_bytes REPO        -> bytes of what every call carries: tracked and
#                                     untracked-not-ignored files
device_wheel_pin() {
  grep -o "^$1==[^ ]*" "$(dirname "${BASH_SOURCE[0]}")/../device-wheelhouse.txt"
}
download_device_wheel() {
  mkdir -p "$1"
  "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d "$1" "$2"
}
working_tree_bytes() {
  (cd "$1" && git ls-files -z -co --exclude-standard 2>/dev/null \
    | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
}
