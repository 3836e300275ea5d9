# Sourced by the device scripts (scripts/device_*.sh): the Python environment of a device session.
# The device image lacks gymnasium, minigrid, tyro, ...: their cp312 wheels travel in .whl/ (the device tool's
# README gives the download command) and are installed into /tmp/site; the repository goes on PYTHONPATH.
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if [ -d .whl ] && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
