"""Peak extra memory of one torch.nn.utils.prune.global_unstructured call made
by code that never imports pruneext, in a fresh interpreter (a process's
peak RSS only grows). Run by tests/test_patch_torch.py:

    python tests/patch_torch_probe.py {torch,patched} {direct,lightning}

torch: torch's module as it is; patched: pruneext.patch_torch() first.
direct: `prune.global_unstructured(params, pruning_method=L1, amount=0.5)`
with L1 = torch.nn.utils.prune.L1Unstructured captured before any patch, as
Lightning's ModelPruning captures it when it is imported; lightning:
ModelPruning("l1_unstructured", use_global_unstructured=True).apply_pruning
itself, Lightning imported before the patch.

Measured as benchmarks.memory measures: warm up on a small model, build the
model, give freed heap back (malloc_trim), reset the RSS high-water mark
(/proc/self/clear_refs), read VmHWM, call, read it again. Prints one JSON
line: peak_extra_bytes, param_bytes, and whether the reset worked.
"""
import gc
import json
import sys

import torch
import torch.nn.utils.prune as torch_prune

L1_BEFORE_THE_PATCH = torch_prune.L1Unstructured

WIDTH, LAYERS = 1024, 8  # 8 Mi fp32 entries: 32 MiB of parameters


def model(width, layers, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])


def pruner_for(caller):
    if caller == "direct":
        return lambda params: torch_prune.global_unstructured(params, pruning_method=L1_BEFORE_THE_PATCH, amount=0.5)
    try:
        from lightning.pytorch.callbacks import ModelPruning
    except ImportError:
        from pytorch_lightning.callbacks import ModelPruning

    def prune_with_lightning(params):
        callback = ModelPruning(
            "l1_unstructured", parameters_to_prune=params, amount=0.5, use_global_unstructured=True,
            use_lottery_ticket_hypothesis=False, make_pruning_permanent=False,
        )
        callback.apply_pruning(0.5)

    return prune_with_lightning


def main(mode, caller):
    prune = pruner_for(caller)  # Lightning (if any) imported before the patch
    if mode == "patched":
        import pruneext

        pruneext.patch_torch()
    from benchmarks.memory import _reset_high_water_mark, _return_free_heap, _vm_hwm_bytes

    small = model(64, 2)
    prune([(m, "weight") for m in small])  # warm-up: lazy initialisation, thread pools
    del small
    big = model(WIDTH, LAYERS)
    params = [(m, "weight") for m in big]
    param_bytes = sum(m.weight.numel() * m.weight.element_size() for m in big)
    gc.collect()
    _return_free_heap()
    reset = _reset_high_water_mark()
    before = _vm_hwm_bytes()
    prune(params)
    after = _vm_hwm_bytes()
    zeros = sum(int((m.weight_mask == 0).sum()) for m in big)
    print(json.dumps({
        "peak_extra_bytes": after - before,
        "param_bytes": param_bytes,
        "reset": reset,
        "pruned": zeros,
        "entries": param_bytes // 4,
        "hook": type(big[0]._forward_pre_hooks[next(iter(big[0]._forward_pre_hooks))]).__module__,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:3])
