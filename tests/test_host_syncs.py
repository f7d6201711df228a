"""Host reads of device tensors per public call (issue 22): each `int()`,
`.item()` of a tensor is a host sync on a GPU, where a call that makes one
per parameter stalls the device once per parameter. Counted here on CPU,
where the same Python runs: a call over 16 parameters must read the host no
more often than over 4. (The kernels' own syncs happen in C++ and are not
counted; these are the Python layer's.)"""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import pruneext


class ScalarReads(TorchDispatchMode):
    """Counts aten._local_scalar_dense: what int(t), float(t) and t.item()
    of a tensor come down to."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def layers(n):
    torch.manual_seed(0)
    return nn.ModuleList(nn.Linear(32, 32) for _ in range(n))


def reads(call):
    with ScalarReads() as mode:
        call()
    return mode.count


def test_the_counter_sees_an_int_of_a_tensor():
    with ScalarReads() as mode:
        int(torch.ones(3).sum())
    assert mode.count == 1


def test_iterative_global_unstructured_reads_the_host_once_for_any_number_of_parameters():
    def iterative(model):
        params = [(m, "weight") for m in model]
        pruneext.global_unstructured(params, pruning_method=pruneext.L1Unstructured, amount=0.3)
        return lambda: pruneext.global_unstructured(params, pruning_method=pruneext.L1Unstructured, amount=0.3)

    few, many = reads(iterative(layers(4))), reads(iterative(layers(16)))
    assert few == many, (few, many)


@pytest.mark.parametrize("mask_format", ["bits", "bool"])
def test_a_pruner_update_reads_the_host_as_often_for_any_number_of_weights(mask_format):
    def update(model):
        pruner = pruneext.MagnitudePruner(model, lambda step: 0.25 * min(step, 2), mask_format=mask_format)
        pruner.step()  # 0 -> 25 %
        return pruner.step  # 25 -> 50 %: an iterative update

    few, many = reads(update(layers(4))), reads(update(layers(16)))
    assert few == many, (few, many)
