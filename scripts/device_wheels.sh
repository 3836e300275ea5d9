#!/usr/bin/env bash
# The wheels a device session carries (the device image lacks them; scripts/device_env.sh installs them there):
# cp312 x86-64 builds of the versions installed in this checkout's .venv, downloaded into .whl/ (ignored by git).
#
#   bash scripts/device_wheels.sh        # then: device run with carry [".whl"], e.g. bash scripts/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
PY=${PY:-.venv/bin/python3}
pkgs="gymnasium farama-notifications tyro docstring-parser typeguard shtab minigrid pygame-ce stable-baselines3 sb3-contrib"
mkdir -p .whl
for p in $pkgs; do
  v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p" 2>/dev/null) || {
    echo "$p is not installed in $PY: not carried"; continue; }
  ls .whl | grep -qi "^$(echo "$p" | tr - _)-$v-" && continue
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$p==$v"
done
ls -la .whl
du -sh .whl
