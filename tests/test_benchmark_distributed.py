"""benchmarks/distributed.py end to end on a tiny FSDP2 model (2 gloo
processes): both contenders give the same masks on every rank, and the bytes
each rank reports are what the two protocols send."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import distributed as bench  # noqa: E402

pytest.importorskip("torch.distributed.fsdp")


def test_row_counts_follow_torch_chunk():
    for rows, world in ((2048, 2), (2048, 3), (5, 3), (2, 3), (7, 4)):
        expected = [c.shape[0] for c in torch.empty(rows).chunk(world)]
        expected += [0] * (world - len(expected))
        assert bench._row_counts(rows, world) == expected


def test_distinct_weights_have_distinct_magnitudes():
    w = bench.distinct_weights(2**24 + 1001, seed=1)  # past 2^24: integers would collide in float32
    assert torch.isfinite(w).all()
    assert torch.unique(w.abs()).numel() == w.numel()
    assert (w < 0).any() and (w > 0).any()


def test_two_ranks_same_masks_and_bytes():
    ranks = bench.run(2, 12 * 64 * 64, reps=1, timeout_s=300)
    width = 64
    for rank, res in enumerate(ranks):
        assert res["masks_equal"], f"rank {rank}: the contenders' masks differ"
        assert (res["layers"], res["width"]) == (12, width)
        ours = res["contenders"]["pruneext"]["bytes_sent"][0]
        assert 0 < ours < 100_000  # histograms and counts only
    shard = width // 2 * width
    gathered = ranks[1]["contenders"]["gather-torch-scatter"]["bytes_sent"][0]
    scattered = ranks[0]["contenders"]["gather-torch-scatter"]["bytes_sent"][0]
    assert gathered == 12 * shard * 4  # rank 1's float32 shards to rank 0
    assert scattered == 12 * shard  # rank 1's uint8 mask shards from rank 0
    table = bench.format_table(bench.rows(ranks))
    assert "gather-torch-scatter" in table and "pruneext" in table
