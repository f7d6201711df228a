"""Past 2^31 entries: 64-bit counts and offsets give exact k (slow: run with
`-m slow`; about 9 GB of memory)."""
import pytest
import torch

import pruneext
from pruneext import _reference as ref
from pruneext import backends

N = 2**31 + 17
PERIOD = 7  # x[i] = i % PERIOD: every value is tied about 307 million times
CHUNK = 2**26


CPU_BACKENDS = [b for b in ("cpu",) if b in backends.available_backends()]


def periodic_scores():
    """x[i] = i % PERIOD as bfloat16 (which holds 0..6 exactly): 4.3 GB."""
    x = torch.empty(N, dtype=torch.bfloat16)
    for start in range(0, N, CHUNK):
        stop = min(N, start + CHUNK)
        x[start:stop] = (torch.arange(start, stop, dtype=torch.int64) % PERIOD).to(torch.bfloat16)
    return x


THRESHOLD = 3
PER_VALUE = [(N - v + PERIOD - 1) // PERIOD for v in range(PERIOD)]  # occurrences of value v
TIES_TAKEN = PER_VALUE[THRESHOLD] - 1  # the cut falls past index 2^31
K = sum(PER_VALUE[:THRESHOLD]) + TIES_TAKEN
# the last tie zeroed is occurrence number TIES_TAKEN of THRESHOLD
CUTOFF = THRESHOLD + (TIES_TAKEN - 1) * PERIOD


def check_cut(mask):
    """mask zeroes every value below THRESHOLD and its ties up to CUTOFF."""
    assert CUTOFF > 2**31
    assert mask.dtype == torch.bfloat16 and mask.numel() == N
    zeros = 0
    for start in range(0, N, CHUNK):
        stop = min(N, start + CHUNK)
        idx = torch.arange(start, stop, dtype=torch.int64)
        value = idx % PERIOD
        expected_zero = (value < THRESHOLD) | ((value == THRESHOLD) & (idx <= CUTOFF))
        got_zero = mask[start:stop] == 0
        assert torch.equal(got_zero, expected_zero), f"chunk at {start}"
        zeros += int(got_zero.sum())
    assert zeros == K


@pytest.mark.slow
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_exact_k_past_2_31_on_cpu(backend):
    x = periodic_scores()
    with pruneext.use_backend(backend):
        check_cut(pruneext.ops.l1_mask(x, K))


@pytest.mark.slow
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_phases_past_2_31_on_cpu(backend):
    # 64-bit bins, per-tensor counts and a tie budget cut past 2^31
    x = periodic_scores()
    phases = backends._registry[backend].phases
    keys = [int(k) for k in ref.magnitude_key(torch.arange(PERIOD).to(torch.bfloat16))]
    hist = phases.key_histogram([x], [], False, 0, 15, 0)
    assert [int(hist[k]) for k in keys] == PER_VALUE and int(hist.sum()) == N
    assert phases.count_equal([x], [], False, keys[THRESHOLD]).tolist() == [PER_VALUE[THRESHOLD]]
    check_cut(phases.mask_write([x], [], False, keys[THRESHOLD], [TIES_TAKEN])[0])
