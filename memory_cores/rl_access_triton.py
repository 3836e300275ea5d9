"""The ``rl_access`` core's memory access as two Triton kernels: one forward, one backward (the fast path of
:mod:`memory_cores.rl_access`).

The plain step (:meth:`memory_cores.rl_access.RLAccessCore._step`) builds, for the P access processes of the core's
set, a table of candidate new heads, write weightings and reads (circular rolls of the one-hot head, a content
weighting, an ``argmin`` of the usage, one ``bmm`` for the reads), gathers the chosen row of each and then erases,
adds and updates the usage: about 40 small torch ops forward and as many backward. At the batch sizes of RL (32 to a
few thousand rows) each is a kernel launch that does almost no work, so a step costs launches, not arithmetic. Here
everything after the choice, from the differentiable portion of the network output to the new memory, head, usage
and read, is ONE kernel launch with one program per batch row (the row's ``N x W`` memory stays in registers), and
the backward is one more. The controller (LSTM), the interface Linear, the RL portion (``log_softmax`` of z_t, the
choice a_t: greedy, Gumbel-max from ``torch.rand`` or given, its log-probability and the entropy) stay in torch, so
the random draws and the choices are those of the plain step.

Per row, with a_t the chosen process (notation of :mod:`memory_cores.rl_access`; ``xi = [z | k | beta^ | e^ | v]``)::

    beta = oneplus(beta^) = 1 + softplus(beta^);  e = sigmoid(e^)
    p'     = p shifted by d (p'(i) = p(i - d), circular; d = +1 for the *_right moves, -1 for *_left, else 0)
    w^r    = p (read_head, read_move_*), p' (move_left, move_right), w^c = softmax_i(beta K[k, M(i)])
             (content_read, NTM eq. 5, K the cosine with eps inside the square roots), none (the others)
    r_t    = sum_i w^r(i) M(i)   (a reading process),   r_{t-1}   (the others)
    w^w    = p (write_head, write_move_*), onehot(argmin_i u(i)) (write_least_used, first index on ties), 0 (others)
    M_t(i) = M(i) + w^w(i) (v - M(i) e)      (= M(i) (1 - w^w(i) e) + w^w(i) v, NTM eqs. 3-4)
    u_t    = lambda u (1 - w^w) + w^w;    p_t = p'

The set and order of the processes is compile-time (a ``tl.constexpr`` that packs each choice index's process code
in 4 bits), so no table has to be copied to the device and the kernels specialise to the processes present (no
content addressing is compiled in when ``content_read`` is not in the set).

The backward recomputes everything from the step's inputs (it saves only those, no intermediate) and returns the
gradients the plain step's autograd gives: w.r.t. k, beta^, e^, v (the z columns get zero here; torch adds the
log-softmax's part), the memory, the last read, and the head and usage (through the reads and writes at the head,
the head move and the usage update). The head move transposes to a shift of dL/dp_t and of the moved head's
read gradient by ``-d``; both are loaded at shifted rows from global memory (the incoming gradient and the memory are
kernel inputs, so no barrier is needed).

Values equal the plain step up to rounding (tests/test_rl_access_triton.py compares them in float64, including
gradients of every parameter, of the inputs and of the state, on the CPU through Triton's interpreter,
``TRITON_INTERPRET=1``, and on CUDA). The backward is once-differentiable. float32 and float64.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .addressing import EPS
from .rl_access import ACCESS_PROCESSES
from .triton_common import available, check_inputs, tl, triton

if triton is not None:
    from .triton_common import content_bwd, content_fwd, memory_tile, row_inv_norms, sigmoid, softplus, softplus_grad

__all__ = ["available", "process_codes", "rl_access", "RLAccess"]

_PROCESS_NAMES = ACCESS_PROCESSES  # process code = position + 1 (0: no process)


_CODE_BITS = 4


def _code(name: str) -> int:
    """The kernels' code of an access process."""
    return _PROCESS_NAMES.index(name) + 1


def process_codes(processes: Sequence[str]) -> int:
    """The process set as the kernels' constexpr: choice index j's process code in bits ``4 j .. 4 j + 3``."""
    packed = 0
    for j, name in enumerate(processes):
        if name not in _PROCESS_NAMES:
            raise ValueError(f"unknown access process {name!r}; valid: {list(_PROCESS_NAMES)}")
        packed |= _code(name) << (_CODE_BITS * j)
    return packed


if triton is not None:
    _READ_HEAD = tl.constexpr(_code("read_head"))
    _WRITE_HEAD = tl.constexpr(_code("write_head"))
    _MOVE_LEFT = tl.constexpr(_code("move_left"))
    _MOVE_RIGHT = tl.constexpr(_code("move_right"))
    _CONTENT_READ = tl.constexpr(_code("content_read"))
    _WRITE_LEAST_USED = tl.constexpr(_code("write_least_used"))
    _WRITE_MOVE_RIGHT = tl.constexpr(_code("write_move_right"))
    _WRITE_MOVE_LEFT = tl.constexpr(_code("write_move_left"))
    _READ_MOVE_RIGHT = tl.constexpr(_code("read_move_right"))
    _READ_MOVE_LEFT = tl.constexpr(_code("read_move_left"))

    @triton.jit
    def _process(choice_ptr, CODES: tl.constexpr, NP: tl.constexpr):
        """The chosen process's flags for this row: ``(d, reads_at_head, reads_moved, content, writes_at_head,
        writes_least_used)``, d the head move in {-1, 0, +1}."""
        c = tl.load(choice_ptr)
        code = c * 0
        for j in tl.static_range(NP):
            code = tl.where(c == j, (CODES >> (4 * j)) & 15, code)  # a compile-time table, 4 bits per index
        right = (code == _MOVE_RIGHT) | (code == _WRITE_MOVE_RIGHT) | (code == _READ_MOVE_RIGHT)
        left = (code == _MOVE_LEFT) | (code == _WRITE_MOVE_LEFT) | (code == _READ_MOVE_LEFT)
        d = right.to(tl.int32) - left.to(tl.int32)
        reads_at_head = (code == _READ_HEAD) | (code == _READ_MOVE_RIGHT) | (code == _READ_MOVE_LEFT)
        reads_moved = (code == _MOVE_LEFT) | (code == _MOVE_RIGHT)
        content = code == _CONTENT_READ
        writes_at_head = (code == _WRITE_HEAD) | (code == _WRITE_MOVE_RIGHT) | (code == _WRITE_MOVE_LEFT)
        writes_least_used = code == _WRITE_LEAST_USED
        return d, reads_at_head, reads_moved, content, writes_at_head, writes_least_used

    @triton.jit
    def _least_used(u, rows, rmask, BN: tl.constexpr):
        """``argmin_i u(i)`` as torch.argmin takes it: the first index on ties, the first NaN if there is one."""
        nan = (u != u) & rmask
        umin = tl.min(tl.where(rmask & (u == u), u, float("inf")), 0)
        hit = tl.where(tl.max(nan.to(tl.int32), 0) > 0, nan, (u == umin) & rmask)
        return tl.min(tl.where(hit, rows, BN), 0)

    @triton.jit
    def _rl_access_fwd(
        xi_ptr, choice_ptr, mem_ptr, p_ptr, u_ptr, r_ptr,  # inputs
        mem_out_ptr, p_out_ptr, u_out_ptr, r_out_ptr,  # outputs
        decay, eps,
        CODES: tl.constexpr, NP: tl.constexpr, HAS_CONTENT: tl.constexpr,
        N: tl.constexpr, W: tl.constexpr, I: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        rows, cols, rmask, cmask, tile, tmask = memory_tile(N, W, BN, BW)
        x = xi_ptr + b * I + NP  # the differentiable portion [k (W) | beta^ (1) | e^ (W) | v (W)]
        d, reads_at_head, reads_moved, content, writes_at_head, writes_least_used = _process(choice_ptr + b, CODES, NP)
        M = tl.load(mem_ptr + b * N * W + tile, mask=tmask, other=0.0)  # M_{t-1}
        p = tl.load(p_ptr + b * N + rows, mask=rmask, other=0.0)
        p_moved = tl.load(p_ptr + b * N + (rows - d + N) % N, mask=rmask, other=0.0)  # p'(i) = p(i - d)
        u = tl.load(u_ptr + b * N + rows, mask=rmask, other=0.0)
        # ---- the read: r_t = sum_i w^r(i) M(i), or r_{t-1}
        w_read = tl.where(reads_at_head, p, tl.where(reads_moved, p_moved, 0.0))
        if HAS_CONTENT:
            k = tl.load(x + cols, mask=cmask, other=0.0)
            beta = 1.0 + softplus(tl.load(x + W))
            wc, _ = content_fwd(M, row_inv_norms(M, eps), k, beta, rmask, eps)  # NTM eq. 5
            w_read = tl.where(content, wc, w_read)
        reads = reads_at_head | reads_moved | content
        r = tl.where(reads, tl.sum(w_read[:, None] * M, 0), tl.load(r_ptr + b * W + cols, mask=cmask, other=0.0))
        tl.store(r_out_ptr + b * W + cols, r, mask=cmask)
        # ---- the write: M_t = M + w^w (v - M e), u_t = lambda u (1 - w^w) + w^w
        slot = _least_used(u, rows, rmask, BN)
        w_write = tl.where(writes_at_head, p, tl.where(writes_least_used & (rows == slot), 1.0, 0.0))
        e = sigmoid(tl.load(x + W + 1 + cols, mask=cmask, other=0.0))
        v = tl.load(x + 2 * W + 1 + cols, mask=cmask, other=0.0)
        M_new = M + w_write[:, None] * (v[None, :] - M * e[None, :])
        tl.store(mem_out_ptr + b * N * W + tile, M_new, mask=tmask)
        tl.store(u_out_ptr + b * N + rows, decay * u * (1.0 - w_write) + w_write, mask=rmask)
        tl.store(p_out_ptr + b * N + rows, p_moved, mask=rmask)

    @triton.jit
    def _rl_access_bwd(
        xi_ptr, choice_ptr, mem_ptr, p_ptr, u_ptr,  # saved inputs
        g_mem_out_ptr, g_p_out_ptr, g_u_out_ptr, g_r_out_ptr,  # incoming gradients
        g_xi_ptr, g_mem_ptr, g_p_ptr, g_u_ptr, g_r_ptr,  # outputs
        decay, eps,
        CODES: tl.constexpr, NP: tl.constexpr, HAS_CONTENT: tl.constexpr,
        N: tl.constexpr, W: tl.constexpr, I: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr, BP: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        rows, cols, rmask, cmask, tile, tmask = memory_tile(N, W, BN, BW)
        pidx = tl.arange(0, BP)
        x = xi_ptr + b * I + NP
        gx = g_xi_ptr + b * I
        tl.store(gx + pidx, tl.zeros([BP], dtype=g_xi_ptr.dtype.element_ty), mask=pidx < NP)  # z: torch's part
        gx = gx + NP
        d, reads_at_head, reads_moved, content, writes_at_head, writes_least_used = _process(choice_ptr + b, CODES, NP)
        M = tl.load(mem_ptr + b * N * W + tile, mask=tmask, other=0.0)
        p = tl.load(p_ptr + b * N + rows, mask=rmask, other=0.0)
        u = tl.load(u_ptr + b * N + rows, mask=rmask, other=0.0)
        gM_new = tl.load(g_mem_out_ptr + b * N * W + tile, mask=tmask, other=0.0)
        g_u_new = tl.load(g_u_out_ptr + b * N + rows, mask=rmask, other=0.0)
        # ---- usage u_t = lambda u (1 - w^w) + w^w
        slot = _least_used(u, rows, rmask, BN)
        w_write = tl.where(writes_at_head, p, tl.where(writes_least_used & (rows == slot), 1.0, 0.0))
        tl.store(g_u_ptr + b * N + rows, decay * g_u_new * (1.0 - w_write), mask=rmask)
        g_w_write = g_u_new * (1.0 - decay * u)
        # ---- erase and add M_t = M + w^w (v - M e)
        e = sigmoid(tl.load(x + W + 1 + cols, mask=cmask, other=0.0))
        v = tl.load(x + 2 * W + 1 + cols, mask=cmask, other=0.0)
        g_w_write += tl.sum(gM_new * (v[None, :] - M * e[None, :]), 1)
        g_e = -tl.sum(gM_new * w_write[:, None] * M, 0)
        tl.store(gx + W + 1 + cols, g_e * e * (1.0 - e), mask=cmask)
        tl.store(gx + 2 * W + 1 + cols, tl.sum(w_write[:, None] * gM_new, 0), mask=cmask)
        gM = gM_new * (1.0 - w_write[:, None] * e[None, :])
        # ---- the read r_t = sum_i w^r(i) M(i) (or r_{t-1})
        p_moved = tl.load(p_ptr + b * N + (rows - d + N) % N, mask=rmask, other=0.0)
        w_read = tl.where(reads_at_head, p, tl.where(reads_moved, p_moved, 0.0))
        reads = reads_at_head | reads_moved | content
        g_r_new = tl.load(g_r_out_ptr + b * W + cols, mask=cmask, other=0.0)
        tl.store(g_r_ptr + b * W + cols, tl.where(reads, 0.0, g_r_new), mask=cmask)
        g_read = tl.where(reads, g_r_new, 0.0)
        g_w_read = tl.sum(g_read[None, :] * M, 1)  # dL/dw^r(i) = dL/dr . M(i)
        if HAS_CONTENT:
            k = tl.load(x + cols, mask=cmask, other=0.0)
            beta_x = tl.load(x + W)
            beta = 1.0 + softplus(beta_x)
            m_inv = row_inv_norms(M, eps)
            wc, sim = content_fwd(M, m_inv, k, beta, rmask, eps)
            w_read = tl.where(content, wc, w_read)
            gk, g_beta, gM_c = content_bwd(tl.where(content, g_w_read, 0.0), wc, sim, M, m_inv, k, beta, eps)
            gM += tl.where(content, gM_c, 0.0)
            tl.store(gx + cols, tl.where(content, gk, 0.0), mask=cmask)
            tl.store(gx + W, tl.where(content, g_beta * softplus_grad(beta_x), 0.0))
        else:
            tl.store(gx + cols, tl.zeros([BW], dtype=g_xi_ptr.dtype.element_ty), mask=cmask)  # k
            tl.store(gx + W + tl.arange(0, 1), tl.zeros([1], dtype=g_xi_ptr.dtype.element_ty))  # beta^
        gM += w_read[:, None] * g_read[None, :]
        tl.store(g_mem_ptr + b * N * W + tile, gM, mask=tmask)
        # ---- the head: p enters through the write and the read at the head and through p' = p shifted by d;
        # dL/dp(j) = [dL/dp_t + dL/dw^r (moves)](j + d): the incoming gradient and the memory at shifted rows
        g_p = tl.where(writes_at_head, g_w_write, 0.0) + tl.where(reads_at_head, g_w_read, 0.0)
        src = (rows + d + N) % N
        g_p += tl.load(g_p_out_ptr + b * N + src, mask=rmask, other=0.0)
        M_src = tl.load(mem_ptr + b * N * W + src[:, None] * W + cols[None, :], mask=tmask, other=0.0)
        g_p += tl.where(reads_moved, tl.sum(g_read[None, :] * M_src, 1), 0.0)
        tl.store(g_p_ptr + b * N + rows, g_p, mask=rmask)


def _meta(N: int, W: int) -> dict:
    BN, BW = triton.next_power_of_2(N), triton.next_power_of_2(W)
    return dict(BN=BN, BW=BW, num_warps=4 if BN * BW <= 4096 else 8)


class RLAccess(torch.autograd.Function):
    """The ``rl_access`` memory access after the choice as one forward and one backward kernel.

    ``apply(xi, choice, memory, head, usage, read, codes, usage_decay, eps)`` with ``xi`` ``[B, P + 3W + 1]`` the
    network output ``[z | k | beta^ | e^ | v]``, ``choice`` ``[B]`` long a_t, ``memory`` ``[B, N, W]`` M_{t-1},
    ``head`` ``[B, N]`` p, ``usage`` ``[B, N]`` u, ``read`` ``[B, W]`` r_{t-1} and ``codes`` from
    :func:`process_codes`; returns ``(M_t [B, N, W], p_t [B, N], u_t [B, N], r_t [B, W])``.
    """

    @staticmethod
    def forward(ctx, xi, choice, memory, head, usage, read, codes, usage_decay, eps):  # type: ignore[override]
        xi, choice, memory, head, usage, read = (t.contiguous() for t in (xi, choice, memory, head, usage, read))
        B, N, W = memory.shape
        NP = xi.shape[1] - 3 * W - 1
        mem_out = torch.empty_like(memory)
        head_out = torch.empty_like(head)
        usage_out = torch.empty_like(usage)
        read_out = torch.empty_like(read)
        if B:
            _rl_access_fwd[(B,)](
                xi, choice, memory, head, usage, read, mem_out, head_out, usage_out, read_out, usage_decay, eps,
                CODES=codes, NP=NP, HAS_CONTENT=_has_content(codes, NP), N=N, W=W, I=xi.shape[1], **_meta(N, W),
            )
        # p_t depends on p only, u_t on u and p: outputs of nothing that needs a gradient stay without one, as in
        # the plain step
        needs = ctx.needs_input_grad
        if not needs[3]:  # (one call: a second one would replace the first's list)
            ctx.mark_non_differentiable(head_out, *(() if needs[4] else (usage_out,)))
        ctx.save_for_backward(xi, choice, memory, head, usage)
        ctx.meta = (codes, NP, usage_decay, eps)
        return mem_out, head_out, usage_out, read_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mem, g_head, g_usage, g_read):  # type: ignore[override]
        xi, choice, memory, head, usage = ctx.saved_tensors
        codes, NP, usage_decay, eps = ctx.meta
        B, N, W = memory.shape
        grads = [
            torch.zeros_like(ref) if g is None else g.contiguous()
            for g, ref in ((g_mem, memory), (g_head, head), (g_usage, usage), (g_read, memory.new_empty(B, W)))
        ]
        g_xi = torch.empty_like(xi)
        g_memory = torch.empty_like(memory)
        g_head_prev = torch.empty_like(head)
        g_usage_prev = torch.empty_like(usage)
        g_read_prev = memory.new_empty(B, W)
        if B:
            meta = _meta(N, W)
            tile = meta["BN"] * meta["BW"]  # the backward holds about 4 tiles: fewest spills on sm_90 with
            meta["num_warps"] = 4 if tile < 2048 else 8 if tile < 8192 else 16  # (scripts/triton_compile_check.py)
            _rl_access_bwd[(B,)](
                xi, choice, memory, head, usage, *grads, g_xi, g_memory, g_head_prev, g_usage_prev, g_read_prev,
                usage_decay, eps, CODES=codes, NP=NP, HAS_CONTENT=_has_content(codes, NP), N=N, W=W, I=xi.shape[1],
                BP=triton.next_power_of_2(NP), **meta,
            )
        return g_xi, None, g_memory, g_head_prev, g_usage_prev, g_read_prev, None, None, None


def _has_content(codes: int, NP: int) -> bool:
    content = _code("content_read")
    return any((codes >> (_CODE_BITS * j)) & 15 == content for j in range(NP))


def rl_access(
    xi: Tensor, choice: Tensor, memory: Tensor, head: Tensor, usage: Tensor, read: Tensor, *,
    processes: Sequence[str], usage_decay: float, eps: float = EPS,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``rl_access`` memory access after the choice (see the module docstring) through the Triton kernels.

    Args:
        xi: ``[B, P + 3W + 1]`` the network output ``[z_t | k_t | beta^_t | e^_t | v_t]`` (z_t is not read here).
        choice: ``[B]`` long, a_t: an index into ``processes``.
        memory: ``[B, N, W]`` M_{t-1}; head ``[B, N]`` p (one-hot); usage ``[B, N]`` u; read ``[B, W]`` r_{t-1};
            all float32 or float64, of ``xi``'s dtype and device.
        processes: the core's access processes in choice-index order (names of
            :data:`memory_cores.rl_access.ACCESS_PROCESSES`).
        usage_decay: lambda; eps: the epsilon of the cosine similarity.
    Returns:
        ``(M_t [B, N, W], p_t [B, N], u_t [B, N], r_t [B, W])``.
    """
    check_inputs(memory.device, memory.dtype)
    if xi.shape[1] != len(processes) + 3 * memory.shape[2] + 1:
        raise ValueError(
            f"xi must have P + 3W + 1 = {len(processes) + 3 * memory.shape[2] + 1} columns, got {xi.shape[1]}"
        )
    return RLAccess.apply(xi, choice, memory, head, usage, read, process_codes(processes), float(usage_decay),
                          float(eps))
