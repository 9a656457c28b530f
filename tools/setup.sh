#!/usr/bin/env bash
# Create or update the project's virtualenv: system packages, Python packages, generated ROS
# messages, and the project itself (editable). Idempotent; `make setup` calls it only when an
# input changed.
set -euo pipefail
VENV=${1:-.venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}

need_apt=()
for pkg in libusb-1.0-0 cmake g++ make libegl-mesa0 libgl1-mesa-dri libosmesa6; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "setup: installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
# a parent environment's ROS bootstrap guard would make this venv load the wrong libraries
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE LD_LIBRARY_PATH
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
LOG="$VENV/setup.log"
: > "$LOG"
# pip's chatter goes to the log; on failure the log's tail is shown
pip_quiet() {
  if ! "${PIP[@]}" "$@" >>"$LOG" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$LOG" | tail -n 30 >&2
    echo "setup: pip $* failed (full log: $LOG)" >&2
    exit 1
  fi
}

echo "setup: python packages"
pip_quiet install -q --upgrade pip
# torch is pinned: 2.13.0 CPU (a local wheel on CI machines); an unpinned torch pulls CUDA builds
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then ORT=onnxruntime-gpu; else ORT=onnxruntime; fi
pip_quiet install -q -r requirements.txt "torch==2.13.0" "$ORT"

echo "setup: ROS interface packages missing from PyPI"
# interbotix_xs_msgs: the command messages of Interbotix/Trossen-driven ALOHA arms
bash tools/build_msgs.sh "$VENV" tools/msgs/tf2_msgs tools/msgs/interbotix_xs_msgs

echo "setup: clamp_ros (editable)"
pip_quiet install -q --no-deps --no-build-isolation -e .
# register the package in the venv's ament index (an editable install skips data_files), so
# get_package_share_directory('clamp_ros') finds config/ and launch/ as in a colcon install
SHARE="$VENV/share/clamp_ros"
mkdir -p "$VENV/share/ament_index/resource_index/packages" "$SHARE"
touch "$VENV/share/ament_index/resource_index/packages/clamp_ros"
for item in package.xml config launch models; do ln -sfn "$ROOT/$item" "$SHARE/$item"; done
echo "setup: done ($VENV)"
