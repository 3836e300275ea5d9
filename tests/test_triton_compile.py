"""The memory cores' Triton kernels compile for a CUDA GPU (sm_90) on a machine without one.

The kernel tests run in Triton's interpreter on CPUs, which executes the kernels' Python with numpy and so accepts
code that Triton's compiler would refuse (types, shapes, constexpr use); ``scripts/triton_compile_check.py`` compiles
every launch of a forward and backward step of each core to a cubin ahead of time (Triton ships ptxas), so a kernel
that only the interpreter accepts fails here, before a device session finds it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

ROOT = Path(__file__).resolve().parents[1]


def test_every_kernel_compiles_for_sm90_without_a_gpu(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1",
           "TRITON_CACHE_DIR": str(tmp_path / "triton_cache")}
    cmd = [sys.executable, str(ROOT / "scripts" / "triton_compile_check.py"), "--dtypes", "float32", "float64",
           "--hidden", "12", "--slots", "10", "--slot-size", "6", "--read-heads", "2", "--batch", "3"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert not [line for line in lines if "FAILED" in line]
    for core, kernels in (("ntm", ("_ntm_access_fwd", "_ntm_access_bwd")),
                          ("dnc", ("_dnc_access_fwd", "_dnc_access_bwd")),
                          ("alstm", ("_alstm_cell_fwd", "_alstm_cell_bwd")),
                          ("rl_access", ("_rl_access_fwd", "_rl_access_bwd"))):
        for dtype in ("float32", "float64"):
            rows = [line.split() for line in lines if line.startswith(core + " ") and f" {dtype} " in line]
            assert {r[2] for r in rows} >= set(kernels), (core, dtype, out.stdout)
            for r in rows:
                assert int(r[4]) > 0, r  # registers read back from the cubin
