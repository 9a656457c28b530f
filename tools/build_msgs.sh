#!/usr/bin/env bash
# Build ROS 2 interface packages (ament_cmake + rosidl) into a pip venv that
# holds the ROS 2 Kilted wheels, then verify the messages import.
#
# usage: tools/build_msgs.sh VENV_DIR PKG_DIR [PKG_DIR...]
#   e.g. tools/build_msgs.sh .venv tools/msgs/tf2_msgs
#
# Idempotent: a package whose sources are unchanged since its last successful
# build into this venv (and that still imports) is skipped; FORCE=1 rebuilds.
# Quiet on success (one line per package); on failure prints the log tail and
# exits non-zero. Needs cmake, make and a C/C++ compiler.
set -euo pipefail

die() { echo "build_msgs: $*" >&2; exit 1; }

[ $# -ge 2 ] || die "usage: $0 VENV_DIR PKG_DIR [PKG_DIR...]"
command -v cmake >/dev/null || die "cmake not found"

VENV=$(cd "$1" 2>/dev/null && pwd) || die "no such venv: $1"
shift
PY="$VENV/bin/python"
[ -x "$PY" ] || die "no python in venv: $PY"

# The ROS wheels' bootstrapper (a .pth file) re-execs python with
# LD_LIBRARY_PATH=<venv>/lib:<site-packages>/ros_*.libs unless this guard is
# set. Drop any inherited guard/path (e.g. from another venv) so the venv's
# python sets up its own library path for the generators and the checks.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE LD_LIBRARY_PATH
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV"

# Where this venv's python imports pure packages from, relative to the venv
# (lib/python3.X/site-packages); CMake would otherwise guess it itself.
PY_INSTALL_DIR=$("$PY" -c 'import os, sys, sysconfig; print(os.path.relpath(sysconfig.get_path("purelib"), sys.prefix))') \
  || die "cannot run $PY"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FIXUP="$HERE/msgs/fix_rosidl_python_targets.cmake"
JOBS=$(nproc 2>/dev/null || echo 4)

verify() {  # verify PKG_NAME PKG_DIR -> imports every msg/srv and loads its C type support
  local pkg=$1 dir=$2
  "$PY" - "$pkg" "$dir" <<'EOF'
import importlib, pathlib, sys
pkg, d = sys.argv[1], pathlib.Path(sys.argv[2])
n = 0
for kind, ext in (("msg", ".msg"), ("srv", ".srv"), ("action", ".action")):
    for f in sorted((d / kind).glob("*" + ext)):
        cls = getattr(importlib.import_module(f"{pkg}.{kind}"), f.stem)
        cls.__class__.__import_type_support__()  # loads the C extension modules
        if kind == "msg":
            cls()
        n += 1
if n == 0:
    sys.exit(f"no interfaces found in {d}")
EOF
}

src_hash() {  # hash of the package sources + the shared fix-up + the venv
  ( cd "$1" && find . -type f ! -path './build/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    sha256sum "$FIXUP"; echo "$VENV" ) | sha256sum | cut -d' ' -f1
}

rc=0
for arg in "$@"; do
  PKG_DIR=$(cd "$arg" 2>/dev/null && pwd) || { echo "build_msgs: no such package dir: $arg" >&2; rc=1; continue; }
  [ -f "$PKG_DIR/package.xml" ] && [ -f "$PKG_DIR/CMakeLists.txt" ] \
    || { echo "build_msgs: $PKG_DIR: missing package.xml or CMakeLists.txt" >&2; rc=1; continue; }
  PKG=$(sed -n 's:.*<name>[[:space:]]*\([^<[:space:]]*\)[[:space:]]*</name>.*:\1:p' "$PKG_DIR/package.xml" | head -n1)
  [ -n "$PKG" ] || { echo "build_msgs: $PKG_DIR: no <name> in package.xml" >&2; rc=1; continue; }

  HASH=$(src_hash "$PKG_DIR")
  STAMP="$VENV/share/$PKG/clamp_build_msgs.stamp"
  if [ "${FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] \
     && verify "$PKG" "$PKG_DIR" >/dev/null 2>&1; then
    echo "$PKG: up to date in $VENV"
    continue
  fi

  t0=$SECONDS
  BUILD=$(mktemp -d "${TMPDIR:-/tmp}/build_msgs.$PKG.XXXXXX")
  LOG="$BUILD/build.log"
  if ! {
      cmake -S "$PKG_DIR" -B "$BUILD/build" \
        -DCMAKE_PREFIX_PATH="$VENV" \
        -DCMAKE_INSTALL_PREFIX="$VENV" \
        -DPython3_EXECUTABLE="$PY" \
        -DPython3_FIND_VIRTUALENV=ONLY \
        -DPYTHON_INSTALL_DIR="$PY_INSTALL_DIR" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_TESTING=OFF &&
      cmake --build "$BUILD/build" -j "$JOBS" &&
      cmake --install "$BUILD/build"
    } >"$LOG" 2>&1; then
    echo "build_msgs: $PKG: build FAILED (full log: $LOG)" >&2
    if grep -qE 'CMake Error|error:' "$LOG"; then
      echo "---- first errors:" >&2
      grep -m 5 -A 8 -E 'CMake Error|error:' "$LOG" | head -n 40 >&2
    fi
    echo "---- log tail:" >&2
    tail -n 40 "$LOG" >&2
    rc=1
    continue
  fi
  if ! verify "$PKG" "$PKG_DIR" >>"$LOG" 2>&1; then
    echo "build_msgs: $PKG: installed but import check FAILED; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    rc=1
    continue
  fi
  echo "$HASH" >"$STAMP"
  rm -rf "$BUILD"
  echo "$PKG: built and installed into $VENV ($((SECONDS - t0))s)"
done
exit $rc
