"""Past 2^31 entries: 64-bit counts and offsets give exact k (slow: run with
`-m slow`; about 9 GB of memory)."""
import pytest
import torch

import pruneext
from pruneext import backends

N = 2**31 + 17
PERIOD = 7  # x[i] = i % PERIOD: every value is tied about 307 million times
CHUNK = 2**26


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in ("cpu",) if b in backends.available_backends()])
def test_exact_k_past_2_31_on_cpu(backend):
    # bfloat16 holds the integers 0..6 exactly; 4.3 GB of scores.
    x = torch.empty(N, dtype=torch.bfloat16)
    for start in range(0, N, CHUNK):
        stop = min(N, start + CHUNK)
        x[start:stop] = (torch.arange(start, stop, dtype=torch.int64) % PERIOD).to(torch.bfloat16)
    threshold = 3
    per_value = [(N - v + PERIOD - 1) // PERIOD for v in range(PERIOD)]  # occurrences of value v
    ties_taken = per_value[threshold] - 1  # the cut falls past index 2^31
    k = sum(per_value[:threshold]) + ties_taken
    # the last tie zeroed is occurrence number ties_taken of `threshold`
    cutoff = threshold + (ties_taken - 1) * PERIOD
    assert cutoff > 2**31

    with pruneext.use_backend(backend):
        mask = pruneext.ops.l1_mask(x, k)
    assert mask.dtype == torch.bfloat16 and mask.numel() == N
    zeros = 0
    for start in range(0, N, CHUNK):
        stop = min(N, start + CHUNK)
        idx = torch.arange(start, stop, dtype=torch.int64)
        value = idx % PERIOD
        expected_zero = (value < threshold) | ((value == threshold) & (idx <= cutoff))
        got_zero = mask[start:stop] == 0
        assert torch.equal(got_zero, expected_zero), f"chunk at {start}"
        zeros += int(got_zero.sum())
    assert zeros == k
