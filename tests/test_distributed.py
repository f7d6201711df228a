"""Sharded pruning across processes (gloo on localhost, 2 and 3 ranks),
each result compared on every rank with the same model pruned in one
process (see dist_scenarios.py). One spawned group per world size runs every
scenario; a collective that hangs fails after its timeout, the whole run
after RUN_TIMEOUT_S."""
import pytest
import torch

import dist_scenarios as sc
from dist_harness import results, run_on_ranks, run_torchrun_under_load

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)

RUN_TIMEOUT_S = 600
SCENARIOS = [
    sc.l1_unstructured_tie_free,
    sc.l1_unstructured_tied,
    sc.global_tie_free_matches_torch,
    sc.global_tied,
    sc.wire_bytes_do_not_grow,
    sc.process_group_lists,
    sc.fault_on_one_rank,
    sc.fsdp2_prune_and_train,
    sc.fsdp2_checkpoint_round_trip,
    sc.parts_that_hold_nothing,
]


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}ranks")
def ranks(request):
    return run_on_ranks(SCENARIOS, request.param, timeout_s=RUN_TIMEOUT_S)


@pytest.mark.parametrize("scenario", SCENARIOS[:4] + [sc.parts_that_hold_nothing], ids=lambda f: f.__name__)
def test_masks_equal_single_process(ranks, scenario):
    assert all(results(ranks, scenario))


def test_only_histograms_on_the_wire(ranks):
    for small, large in results(ranks, sc.wire_bytes_do_not_grow):
        # three fp32 digit histograms (2^12 + 2^11 + 2^8 int64 bins) and a
        # few counts; none of it depends on the 64x larger model
        assert small < 64 * 1024 and large < 64 * 1024
        assert abs(large - small) <= 256


def test_process_group_lists_rank_the_union(ranks):
    messages = results(ranks, sc.process_group_lists)
    assert all("should be smaller than the number of parameters to prune" in m for m in messages)


def test_a_fault_on_one_rank_raises_on_every_rank(ranks):
    for outcomes in results(ranks, sc.fault_on_one_rank):
        assert dict(outcomes) == {"scores": "AssertionError", "amount": "ValueError", "global scores": "AssertionError"}


def test_fsdp2_trains_pruned_and_keeps_torchs_state(ranks):
    for keys in results(ranks, sc.fsdp2_prune_and_train):
        assert keys == ["0.bias_mask", "0.bias_orig", "0.weight_mask", "0.weight_orig",
                        "2.bias_mask", "2.bias_orig", "2.weight_mask", "2.weight_orig"]


def test_fsdp2_masks_survive_a_distributed_checkpoint(ranks):
    assert all(results(ranks, sc.fsdp2_checkpoint_round_trip))


def test_readme_fsdp2_example_runs_under_torchrun():
    """README's command, as written: torchrun --standalone --nproc-per-node 2
    examples/fsdp2_prune.py, three times with the cores busy (see
    pruneext.distributed.settle)."""
    run_torchrun_under_load("examples/fsdp2_prune.py", "global sparsity 0.800", timeout_s=RUN_TIMEOUT_S)
