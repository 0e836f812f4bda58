"""The SSM plugin's Triton kernels (``llmserve_ssm.kernels.TRITON_KERNELS``) against the torch
reference set (``llmserve_ssm.ops.slots.REFERENCE_KERNELS``), under the Triton interpreter.

Every case runs both sets on copies of the same slot tensors and compares the outputs and the
*whole* slot tensors: the rows of the batch's sequences must match, every other row must be
bit-for-bit unchanged. Slots are handed out in a shuffled order from a tensor with spare
rows, and a sequence without an initial state has NaN in its slot, so reading it (rather
than starting from zeros) shows up as NaN.

Tolerances. fp32: the kernels sum in other orders than torch (and the chunked SSD sums a
chunk's terms as a matrix product), so allow 1e-4 relative plus 1e-5 of the largest
expected value for results that cancel. fp16/bf16: see ``_tol``.
"""

from __future__ import annotations

import inspect
import math
import os

import pytest
import torch
from llmserve_ssm.kernels import TRITON_KERNELS, common, conv1d, selective_scan, ssd
from llmserve_ssm.ops.slots import REFERENCE_KERNELS, SlotKernels

REF, TRI = REFERENCE_KERNELS, TRITON_KERNELS
#: Where the tensors live: the CPU under the interpreter (the normal run). With
#: ``LLMSERVE_SSM_TEST_DEVICE=cuda`` and the interpreter off, the same tests run the
#: compiled kernels on a GPU (outside this directory's conftest: ``pytest --noconftest``).
DEVICE = os.environ.get("LLMSERVE_SSM_TEST_DEVICE", "cpu")
#: Sequence lengths of a prefill batch: around K - 1 = 3 for the conv (K = 4), and
#: shorter and longer than the SSD chunks the cases use.
LENGTHS = [1, 2, 3, 17, 100]
#: "what [dtype]" -> largest max|actual - expected| / max|expected| seen.
MAX_ERRORS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_errors(request):
    """With ``LLMSERVE_SSM_REPORT_ERRORS=1``, print the largest error of each comparison,
    relative to the largest expected value."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if os.environ.get("LLMSERVE_SSM_REPORT_ERRORS") != "1" or reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("\nllmserve-ssm Triton kernels: max abs error / max |expected|")
        for what, error in sorted(MAX_ERRORS.items()):
            reporter.write_line(f"{error:10.3g}  {what}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=DEVICE)


def _rand(g, *shape, dtype=torch.float32):
    return torch.rand(*shape, generator=g).to(dtype=dtype, device=DEVICE)


def _tensor(values, dtype=None):
    return torch.tensor(values, dtype=dtype, device=DEVICE)


def _zeros(*shape):
    return torch.zeros(*shape, device=DEVICE)


def _tol(dtype: torch.dtype, expected: torch.Tensor, terms: float = 1.0) -> tuple[float, float]:
    """(rtol, atol) for a result of ``dtype`` compared with the fp32 reference rounded once.

    fp32: 1e-4 relative, and 1e-5 of the largest value (cancellation).
    fp16/bf16: the conv, Mamba1 and decode kernels work in fp32 and round once, as the
    reference does, so they may differ from it by the one rounding step a 1e-6 difference
    can flip: one unit in the last place (2 eps relative to be safe), and 2 eps of the
    largest value for results near 0. (In bf16 that unit is often used: the interpreter
    truncates fp32 to bf16 where torch and the GPUs round to nearest.)
    The chunked SSD rounds its matrix-product operands (decay-weighted scores, dt * x, the
    chunk's starting state) to the input dtype, as the mamba_ssm kernels do: each of the up
    to chunk-size terms summed into a result carries one rounding (eps / 2 relative, of
    either sign), so the error grows like sqrt(terms) rounding units; callers pass
    ``terms = sqrt(min(chunk, longest sequence))`` and the absolute term allows
    ``2 eps * terms * max|y|`` (8 to 11 eps here; the largest seen is about 1 eps).
    """
    scale = expected.abs().max().item() if expected.numel() else 0.0
    if dtype == torch.float32:
        return 1e-4, 1e-5 * scale
    eps = torch.finfo(dtype).eps
    return 2 * eps, 2 * eps * scale * terms


def _check(what: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    if actual.numel():
        err = (actual.double() - expected.double()).abs().max().item()
        scale = expected.double().abs().max().item() or 1.0
        key = f"{what} [{actual.dtype}]".replace("torch.", "")
        MAX_ERRORS[key] = max(err / scale, MAX_ERRORS.get(key, 0.0))
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")


def _batch(lengths, has, index_dtype, g, spare=3):
    """(cu_seqlens, state_indices, has_initial_state, num_slots): slots shuffled over a tensor
    with ``spare`` extra rows."""
    num_seqs = len(lengths)
    cu = _tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=index_dtype)
    num_slots = num_seqs + spare
    idx = torch.randperm(num_slots, generator=g)[:num_seqs].to(dtype=index_dtype, device=DEVICE)
    return cu, idx, _tensor(has, dtype=torch.bool), num_slots


def _slots(g, num_slots, row_shape, dtype, idx, has):
    """A slot tensor of random rows, NaN in the rows of sequences without initial state."""
    state = _randn(g, num_slots, *row_shape, dtype=dtype)
    if has is not None:
        for i, h in zip(idx.tolist(), has.tolist()):
            if not h:
                state[i] = float("nan")
    return state


def _compare_states(what, tri_state, ref_state, before, idx, dtype, tol_terms=1.0):
    """Touched rows close to the reference (tolerance ``_tol(dtype, ..., tol_terms)``),
    untouched rows bit-for-bit as before."""
    rows = sorted(set(idx.tolist()))
    untouched = [r for r in range(before.shape[0]) if r not in rows]
    assert torch.equal(tri_state[untouched], before[untouched]), f"{what}: untouched rows changed"
    _check(what, tri_state[rows], ref_state[rows], *_tol(dtype, ref_state[rows], tol_terms))


def _has_mask(n):
    return [i % 3 != 1 for i in range(n)]  # mixed True / False


# --------------------------------------------------------------------------------------------
# The set itself.


def test_triton_kernels_is_a_slot_kernel_set_with_the_reference_signatures():
    assert isinstance(TRI, SlotKernels) and TRI.name == "triton"
    for field in ("conv1d_prefill", "conv1d_decode", "selective_scan_prefill",
                  "selective_scan_decode", "ssd_prefill", "ssd_decode"):
        assert inspect.signature(getattr(TRI, field)) == inspect.signature(getattr(REF, field)), \
            field


# --------------------------------------------------------------------------------------------
# Causal conv1d.

CONV_CASES = [
    # (x dtype, state dtype, kernel size, bias, activation, index dtype)
    (torch.float32, torch.float32, 4, True, "silu", torch.int32),
    (torch.float32, torch.float32, 4, False, None, torch.int64),
    (torch.float32, torch.float32, 2, True, "silu", torch.int64),
    (torch.float32, torch.float32, 5, True, "swish", torch.int32),
    (torch.float16, torch.float32, 4, True, "silu", torch.int32),
    (torch.bfloat16, torch.bfloat16, 4, True, "silu", torch.int64),
]


def _conv_id(c):
    return f"{str(c[0])[6:]}-state_{str(c[1])[6:]}-k{c[2]}-bias{int(c[3])}-{c[4]}-{str(c[5])[6:]}"


@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_id)
def test_conv1d_prefill_then_decode(case):
    dtype, state_dtype, k, has_bias, activation, index_dtype = case
    g = _gen(1)
    dim = 40  # not a power of two: a partial channel block
    lengths = [*LENGTHS, k - 1] if k > 2 else LENGTHS
    has = _has_mask(len(lengths))
    cu, idx, has_t, num_slots = _batch(lengths, has, index_dtype, g)
    num_tokens = int(cu[-1])
    # x as the first columns of a wider projection output (token stride != dim).
    x = _randn(g, num_tokens, dim + 24, dtype=dtype)[:, :dim]
    weight = _randn(g, dim, k, dtype=dtype, scale=0.5)
    bias = _randn(g, dim, dtype=dtype) if has_bias else None
    state = _slots(g, num_slots, (k - 1, dim), state_dtype, idx, has_t)
    before = state.clone()
    ref_state, tri_state = state.clone(), state.clone()

    y_ref = REF.conv1d_prefill(x, weight, bias, ref_state, idx, cu, has_t, activation)
    y_tri = TRI.conv1d_prefill(x, weight, bias, tri_state, idx, cu, has_t, activation)
    _check(f"conv1d_prefill y (x {dtype})", y_tri, y_ref, *_tol(dtype, y_ref))
    _compare_states(f"conv1d_prefill state (x {dtype})", tri_state, ref_state, before, idx,
                    state_dtype)

    # Three decode steps from the prefilled state.
    for step in range(3):
        xd = _randn(g, len(lengths), dim, dtype=dtype)
        y_ref = REF.conv1d_decode(xd, weight, bias, ref_state, idx, activation)
        y_tri = TRI.conv1d_decode(xd, weight, bias, tri_state, idx, activation)
        _check(f"conv1d_decode y (x {dtype})", y_tri, y_ref, *_tol(dtype, y_ref))
        _compare_states(f"conv1d_decode state (x {dtype})", tri_state, ref_state, before, idx,
                        state_dtype)


def test_conv1d_decode_with_padded_rows_on_one_scratch_slot():
    """CUDA-graph padding: extra rows all point at one scratch slot. Their outputs are
    irrelevant; the real rows and every other slot must still be right."""
    g = _gen(2)
    dim, k, real, pad = 24, 4, 3, 4
    state = _randn(g, 8, k - 1, dim)
    idx = _tensor([5, 0, 3] + [7] * pad, dtype=torch.int32)
    x = _randn(g, real + pad, dim)
    weight, bias = _randn(g, dim, k), _randn(g, dim)
    ref_state, tri_state = state.clone(), state.clone()
    y_ref = REF.conv1d_decode(x[:real], weight, bias, ref_state, idx[:real])
    y_tri = TRI.conv1d_decode(x, weight, bias, tri_state, idx)
    _check("conv1d_decode padded y", y_tri[:real], y_ref, *_tol(torch.float32, y_ref))
    keep = [0, 1, 2, 3, 4, 5, 6]
    _check("conv1d_decode padded state", tri_state[keep], ref_state[keep],
           *_tol(torch.float32, ref_state))
    assert torch.isfinite(tri_state[7]).all()


# --------------------------------------------------------------------------------------------
# Mamba1 selective scan.

SCAN_CASES = [
    # (dtype, state dtype, d_state, D, z, delta_bias, softplus, index dtype)
    (torch.float32, torch.float32, 16, True, True, True, True, torch.int32),
    (torch.float32, torch.float32, 8, False, False, False, False, torch.int64),
    (torch.float32, torch.float32, 12, True, False, True, True, torch.int64),
    (torch.bfloat16, torch.float32, 16, True, True, True, True, torch.int32),
    (torch.float16, torch.float16, 8, True, True, False, True, torch.int64),
]


def _scan_id(c):
    flags = "".join(n for n, f in zip(("D", "z", "bias", "softplus"), c[3:7]) if f) or "plain"
    return f"{str(c[0])[6:]}-state_{str(c[1])[6:]}-n{c[2]}-{flags}-{str(c[7])[6:]}"


def _scan_params(g, dim, n, dtype, with_d, with_bias):
    A = -(_rand(g, dim, n) + 0.2).to(dtype)  # -exp(A_log): negative
    D = _randn(g, dim, dtype=dtype) if with_d else None
    bias = _randn(g, dim, dtype=dtype, scale=0.5) if with_bias else None
    return A, D, bias


@pytest.mark.parametrize("case", SCAN_CASES, ids=_scan_id)
def test_selective_scan_prefill_then_decode(case):
    dtype, state_dtype, n, with_d, with_z, with_bias, softplus, index_dtype = case
    g = _gen(3)
    dim = 48
    has = _has_mask(len(LENGTHS))
    cu, idx, has_t, num_slots = _batch(LENGTHS, has, index_dtype, g)
    num_tokens = int(cu[-1])
    u = _randn(g, num_tokens, dim, dtype=dtype)
    # Without softplus the step size is used as is: keep it positive and small.
    delta = (_randn(g, num_tokens, dim, dtype=dtype, scale=0.5) if softplus
             else (_rand(g, num_tokens, dim) * 0.2).to(dtype))
    A, D, bias = _scan_params(g, dim, n, dtype, with_d, with_bias)
    BC = _randn(g, num_tokens, 2 * n, dtype=dtype)
    B, C = BC[:, :n], BC[:, n:]  # views into one projection output
    z = _randn(g, num_tokens, dim, dtype=dtype) if with_z else None
    state = _slots(g, num_slots, (dim, n), state_dtype, idx, has_t)
    before = state.clone()
    ref_state, tri_state = state.clone(), state.clone()

    args = (u, delta, A, B, C, D, z, bias, softplus)
    y_ref = REF.selective_scan_prefill(*args, ref_state, idx, cu, has_t)
    y_tri = TRI.selective_scan_prefill(*args, tri_state, idx, cu, has_t)
    _check(f"selective_scan_prefill y (x {dtype})", y_tri, y_ref, *_tol(dtype, y_ref))
    _compare_states(f"selective_scan_prefill state (x {dtype})", tri_state, ref_state, before, idx,
                    state_dtype)

    for step in range(2):
        num_seqs = len(LENGTHS)
        x = _randn(g, num_seqs, dim, dtype=dtype)
        dt = _randn(g, num_seqs, dim, dtype=dtype, scale=0.5) if softplus else \
            (_rand(g, num_seqs, dim) * 0.2).to(dtype)
        Bd, Cd = _randn(g, num_seqs, n, dtype=dtype), _randn(g, num_seqs, n, dtype=dtype)
        zd = _randn(g, num_seqs, dim, dtype=dtype) if with_z else None
        args = (x, dt, A, Bd, Cd, D, zd, bias, softplus)
        y_ref = REF.selective_scan_decode(*args, ref_state, idx)
        y_tri = TRI.selective_scan_decode(*args, tri_state, idx)
        _check(f"selective_scan_decode y (x {dtype})", y_tri, y_ref, *_tol(dtype, y_ref))
        _compare_states(f"selective_scan_decode state (x {dtype})", tri_state, ref_state,
                        before, idx,
                        state_dtype)


def test_selective_scan_decode_with_padded_rows_on_one_scratch_slot():
    g = _gen(4)
    dim, n, real, pad = 32, 16, 2, 3
    state = _randn(g, 6, dim, n)
    idx = _tensor([4, 1] + [5] * pad, dtype=torch.int64)
    rows = real + pad
    x, dt = _randn(g, rows, dim), _randn(g, rows, dim)
    A, D, bias = _scan_params(g, dim, n, torch.float32, True, True)
    B, C, z = _randn(g, rows, n), _randn(g, rows, n), _randn(g, rows, dim)
    ref_state, tri_state = state.clone(), state.clone()
    y_ref = REF.selective_scan_decode(x[:real], dt[:real], A, B[:real], C[:real], D, z[:real],
                                      bias, True, ref_state, idx[:real])
    y_tri = TRI.selective_scan_decode(x, dt, A, B, C, D, z, bias, True, tri_state, idx)
    _check("selective_scan_decode padded y", y_tri[:real], y_ref, *_tol(torch.float32, y_ref))
    _check("selective_scan_decode padded state", tri_state[:5], ref_state[:5],
           *_tol(torch.float32, ref_state))
    assert torch.isfinite(tri_state[5]).all()


# --------------------------------------------------------------------------------------------
# Mamba2 SSD.

SSD_CASES = [
    # (dtype, state dtype, heads, groups, head_dim, d_state, chunk, D, z, dt_bias, softplus,
    #  dt_limit, index dtype)
    # chunk 4: every long sequence spans many chunks, the short ones one partial chunk.
    (torch.float32, torch.float32, 4, 2, 8, 16, 4, "head", True, True, True, None,
     torch.int32),
    # chunk 24 (not a power of two), one group, D per (head, p), no z, dt clamped.
    (torch.float32, torch.float32, 4, 1, 16, 8, 24, "head_p", False, True, True,
     (0.05, 0.6), torch.int64),
    # chunk 256: every sequence shorter than a chunk; no D, raw dt (clamped at 0 by default).
    (torch.float32, torch.float32, 2, 2, 8, 16, 256, None, True, False, False, None,
     torch.int64),
    # chunk 16 with an upper clamp only; G = H (one head per group).
    (torch.float32, torch.float32, 2, 2, 16, 16, 16, "head", True, True, True,
     (0.0, 0.3), torch.int32),
    (torch.float16, torch.float32, 4, 2, 16, 16, 16, "head", True, True, True, None,
     torch.int32),
    (torch.bfloat16, torch.bfloat16, 4, 1, 8, 16, 32, "head_p", True, True, True, (0.0, 2.0),
     torch.int64),
]


def _ssd_id(c):
    limit = "nolimit" if c[11] is None else f"limit{c[11][0]}-{c[11][1]}"
    flags = "".join(n for n, f in zip(("z", "bias", "softplus"), c[8:11]) if f)
    return (f"{str(c[0])[6:]}-state_{str(c[1])[6:]}-h{c[2]}g{c[3]}p{c[4]}n{c[5]}-chunk{c[6]}"
            f"-D{c[7]}-{flags}-{limit}-{str(c[12])[6:]}")


def _ssd_params(g, H, P, dtype, d_kind, with_bias):
    A = -(_rand(g, H) + 0.3).to(dtype)
    D = {"head": lambda: _randn(g, H, dtype=dtype), "head_p": lambda: _randn(g, H, P, dtype=dtype),
         None: lambda: None}[d_kind]()
    bias = _randn(g, H, dtype=dtype, scale=0.5) if with_bias else None
    return A, D, bias


def _ssd_inputs(g, rows, H, G, P, N, dtype, softplus, with_z):
    """x, dt, B, C, z as views into one projection output, as a Mamba2 layer slices it."""
    width = H * P + 2 * G * N + H + (H * P if with_z else 0)
    proj = _randn(g, rows, width, dtype=dtype)
    x = proj[:, :H * P].view(rows, H, P)
    B = proj[:, H * P:H * P + G * N].view(rows, G, N)
    C = proj[:, H * P + G * N:H * P + 2 * G * N].view(rows, G, N)
    dt = proj[:, H * P + 2 * G * N:H * P + 2 * G * N + H]
    if not softplus:
        dt = dt * 0.3  # raw step sizes, negative ones clamped to dt_limit's minimum
    z = proj[:, H * P + 2 * G * N + H:].view(rows, H, P) if with_z else None
    return x, dt, B, C, z


@pytest.mark.parametrize("case", SSD_CASES, ids=_ssd_id)
def test_ssd_prefill_then_decode(case):
    (dtype, state_dtype, H, G, P, N, chunk, d_kind, with_z, with_bias, softplus, dt_limit,
     index_dtype) = case
    g = _gen(5)
    limit = () if dt_limit is None else (dt_limit,)
    has = _has_mask(len(LENGTHS))
    cu, idx, has_t, num_slots = _batch(LENGTHS, has, index_dtype, g)
    num_tokens = int(cu[-1])
    x, dt, B, C, z = _ssd_inputs(g, num_tokens, H, G, P, N, dtype, softplus, with_z)
    A, D, bias = _ssd_params(g, H, P, dtype, d_kind, with_bias)
    state = _slots(g, num_slots, (H, P, N), state_dtype, idx, has_t)
    before = state.clone()
    ref_state, tri_state = state.clone(), state.clone()

    y_ref = REF.ssd_prefill(x, dt, A, B, C, chunk, D, z, bias, softplus, ref_state, idx, cu,
                            has_t, *limit)
    y_tri = TRI.ssd_prefill(x, dt, A, B, C, chunk, D, z, bias, softplus, tri_state, idx, cu,
                            has_t, *limit)
    # Low precision: an output sums up to one chunk of rounded score terms and one rounded
    # starting state; each final state element sums its sequence's chunk states.
    terms = min(chunk, max(LENGTHS))
    _check(f"ssd_prefill y (x {dtype})", y_tri, y_ref, *_tol(dtype, y_ref, terms=math.sqrt(terms)))
    # The chunked scan builds the state from operands rounded to x's dtype: the tolerance
    # is that of the less precise of x's and the state's dtypes.
    tol_dtype = state_dtype if dtype == torch.float32 else dtype
    _compare_states(f"ssd_prefill state (x {dtype})", tri_state, ref_state, before, idx, tol_dtype,
                    tol_terms=math.sqrt(terms))

    for step in range(2):
        num_seqs = len(LENGTHS)
        x, dt, B, C, z = _ssd_inputs(g, num_seqs, H, G, P, N, dtype, softplus, with_z)
        args = (x, dt, A, B, C, D, z, bias, softplus)
        y_ref = REF.ssd_decode(*args, ref_state, idx, *limit)
        y_tri = TRI.ssd_decode(*args, tri_state, idx, *limit)
        # Decode is exact given its state, but starts from the prefill's (see above).
        _check(f"ssd_decode y (x {dtype})", y_tri, y_ref,
               *_tol(dtype, y_ref, terms=math.sqrt(terms)))
        _compare_states(f"ssd_decode state (x {dtype})", tri_state, ref_state, before, idx,
                        tol_dtype,
                        tol_terms=math.sqrt(terms))


def test_ssd_prefill_does_not_depend_on_chunk_size():
    """Same batch at chunk sizes 1, 5 and 64: the Triton results agree with each other as
    closely as with the reference (and a chunk of 1 is the plain recurrence)."""
    g = _gen(6)
    H, G, P, N = 2, 1, 8, 8
    lengths = [9, 1, 30]
    cu, idx, has_t, num_slots = _batch(lengths, [True, False, True], torch.int32, g)
    x, dt, B, C, z = _ssd_inputs(g, int(cu[-1]), H, G, P, N, torch.float32, True, True)
    A, D, bias = _ssd_params(g, H, P, torch.float32, "head", True)
    state = _slots(g, num_slots, (H, P, N), torch.float32, idx, has_t)
    results = []
    for chunk in (1, 5, 64):
        s = state.clone()
        y = TRI.ssd_prefill(x, dt, A, B, C, chunk, D, z, bias, True, s, idx, cu, has_t)
        results.append((y, s[idx.long()]))
    for y, s in results[1:]:
        _check("ssd_prefill chunk-size y", y, results[0][0], *_tol(torch.float32, y))
        _check("ssd_prefill chunk-size state", s, results[0][1], *_tol(torch.float32, s))


def test_ssd_decode_with_padded_rows_on_one_scratch_slot():
    g = _gen(7)
    H, G, P, N, real, pad = 4, 2, 8, 16, 2, 3
    state = _randn(g, 5, H, P, N)
    idx = _tensor([3, 0] + [4] * pad, dtype=torch.int32)
    rows = real + pad
    x, dt, B, C, z = _ssd_inputs(g, rows, H, G, P, N, torch.float32, True, True)
    A, D, bias = _ssd_params(g, H, P, torch.float32, "head", True)
    ref_state, tri_state = state.clone(), state.clone()
    y_ref = REF.ssd_decode(x[:real], dt[:real], A, B[:real], C[:real], D, z[:real], bias, True,
                           ref_state, idx[:real])
    y_tri = TRI.ssd_decode(x, dt, A, B, C, D, z, bias, True, tri_state, idx)
    _check("ssd_decode padded y", y_tri[:real], y_ref, *_tol(torch.float32, y_ref))
    _check("ssd_decode padded state", tri_state[:4], ref_state[:4],
           *_tol(torch.float32, ref_state))
    assert torch.isfinite(tri_state[4]).all()


def test_prefill_without_has_initial_state_reads_slots_as_the_reference_does():
    """``has_initial_state=None``: the conv and Mamba1 references start from zeros, the SSD
    reference from every slot; the Triton wrappers follow each."""
    g = _gen(11)
    lengths = [2, 7]
    cu, idx, _, num_slots = _batch(lengths, [True, True], torch.int64, g)
    T = int(cu[-1])
    dim, k, n, H, G, P, N = 16, 4, 8, 2, 1, 8, 16
    x, w, b = _randn(g, T, dim), _randn(g, dim, k), _randn(g, dim)
    A1, D1 = -(_rand(g, dim, n) + 0.2), _randn(g, dim)
    B1, C1 = _randn(g, T, n), _randn(g, T, n)
    x2, dt2, B2, C2, z2 = _ssd_inputs(g, T, H, G, P, N, torch.float32, True, True)
    A2, D2, bias2 = _ssd_params(g, H, P, torch.float32, "head", True)
    calls = [
        ("conv1d_prefill", (k - 1, dim), lambda f, s: f(x, w, b, s, idx, cu, None)),
        ("selective_scan_prefill", (dim, n),
         lambda f, s: f(x, x, A1, B1, C1, D1, None, None, True, s, idx, cu, None)),
        ("ssd_prefill", (H, P, N),
         lambda f, s: f(x2, dt2, A2, B2, C2, 4, D2, z2, bias2, True, s, idx, cu, None)),
    ]
    for name, row_shape, call in calls:
        state = _randn(g, num_slots, *row_shape)
        ref_state, tri_state = state.clone(), state.clone()
        y_ref = call(getattr(REF, name), ref_state)
        y_tri = call(getattr(TRI, name), tri_state)
        _check(f"{name} has_initial_state=None y", y_tri, y_ref, *_tol(torch.float32, y_ref))
        _compare_states(f"{name} has_initial_state=None state", tri_state, ref_state, state,
                        idx, torch.float32)


# --------------------------------------------------------------------------------------------
# No host synchronisation, argument checks.


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: records launches instead of running them."""

    def __init__(self):
        self.launches = 0

    def __getitem__(self, grid):
        assert all(isinstance(n, int) for n in grid), f"grid {grid} is not host integers"

        def launch(*args, **kwargs):
            self.launches += 1
        return launch


def _forbid_host_reads(monkeypatch):
    def forbidden(self, *args, **kwargs):
        raise AssertionError("a wrapper read a device tensor on the host")
    for name in ("item", "tolist", "__int__", "__float__", "__bool__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)


def test_wrappers_never_read_tensors_on_the_host(monkeypatch):
    """What CUDA-graph capture needs of the decode wrappers (the prefill ones too): no
    ``.item()`` / ``.tolist()`` / ``int(t)`` / ``bool(t)``; grids from host integers."""
    recorders = {}
    for module in (conv1d, selective_scan, ssd):
        for name, obj in list(vars(module).items()):
            if name.endswith("_kernel") and hasattr(obj, "arg_names"):
                recorders[name] = _Recorder()
                monkeypatch.setattr(module, name, recorders[name])
    g = _gen(8)
    cu = _tensor([0, 3, 10], dtype=torch.int32)
    idx = _tensor([1, 0], dtype=torch.int64)
    has = _tensor([True, False])
    dim, k, n, H, G, P, N = 16, 4, 8, 2, 1, 8, 16
    x, w, b = _randn(g, 10, dim), _randn(g, dim, k), _randn(g, dim)
    conv_state = _randn(g, 3, k - 1, dim)
    A1, D1 = -_rand(g, dim, n), _randn(g, dim)
    ssm1 = _randn(g, 3, dim, n)
    x2, dt2, B2, C2, z2 = _ssd_inputs(g, 10, H, G, P, N, torch.float32, True, True)
    xd2, dtd2, Bd2, Cd2, zd2 = _ssd_inputs(g, 2, H, G, P, N, torch.float32, True, True)
    A2, D2, bias2 = _ssd_params(g, H, P, torch.float32, "head", True)
    ssm2 = _randn(g, 3, H, P, N)
    Bs, Cs = _randn(g, 10, n), _randn(g, 10, n)

    _forbid_host_reads(monkeypatch)
    TRI.conv1d_decode(x[:2], w, b, conv_state, idx)
    TRI.selective_scan_decode(x[:2], x[:2], A1, Bs[:2], Cs[:2], D1, x[:2], D1, True, ssm1, idx)
    TRI.ssd_decode(xd2, dtd2, A2, Bd2, Cd2, D2, zd2, bias2, True, ssm2, idx, (0.0, 1.0))
    TRI.conv1d_prefill(x, w, b, conv_state, idx, cu, has)
    TRI.selective_scan_prefill(x, x, A1, Bs, Cs, D1, x, D1, True, ssm1, idx, cu, has)
    TRI.ssd_prefill(x2, dt2, A2, B2, C2, 4, D2, z2, bias2, True, ssm2, idx, cu, has)
    assert {name: r.launches for name, r in recorders.items()} == {
        name: 1 for name in recorders}


def _conv_args():
    g = _gen(9)
    return {"x": _randn(g, 10, 16), "weight": _randn(g, 16, 4), "bias": _randn(g, 16),
                "conv_state": _randn(g, 3, 3, 16), "state_indices": _tensor([0, 2]),
                "cu_seqlens": _tensor([0, 4, 10]), "has_initial_state": _tensor([1, 0])}


@pytest.mark.parametrize("change,match", [
    ({"bias": _zeros(15)}, "bias"),
    ({"weight": _zeros(16, 4, 1)}, "weight"),
    ({"conv_state": _zeros(3, 4, 16)}, "conv_state"),
    ({"conv_state": _zeros(3, 16, 3).transpose(1, 2)}, "conv_state"),
    ({"state_indices": _tensor([0, 1, 2])}, "state_indices"),
    ({"state_indices": _tensor([0.0, 1.0])}, "state_indices"),
    ({"has_initial_state": _tensor([True])}, "has_initial_state"),
    ({"activation": "relu"}, "activation"),
])
def test_conv1d_prefill_rejects_bad_arguments(change, match):
    with pytest.raises(ValueError, match=match):
        TRI.conv1d_prefill(**{**_conv_args(), **change})


def test_decode_and_ssd_wrappers_name_the_bad_argument():
    g = _gen(10)
    H, G, P, N = 4, 2, 8, 16
    x, dt, B, C, z = _ssd_inputs(g, 2, H, G, P, N, torch.float32, True, True)
    A, D, bias = _ssd_params(g, H, P, torch.float32, "head", True)
    state, idx = _randn(g, 3, H, P, N), _tensor([0, 1])
    with pytest.raises(ValueError, match="ssm_state"):
        TRI.ssd_decode(x, dt, A, B, C, D, z, bias, True, state[:, :, :4], idx)
    with pytest.raises(ValueError, match="D must"):
        TRI.ssd_decode(x, dt, A, B, C, _zeros(H, P + 1), z, bias, True, state, idx)
    with pytest.raises(ValueError, match="n_groups"):
        TRI.ssd_decode(x, dt, A, _randn(g, 2, 3, N), _randn(g, 2, 3, N), D, z, bias, True,
                       state, idx)
    with pytest.raises(ValueError, match="chunk_size"):
        TRI.ssd_prefill(x, dt, A, B, C, 0, D, z, bias, True, state, idx,
                        _tensor([0, 1, 2]), _tensor([False, False]))
    with pytest.raises(ValueError, match="dt_bias"):
        TRI.ssd_decode(x, dt, A, B, C, D, z, bias[:2], True, state, idx)
    dim, n = 16, 8
    xs = _randn(g, 2, dim)
    with pytest.raises(ValueError, match="A must"):
        TRI.selective_scan_decode(xs, xs, _randn(g, dim + 1, n), _randn(g, 2, n),
                                  _randn(g, 2, n), None, None, None, False,
                                  _randn(g, 3, dim, n), idx)
    with pytest.raises(ValueError, match="B must"):
        TRI.selective_scan_decode(xs, xs, _randn(g, dim, n), _randn(g, 2, n + 1),
                                  _randn(g, 2, n), None, None, None, False,
                                  _randn(g, 3, dim, n), idx)
    with pytest.raises(ValueError, match="conv_state"):
        TRI.conv1d_decode(xs, _randn(g, dim, 4), None, _randn(g, 3, 2, dim), idx)


def test_interpreter_is_on():
    # On the CPU, these numbers mean something only if the kernels really ran under the
    # interpreter; on a GPU, only if they did not.
    assert common.interpreting() == (DEVICE == "cpu")
