"""Past 2^31 entries: 64-bit counts and offsets give exact k (slow: run with
`-m slow`; about 9 GB of memory)."""
import pytest
import torch

import pruneext
from pruneext.backends import reference as ref
from pruneext import backends

N = 2**31 + 17
PERIOD = 7  # x[i] = i % PERIOD: every value is tied about 307 million times
CHUNK = PERIOD * 2**23  # a whole number of periods: every chunk starts at value 0


CPU_BACKENDS = [b for b in ("cpu",) if b in backends.available_backends()]


def _period_chunk():
    """i % PERIOD over one chunk, as int64."""
    return torch.arange(CHUNK, dtype=torch.int64) % PERIOD


def periodic_scores():
    """x[i] = i % PERIOD as bfloat16 (which holds 0..6 exactly): 4.3 GB,
    copied chunk by chunk from one chunk's values."""
    x = torch.empty(N, dtype=torch.bfloat16)
    chunk = _period_chunk().to(torch.bfloat16)
    for start in range(0, N, CHUNK):
        stop = min(N, start + CHUNK)
        x[start:stop] = chunk[: stop - start]
    return x


@pytest.fixture(scope="module")
def scores():
    return periodic_scores()


THRESHOLD = 3
PER_VALUE = [(N - v + PERIOD - 1) // PERIOD for v in range(PERIOD)]  # occurrences of value v
TIES_TAKEN = PER_VALUE[THRESHOLD] - 1  # the cut falls past index 2^31
K = sum(PER_VALUE[:THRESHOLD]) + TIES_TAKEN
# the last tie zeroed is occurrence number TIES_TAKEN of THRESHOLD
CUTOFF = THRESHOLD + (TIES_TAKEN - 1) * PERIOD


def check_cut(mask):
    """mask zeroes every value below THRESHOLD and its ties up to CUTOFF.
    The expected zeros of a chunk are one of two patterns (the ties zeroed
    or not) but in the chunk that holds CUTOFF, built from its indices."""
    assert CUTOFF > 2**31
    assert mask.dtype == torch.bfloat16 and mask.numel() == N
    value = _period_chunk()
    ties_zeroed = value <= THRESHOLD
    ties_kept = value < THRESHOLD
    zeros = 0
    for start in range(0, N, CHUNK):
        stop = min(N, start + CHUNK)
        if stop - 1 <= CUTOFF:
            expected_zero = ties_zeroed[: stop - start]
        elif start > CUTOFF:
            expected_zero = ties_kept[: stop - start]
        else:
            idx = torch.arange(start, stop, dtype=torch.int64)
            expected_zero = ties_kept[: stop - start] | ((value[: stop - start] == THRESHOLD) & (idx <= CUTOFF))
        got_zero = mask[start:stop] == 0
        assert torch.equal(got_zero, expected_zero), f"chunk at {start}"
        zeros += int(got_zero.sum())
    assert zeros == K


@pytest.mark.slow
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_exact_k_past_2_31_on_cpu(backend, scores):
    with pruneext.use_backend(backend):
        check_cut(pruneext.ops.l1_mask(scores, K))


@pytest.mark.slow
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_phases_past_2_31_on_cpu(backend, scores):
    # 64-bit bins, per-tensor counts and a tie budget cut past 2^31
    x = scores
    phases = backends._registry[backend].phases
    keys = [int(k) for k in ref.magnitude_key(torch.arange(PERIOD).to(torch.bfloat16))]
    hist = phases.key_histogram([x], [], False, 0, 15, 0)
    assert [int(hist[k]) for k in keys] == PER_VALUE and int(hist.sum()) == N
    assert phases.count_equal([x], [], False, keys[THRESHOLD]).tolist() == [PER_VALUE[THRESHOLD]]
    check_cut(phases.mask_write([x], [], False, keys[THRESHOLD], [TIES_TAKEN])[0])
