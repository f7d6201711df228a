"""Export 2:4-pruned nn.Linear weights to PyTorch's semi-structured sparse
tensors, which run on the sparse tensor cores of Ampere and Hopper GPUs.

    pruneext.nm_structured(layer, "weight")          # or MagnitudePruner(..., scope="2:4")
    report = pruneext.to_semi_structured(model)
    print(report)                                    # what was converted, what was not and why

Every layer is checked and converted before the model changes; a layer that
does not qualify (not 2:4, not float16 / bfloat16, not on a CUDA device of
compute capability 8.0 or more, a shape the kernels refuse) stays dense and
is listed with the reason. A layer pruned by hooks (weight_orig /
weight_mask) has its pruning made permanent, as torch.nn.utils.prune.remove
does, before its weight is replaced.
"""
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune as _torch_prune

SPARSE_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class SemiStructuredReport:
    converted: list = field(default_factory=list)  # names of the layers converted
    skipped: dict = field(default_factory=dict)  # name -> why it stayed dense

    def __str__(self):
        lines = [f"{len(self.converted)} nn.Linear converted to 2:4 semi-structured, {len(self.skipped)} left dense"]
        lines += [f"  dense {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _is_2_4(weight):
    """Whether every group of 4 consecutive entries along the last dimension
    has at most 2 non-zeros."""
    return bool(((weight.reshape(-1, 4) != 0).sum(1) <= 2).all())


def refusal(weight):
    """Why `weight` (the effective weight of an nn.Linear) cannot become
    semi-structured sparse, or None."""
    if weight.dim() != 2 or weight.shape[-1] % 4:
        return f"shape {tuple(weight.shape)}: the last dimension must be a multiple of 4"
    if weight.dtype not in SPARSE_DTYPES:
        return f"dtype {weight.dtype}: the sparse tensor cores take float16 or bfloat16 (convert the model first)"
    if weight.device.type != "cuda":
        return f"on {weight.device}: semi-structured sparse weights run on CUDA devices"
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        return "compute capability below 8.0: no sparse tensor cores"
    if not _is_2_4(weight):
        return "not 2:4 sparse: a group of 4 along the last dimension has more than 2 non-zeros"
    return None


def to_semi_structured(model):
    """Replace the weight of every 2:4-sparse nn.Linear of `model` with
    torch.sparse.to_sparse_semi_structured(weight) (requires_grad False: an
    inference model). Returns a SemiStructuredReport. Nothing changes if any
    step before the replacement raises."""
    report = SemiStructuredReport()
    planned = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight.detach()  # pruned by hooks: orig * mask, as the hook computed it
        why = refusal(weight)
        if why is None:
            try:
                sparse = torch.sparse.to_sparse_semi_structured(weight.contiguous())
            except (RuntimeError, ValueError) as e:  # a shape or layout the kernels refuse
                why = f"torch.sparse.to_sparse_semi_structured refused it: {e}"
        if why is not None:
            report.skipped[name or type(module).__name__] = why
            continue
        planned.append((name, module, sparse))
    for name, module, sparse in planned:
        if hasattr(module, "weight_orig"):
            _torch_prune.remove(module, "weight")
        module.weight = nn.Parameter(sparse, requires_grad=False)
        report.converted.append(name or type(module).__name__)
    return report
