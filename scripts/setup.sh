#!/usr/bin/env bash
# Installs the package with everything the main job, the adapters and the tests need, into the active Python
# (the README's commands make and activate a virtual environment first).
# torch first, pinned to the local CPU wheel, so that the package's torch range is already satisfied and pip does
# not pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[all,test]"
