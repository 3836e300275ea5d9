"""What the Triton kernel tests share (tests/test_*_triton.py).

Import this module before anything that imports a kernel module: without CUDA it sets ``TRITON_INTERPRET=1`` so that
the kernels are built for Triton's interpreter, which runs the same kernel code on CPU tensors.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

if not torch.cuda.is_available():  # before any memory_cores.*_triton import: its kernels become interpreted
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def contract_test(name: str, cls: type) -> Callable:
    """A test running tests/test_core_contract.py's reset and numerical-safety checks on core ``name`` (its ``SMALL``
    sizes) with ``kernel="triton"`` (on the CPU, in the interpreter); assign it to a ``test_*`` name of a module."""
    import pytest
    import test_core_contract as contract

    @pytest.mark.parametrize(
        "check",
        [contract.test_reset_equals_fresh_start_and_leaves_other_rows, contract.test_numerically_safe],
        ids=lambda f: f.__name__.removeprefix("test_"),
    )
    def test_contract_with_the_triton_kernel(monkeypatch, check):
        if DEVICE != "cpu":
            pytest.skip("the contract checks build their cores on the CPU")
        import memory_cores

        monkeypatch.setitem(memory_cores.CORES, f"{name}_triton", cls)
        monkeypatch.setitem(contract.SMALL, f"{name}_triton", {**contract.SMALL[name], "kernel": "triton"})
        check(f"{name}_triton")

    return test_contract_with_the_triton_kernel


def unroll_fwd_bwd(core, xs: torch.Tensor, resets: torch.Tensor | None = None) -> Callable[[], tuple]:
    """A closure: ``core``'s unroll with no host read (``unroll_sync_free``) over ``xs`` ``[T, B, I]`` from the
    initial state, and the gradients of every parameter of a loss on its outputs."""
    state = core.initial_state(xs.shape[1], xs.device)
    params = list(core.parameters())

    def fwd_bwd():
        ys, _ = core.unroll_sync_free(xs, state, resets)
        return torch.autograd.grad(ys.square().sum(), params)

    return fwd_bwd


def assert_graph_replay_equals_eager(fwd_bwd: Callable[[], tuple[torch.Tensor, ...]], tol: float = 1e-5) -> None:
    """``fwd_bwd()`` (an unroll and its gradients, with Triton kernels inside) captured as one CUDA graph and replayed
    gives what it gives eagerly (two warm-up calls on a side stream first, as torch.cuda.graphs asks)."""
    eager = fwd_bwd()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fwd_bwd()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fwd_bwd()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager, captured):
        torch.testing.assert_close(b, a, atol=tol, rtol=tol)
