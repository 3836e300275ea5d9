"""Compile the memory cores' Triton kernels for a CUDA GPU on a machine without one, and report their resources.

Triton's interpreter (``TRITON_INTERPRET=1``), which the tests use on CPUs, runs a kernel's Python code with numpy:
it checks what the kernel computes but not that Triton's compiler accepts it (types, shapes of ``tl.where``
branches, pointer arithmetic, constexpr use) nor what it costs on a GPU. Triton compiles ahead of time for any target
without a device (it ships ``ptxas``), so this script takes every kernel launch of a forward and backward step of each
core with a Triton kernel, at the sizes given, and compiles it to a cubin for ``--arch`` (90: H100/H200), printing
registers per thread, local memory per thread (register spills), shared memory and compile time per kernel. A spill
(registers written to local memory) marks a kernel that will run slower than its arithmetic suggests.

How the launches are found: the kernel objects in ``memory_cores.*_triton`` are swapped for recorders that keep the
arguments of each ``kernel[grid](...)`` call instead of running it (the tensors are CPU tensors whose contents do not
matter), and ``check_inputs`` lets CPU tensors through; nothing runs on a device.

    python3 scripts/triton_compile_check.py                           # every core, benchmark sizes, fp32, sm_90
    python3 scripts/triton_compile_check.py --cores ntm --dtypes float32 float64 --batch 4096
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compiled kernels (JITFunctions), not interpreted ones
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from memory_cores import KERNEL_CORES as CORES, make_core  # noqa: E402  (kernel module of core NAME: memory_cores.NAME_triton)
DTYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32", torch.bool: "i1",
          torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class Launch:
    kernel: object  # the JITFunction
    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


class Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``rec[grid](*args, **kwargs)`` records the call and runs nothing."""

    def __init__(self, name: str, kernel, launches: list[Launch]) -> None:
        self.name, self.kernel, self.launches = name, kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(Launch(self.kernel, self.name, args, kwargs))

        return launch


def build_core(name: str, args: argparse.Namespace) -> torch.nn.Module:
    """Core ``name`` with ``kernel="triton"`` at the sizes given (those its constructor takes, as benchmark_cores.py)."""
    from benchmark_cores import core_kwargs

    return make_core(name, args.input, kernel="triton", **core_kwargs(name, args, args.slots))


def record(name: str, dtype: torch.dtype, args: argparse.Namespace) -> list[Launch]:
    """The kernel launches of one forward and backward step (2-step unroll) of core ``name``."""
    import importlib

    from triton.runtime.jit import JITFunction

    from memory_cores import triton_common
    from memory_cores.base import tree_leaves

    module = importlib.import_module(f"memory_cores.{name}_triton")
    launches: list[Launch] = []
    # every kernel the module defines (its jit helpers too: they are never launched from Python, and nothing is
    # compiled before the originals are back)
    kernels = {attr: obj for attr, obj in vars(module).items()
               if isinstance(obj, JITFunction) and obj.__module__ == module.__name__}
    patches = [(module, attr, Recorder(attr, obj, launches)) for attr, obj in kernels.items()]
    patches += [(module, "check_inputs", lambda device, dtype: None),
                (triton_common, "available", lambda device: None)]
    originals = [(m, a, getattr(m, a)) for m, a, _ in patches]
    try:
        for m, a, v in patches:
            setattr(m, a, v)
        torch.manual_seed(0)
        core = build_core(name, args).to(dtype)
        xs = torch.randn(2, args.batch, args.input, dtype=dtype, requires_grad=True)
        ys, final = core.unroll(xs, core.initial_state(args.batch))
        loss = ys.sum() + sum(t.sum() for t in tree_leaves(final) if t.is_floating_point())
        loss.backward()
    finally:
        for m, a, v in originals:
            setattr(m, a, v)
    return launches


def signature(launch: Launch) -> tuple[dict, dict, dict]:
    """``(signature, constexprs, options)`` of a recorded launch for ``triton.compile``."""
    kernel = launch.kernel
    options = {k: launch.kwargs[k] for k in ("num_warps", "num_stages") if k in launch.kwargs}
    values = dict(zip(kernel.arg_names, launch.args))
    values.update({k: v for k, v in launch.kwargs.items() if k not in options})
    sig, constexprs = {}, {}
    for param in kernel.params:
        value = values[param.name]
        if param.is_constexpr:
            sig[param.name] = "constexpr"
            constexprs[param.name] = value
        elif isinstance(value, torch.Tensor):
            sig[param.name] = "*" + DTYPES[value.dtype]
        elif isinstance(value, bool):
            sig[param.name] = "i1"
        elif isinstance(value, int):
            sig[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            sig[param.name] = "fp32"
        else:
            raise TypeError(f"{launch.name}: cannot type argument {param.name}={value!r}")
    return sig, constexprs, options


def compile_launch(launch: Launch, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs, options = signature(launch)
    t0 = time.perf_counter()
    compiled = triton.compile(ASTSource(launch.kernel, sig, constexprs=constexprs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    seconds = time.perf_counter() - t0
    meta = compiled.metadata
    usage = resource_usage(compiled.asm["cubin"])
    local = usage.get("STACK", 0) + usage.get("LOCAL", 0) if usage else None
    return dict(kernel=launch.name, regs=usage.get("REG"), local=local, shared=meta.shared,
                num_warps=meta.num_warps, seconds=seconds, constexprs=constexprs)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers per thread (``REG``), stack and local memory per thread in bytes (``STACK``, ``LOCAL``: register
    spills go to the stack), ... of a cubin, from ``cuobjdump -res-usage`` (shipped with Triton); ``{}`` when it cannot run."""
    import subprocess
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return {}
    return {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", out)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cores", nargs="*", default=list(CORES), choices=CORES, help="cores whose kernels to compile")
    p.add_argument("--dtypes", nargs="*", default=["float32"], choices=["float32", "float64"],
                   help="dtypes of the kernels' tensors")
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: H100/H200, 80: A100)")
    p.add_argument("--batch", type=int, default=32, help="batch rows B (one program each; no effect on the code)")
    p.add_argument("--input", type=int, default=8, help="input width")
    p.add_argument("--hidden", type=int, default=128, help="controller / cell hidden units")
    p.add_argument("--slots", type=int, default=64, help="memory slots N (ntm, dnc, rl_access)")
    p.add_argument("--slot-size", type=int, default=32, help="slot width W")
    p.add_argument("--read-heads", type=int, default=4, help="read heads R (ntm, dnc)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import triton
    except ImportError:
        print("Triton is not installed (pip install triton)")
        return 2
    print(f"triton {triton.__version__}, torch {torch.__version__}; target sm_{args.arch}; sizes: batch {args.batch}, "
          f"hidden {args.hidden}, {args.slots} slots x {args.slot_size}, {args.read_heads} read heads", flush=True)
    print(f"{'core':<10} {'dtype':<8} {'kernel':<22} {'warps':>5} {'regs':>5} {'stack B':>7} {'shared B':>8} "
          f"{'compile s':>9}", flush=True)
    failures = 0
    for name in args.cores:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            launches = record(name, dtype, args)
            seen = set()
            for launch in launches:
                sig, constexprs, options = signature(launch)
                key = (launch.name, tuple(sorted(sig.items())), tuple(sorted(constexprs.items())),
                       tuple(sorted(options.items())))
                if key in seen:
                    continue
                seen.add(key)
                try:
                    r = compile_launch(launch, args.arch)
                except Exception as err:  # report every kernel, then fail
                    failures += 1
                    print(f"{name:<10} {dtype_name:<8} {launch.name:<22} FAILED: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}", flush=True)
                    continue
                print(f"{name:<10} {dtype_name:<8} {r['kernel']:<22} {r['num_warps']:>5} {str(r['regs']):>5} "
                      f"{str(r['local']):>7} {r['shared']:>8} {r['seconds']:>9.1f}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
