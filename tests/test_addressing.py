"""Known-answer tests of the shared NTM/DNC addressing math (``memory_cores.addressing``).

Every check has an answer known in advance (a sharp key reads its slot, a shift by +1 is ``torch.roll`` by one,
erase-then-add on a hand-made memory) plus float64 numerical gradient checks. DNC allocation is covered by the DNC
tests.
"""

from __future__ import annotations

import pytest
import torch

from memory_cores.addressing import (
    circular_shift,
    content_weighting,
    cosine_similarity,
    erase_and_add,
    interpolate,
    oneplus,
    read_memory,
    sharpen,
    shift_offsets,
)

torch.set_num_threads(1)


def one_hot_shift(B: int, H: int, K: int, d: int, dtype=torch.float32) -> torch.Tensor:
    """A shift distribution ``[B, H, 2K+1]`` with all mass on shift ``d``."""
    s = torch.zeros(B, H, 2 * K + 1, dtype=dtype)
    s[..., shift_offsets(K).index(d)] = 1.0
    return s


# ---------------------------------------------------------------------------------------------- cosine / content
def test_cosine_similarity_known_values():
    memory = torch.tensor([[[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])  # [1, 4, 2]
    keys = torch.tensor([[[5.0, 0.0]]])  # [1, 1, 2]
    sim = cosine_similarity(memory, keys)
    expected = torch.tensor([[[1.0, -1.0, 0.0, 2**-0.5]]])
    torch.testing.assert_close(sim, expected, atol=1e-5, rtol=0)


def test_cosine_similarity_finite_with_finite_gradient_at_zero():
    """Zero memory and a zero key: 0/0 in a naive cosine; here finite values and finite, moderate gradients."""
    memory = torch.zeros(2, 4, 3, requires_grad=True)
    keys = torch.zeros(2, 2, 3, requires_grad=True)
    sim = cosine_similarity(memory, keys)
    assert torch.isfinite(sim).all()
    assert torch.equal(sim, torch.zeros_like(sim))
    (sim * torch.randn_like(sim)).sum().backward()
    for g in (memory.grad, keys.grad):
        assert torch.isfinite(g).all()
    # and through a whole content weighting, also at the 1e-6 constant memory the NTM starts from
    memory = torch.full((2, 4, 3), 1e-6, requires_grad=True)
    keys = torch.randn(2, 2, 3, requires_grad=True)
    w = content_weighting(memory, keys, torch.full((2, 2), 5.0))
    torch.testing.assert_close(w, torch.full_like(w, 0.25))  # equal slots -> uniform
    w[..., 0].sum().backward()
    assert torch.isfinite(memory.grad).all() and torch.isfinite(keys.grad).all()


def test_sharp_key_reads_its_slot():
    torch.manual_seed(0)
    B, N, W = 3, 10, 8
    memory = torch.randn(B, N, W)
    slots = torch.tensor([[2, 7], [0, 9], [5, 5]])  # [B, H]: the slot each head's key copies
    keys = memory[torch.arange(B).unsqueeze(1), slots]  # [B, H, W]
    w = content_weighting(memory, keys, torch.full((B, 2), 100.0))  # large beta
    assert torch.equal(w.argmax(-1), slots)
    torch.testing.assert_close(w.max(-1).values, torch.ones(B, 2), atol=1e-3, rtol=0)
    r = read_memory(memory, w)  # reading with it returns the slot's content
    torch.testing.assert_close(r, keys, atol=1e-2, rtol=0)
    # beta = 0 ignores the key: uniform
    w0 = content_weighting(memory, keys, torch.zeros(B, 2))
    torch.testing.assert_close(w0, torch.full_like(w0, 1.0 / N))


def test_content_weighting_rows_sum_to_one_and_mask():
    torch.manual_seed(1)
    memory, keys, beta = torch.randn(2, 6, 4), torch.randn(2, 3, 4), torch.rand(2, 3) * 10
    w = content_weighting(memory, keys, beta)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3))
    # an all-ones mask is plain content addressing
    torch.testing.assert_close(content_weighting(memory, keys, beta, mask=torch.ones(2, 3, 4)), w)


# ---------------------------------------------------------------------------------------------- interpolation
def test_interpolation_gate():
    torch.manual_seed(2)
    wc = torch.softmax(torch.randn(2, 3, 5), -1)
    wp = torch.softmax(torch.randn(2, 3, 5), -1)
    assert torch.equal(interpolate(wc, wp, torch.zeros(2, 3)), wp)  # g = 0 keeps the previous weighting
    assert torch.equal(interpolate(wc, wp, torch.ones(2, 3)), wc)  # g = 1 takes the content weighting
    torch.testing.assert_close(interpolate(wc, wp, torch.full((2, 3), 0.25)), 0.25 * wc + 0.75 * wp)


# ---------------------------------------------------------------------------------------------- circular shift
@pytest.mark.parametrize("K,d", [(1, 1), (1, -1), (1, 0), (2, 2), (2, -2), (2, 1), (3, -3)])
def test_concentrated_shift_rotates_by_exactly_d_slots(K, d):
    torch.manual_seed(3)
    w = torch.softmax(torch.randn(2, 3, 8), -1)
    out = circular_shift(w, one_hot_shift(2, 3, K, d))
    # w~(i) = w(i - d): the mass on slot j moves to slot j + d (mod N)
    assert torch.equal(out, torch.roll(w, d, dims=-1))


def test_shift_moves_a_one_hot_weighting_across_the_boundary():
    w = torch.zeros(1, 1, 5)
    w[..., 4] = 1.0
    out = circular_shift(w, one_hot_shift(1, 1, 1, +1))
    assert out[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # slot 4 + 1 wraps to slot 0
    out = circular_shift(out, one_hot_shift(1, 1, 1, -1))
    assert out[0, 0].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_shift_mixture_matches_the_paper_sum_and_keeps_mass():
    """eq. 8 written out: w~(i) = sum_j w(j) s(i - j mod N), with s zero outside -K..K."""
    torch.manual_seed(4)
    B, H, N, K = 2, 2, 7, 2
    w = torch.softmax(torch.randn(B, H, N), -1)
    s = torch.softmax(torch.randn(B, H, 2 * K + 1), -1)
    out = circular_shift(w, s)
    expected = torch.zeros(B, H, N)
    for i in range(N):
        for j in range(N):
            d = (i - j) % N
            d = d - N if d > N // 2 else d  # the signed shift taking slot j to slot i
            if -K <= d <= K:
                expected[..., i] += w[..., j] * s[..., d + K]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(-1), torch.ones(B, H))


def test_shift_rejects_bad_sizes():
    with pytest.raises(ValueError, match="odd"):
        circular_shift(torch.ones(1, 1, 5) / 5, torch.ones(1, 1, 2) / 2)
    with pytest.raises(ValueError, match="exceeds"):
        circular_shift(torch.ones(1, 1, 2) / 2, torch.ones(1, 1, 3) / 3)


# ---------------------------------------------------------------------------------------------- sharpening
def test_sharpen_gamma_one_is_identity_and_large_gamma_one_hot():
    torch.manual_seed(5)
    w = torch.softmax(torch.randn(2, 3, 6), -1)
    torch.testing.assert_close(sharpen(w, torch.ones(2, 3)), w, atol=1e-5, rtol=0)
    hard = sharpen(w, torch.full((2, 3), 200.0))
    torch.testing.assert_close(hard, torch.nn.functional.one_hot(w.argmax(-1), 6).float(), atol=1e-4, rtol=0)


def test_sharpen_stays_normalised_on_diffuse_weights():
    """w^gamma underflows for a diffuse weighting; the result must still be a distribution (the ratio)."""
    w = torch.full((1, 1, 64), 1.0 / 64)
    torch.testing.assert_close(sharpen(w, torch.tensor([[5.0]])), w)
    w = torch.tensor([[[0.5, 0.3, 0.2]]])
    out = sharpen(w, torch.tensor([[50.0]]))
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 1))
    expected = w.double().pow(3.0) / w.double().pow(3.0).sum()
    torch.testing.assert_close(sharpen(w, torch.tensor([[3.0]])).double(), expected, atol=1e-5, rtol=0)


def test_sharpen_tiny_negative_inputs_are_safe():
    w = torch.tensor([[[0.7, 0.3, -1e-9, 0.0]]], requires_grad=True)  # rounding residue from a shift
    out = sharpen(w, torch.tensor([[2.5]]))
    assert torch.isfinite(out).all() and (out >= 0).all()
    out[..., 0].sum().backward()
    assert torch.isfinite(w.grad).all()


# ---------------------------------------------------------------------------------------------- write and read
def test_erase_then_add_known_result():
    memory = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # [1, N=3, W=2]
    w = torch.tensor([[[1.0, 0.0, 0.5]]])  # [1, 1, 3]
    erase = torch.tensor([[[1.0, 0.0]]])  # erase the first column only
    add = torch.tensor([[[10.0, 20.0]]])
    out = erase_and_add(memory, w, erase, add)
    # M(i) (1 - w(i) e) + w(i) a
    expected = torch.tensor([[[0.0 + 10.0, 2.0 + 20.0], [3.0, 4.0], [5.0 * 0.5 + 5.0, 6.0 + 10.0]]])
    torch.testing.assert_close(out, expected)


def test_erase_and_add_two_heads_multiply_erases_and_sum_adds():
    memory = torch.full((1, 2, 1), 8.0)
    w = torch.tensor([[[1.0, 0.0], [0.5, 1.0]]])  # head 0 on slot 0; head 1 half on slot 0, fully on slot 1
    erase = torch.tensor([[[0.5], [1.0]]])
    add = torch.tensor([[[1.0], [2.0]]])
    out = erase_and_add(memory, w, erase, add)
    # slot 0: 8 (1 - 0.5)(1 - 0.5) + 1 + 0.5 * 2 = 4; slot 1: 8 (1 - 0)(1 - 1) + 0 + 2 = 2
    torch.testing.assert_close(out, torch.tensor([[[4.0], [2.0]]]))


def test_read_memory_known_result():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    w = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    torch.testing.assert_close(read_memory(memory, w), torch.tensor([[[0.5, 0.5], [2.0, 2.0]]]))


def test_oneplus_at_least_one():
    x = torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4])
    y = oneplus(x)
    assert (y >= 1).all() and torch.isfinite(y).all()
    torch.testing.assert_close(y[2], torch.tensor(1.0 + torch.log(torch.tensor(2.0)).item()))


# ---------------------------------------------------------------------------------------------- numerical gradients
def ntm_addressing(memory, keys, beta, gate, shift_logits, gamma, w_prev):
    """content_weighting -> interpolate -> circular_shift -> sharpen, as one NTM head does (eqs. 5-9)."""
    w_c = content_weighting(memory, keys, beta)
    w_g = interpolate(w_c, w_prev, gate)
    w_s = circular_shift(w_g, torch.softmax(shift_logits, -1))
    return sharpen(w_s, gamma)


@pytest.mark.parametrize("K", [1, 2])
def test_gradcheck_ntm_addressing_float64(K):
    torch.manual_seed(6)
    B, H, N, W = 2, 2, 6, 3
    d = dict(dtype=torch.float64)
    inputs = (
        torch.randn(B, N, W, **d),  # memory
        torch.randn(B, H, W, **d),  # keys
        torch.rand(B, H, **d) * 3,  # beta
        torch.rand(B, H, **d) * 0.8 + 0.1,  # g
        torch.randn(B, H, 2 * K + 1, **d),  # shift logits
        torch.rand(B, H, **d) * 2 + 1,  # gamma
        torch.softmax(torch.randn(B, H, N, **d), -1),  # w_{t-1}
    )
    inputs = tuple(t.requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(ntm_addressing, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_erase_and_add_float64():
    torch.manual_seed(7)
    d = dict(dtype=torch.float64, requires_grad=True)
    for H in (1, 2):
        args = (
            torch.randn(2, 4, 3, **d),
            torch.rand(2, H, 4, **d),
            torch.rand(2, H, 3, **d),
            torch.randn(2, H, 3, **d),
        )
        assert torch.autograd.gradcheck(erase_and_add, args)


def test_gradcheck_cosine_similarity_float64_with_a_zero_row():
    """The hand-written backward of cosine_similarity against numerical derivatives, a zero memory row included."""
    torch.manual_seed(8)
    memory = torch.randn(2, 5, 3, dtype=torch.float64)
    memory[0, 2] = 0.0
    keys = torch.randn(2, 4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(cosine_similarity, (memory.requires_grad_(), keys.requires_grad_()))
    # gradient with respect to one input only
    assert torch.autograd.gradcheck(lambda m: cosine_similarity(m, keys.detach()), (memory,))


def test_cosine_similarity_first_derivatives_only():
    memory = torch.randn(1, 3, 2, requires_grad=True)
    keys = torch.randn(1, 1, 2, requires_grad=True)
    (g,) = torch.autograd.grad(cosine_similarity(memory, keys).sum(), memory, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_one_head_erase_and_add_equals_the_product_form():
    torch.manual_seed(9)
    memory, w = torch.randn(3, 6, 4), torch.softmax(torch.randn(3, 1, 6), -1)
    erase, add = torch.rand(3, 1, 4), torch.randn(3, 1, 4)
    expected = memory * (1 - w.transpose(1, 2) * erase) + w.transpose(1, 2) * add  # M(i)(1 - w(i) e) + w(i) a
    torch.testing.assert_close(erase_and_add(memory, w, erase, add), expected)
