"""The two mask operations, routed to the backend in force (pruneext.backends).

    l1_mask(scores, k, default_mask=None, among_alive=False,
            values=None, values_out=None) -> Tensor
    l1_mask_global(scores, k, default_masks=None, among_alive=False,
                   values=None, values_out=None) -> list[Tensor]
    l1_mask_grouped(scores, group_size, k, default_mask=None, among_alive=False,
                    group_k=None) -> Tensor   (row and N:M scopes)

Semantics, identical on every backend: select the k entries of smallest
magnitude |scores| (only among entries whose default mask is 1 when
`among_alive`); NaN is the largest magnitude; ties go to the lowest flat
(row-major) index, and in the global op to the earlier tensor of the list.
The result is the default mask (1 where there is none) with the selected
entries set to 0: contiguous, with the default mask's dtype (else the scores'
dtype), on the scores' device. The global op ranks all tensors together
without concatenating them.

With `values_out` (a tensor, or a list for the global op) the same pass also
writes `mask.to(values.dtype) * values` into it, bit for bit torch's
apply_mask product (values: the scores when None; float values; values_out
contiguous, of values' shape, dtype and device, overlapping no input; a
default mask then in values' dtype). csrc/ops.cpp has the full contract.
"""
import functools

import torch

from . import backends
from .backends import contract


# 2^53: the largest magnitude up to which every integer is a float64
_FLOAT64_EXACT = 1 << 53


def _exact_in_float64(t):
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return -_FLOAT64_EXACT <= int(low) and int(high) <= _FLOAT64_EXACT


def kernel_scores(scores, backend):
    """(scores, backend) with integer scores as the float dtype the kernels
    rank them in (backends.INTEGER_SCORE_VIEWS): a temporary copy that holds
    every magnitude exactly, so the masks are the integers' own. int64 scores
    beyond 2^53 in magnitude have no such view: under auto they go to the
    torch backend (logged), an explicitly chosen kernel backend raises."""
    dtype = scores[0].dtype if scores else None
    view = backends.INTEGER_SCORE_VIEWS.get(dtype)
    if backend.score_dtypes is None or view is None:
        return scores, backend
    if dtype == torch.int64 and not all(_exact_in_float64(s) for s in scores):
        reason = "int64 scores of magnitude above 2^53 have no exact float view for the kernels"
        return scores, backends.fall_back(backend, reason)
    return [s.to(view) for s in scores], backend


def _check_tensor(t, what):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")


def _values_args(scores, values, values_out):
    """(values, values_out) as the backends take them: detached, values the
    scores' own where None (before the scores become a kernel view)."""
    if values_out is None:
        if values is not None:
            raise ValueError("values given without values_out (where would they go?)")
        return None, None
    _check_tensor(values_out, "values_out")
    if values is None:
        values = scores
    _check_tensor(values, "values")
    for t, what in ((values, "values"), (values_out, "values_out")):
        # before dispatch: a meta tensor among the arguments would pick the fake
        if t.device != scores.device:
            raise RuntimeError(f"{what} on {t.device} but scores on {scores.device}")
    return values.detach(), values_out.detach()


def l1_mask(scores, k, default_mask=None, among_alive=False, values=None, values_out=None):
    _check_tensor(scores, "scores")
    scores = scores.detach()
    values, values_out = _values_args(scores, values, values_out)
    if default_mask is not None:
        _check_tensor(default_mask, "default_mask")
        default_mask = default_mask.detach()
        if default_mask.shape != scores.shape and default_mask.numel() == scores.numel():
            # torch ranks t.view(-1) into a clone of the mask: the mask's shape wins
            if values_out is not None and values.shape == scores.shape == values_out.shape:
                values, values_out = values.reshape(default_mask.shape), values_out.view(default_mask.shape)
            scores = scores.reshape(default_mask.shape)
    backend = backends.resolve(
        scores.device, scores.dtype, None if default_mask is None else default_mask.dtype
    )
    (ranked,), backend = kernel_scores([scores], backend)
    if values_out is None:  # (a backend's own signature may predate the values)
        mask = backend.l1_mask(ranked, int(k), default_mask, bool(among_alive))
    else:
        mask = backend.l1_mask(ranked, int(k), default_mask, bool(among_alive), values, values_out)
    # without a default mask the result has the scores' dtype, as torch's
    return mask if default_mask is not None or mask.dtype == scores.dtype else mask.to(scores.dtype)


def l1_mask_grouped(scores, group_size, k, default_mask=None, among_alive=False, group_k=None):
    """The select within groups (the row and N:M scopes; csrc/ops.cpp has
    the contract): the flat entries in groups of `group_size` consecutive
    ones, and in each group g the entries of smallest |scores| pruned until
    it has k_g pruned (group_k[g] where given, else k; with among_alive the
    entries the default mask already pruned count, and stay as they are)."""
    _check_tensor(scores, "scores")
    scores = scores.detach()
    if default_mask is not None:
        _check_tensor(default_mask, "default_mask")
        default_mask = default_mask.detach()
        if default_mask.shape != scores.shape and default_mask.numel() == scores.numel():
            scores = scores.reshape(default_mask.shape)  # as l1_mask: the mask's shape wins
    group_size, k = int(group_size), int(k)
    if group_k is not None:
        _check_tensor(group_k, "group_k")
        contract.check_groups(scores, group_size, k, group_k)
        group_k = group_k.detach()
        if group_k.numel() and not group_k.is_meta:
            low, high = (int(v) for v in torch.aminmax(group_k))
            if low < 0 or high > group_size:
                raise ValueError(f"l1_mask_grouped: group_k holds {low if low < 0 else high}, outside [0, {group_size}]")
    backend = backends.resolve(
        scores.device, scores.dtype, None if default_mask is None else default_mask.dtype, grouped=True
    )
    (ranked,), backend = kernel_scores([scores], backend)
    mask = backend.l1_mask_grouped(ranked, group_size, k, default_mask, bool(among_alive), group_k)
    return mask if default_mask is not None or mask.dtype == scores.dtype else mask.to(scores.dtype)


def count_alive(masks):
    """Entries equal to 1 over the list `masks` (one device): what iterative
    and global pruning may still prune. One host sync for the whole list,
    not one per mask. (count_nonzero of the comparison: several times faster
    on CPU than summing it.)"""
    if not masks:
        return 0
    return int(sum(torch.count_nonzero(m == 1) for m in masks))


def common_dtype(tensors):
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))


def _prepare_list(scores, default_masks, op):
    """Detached scores and masks of one device, each list promoted to one
    dtype as torch.cat would (only the odd tensors are copied)."""
    for s in scores:
        _check_tensor(s, "scores")
    scores = [s.detach() for s in scores]
    masks = [None if m is None else m.detach() for m in (default_masks or [None] * len(scores))]
    if len(masks) != len(scores):
        raise ValueError(f"expected {len(scores)} default masks, got {len(masks)}")
    devices = {t.device for t in scores} | {m.device for m in masks if m is not None}
    if len(devices) > 1:
        raise TypeError(f"{op}: all tensors must be on one device, got {sorted(map(str, devices))}")
    # The kernels rank one key type and write one mask type per call.
    score_dtype = common_dtype(scores) if scores else None
    scores = [s if s.dtype == score_dtype else s.to(score_dtype) for s in scores]
    given = [m for m in masks if m is not None]
    mask_dtype = common_dtype(given) if given else None
    masks = [m if m is None or m.dtype == mask_dtype else m.to(mask_dtype) for m in masks]
    return scores, masks, score_dtype, mask_dtype


def _values_list(scores, values, values_out):
    """The global op's values / values_out lists, as _values_args."""
    if values_out is None:
        if values is not None:
            raise ValueError("values given without values_out (where would they go?)")
        return None, None
    values_out = list(values_out)
    values = list(values) if values is not None else [None] * len(values_out)
    if len(values_out) != len(scores) or len(values) != len(scores):
        raise ValueError(
            f"expected one values and one values_out per score tensor ({len(scores)}), "
            f"got {len(values)} and {len(values_out)}"
        )
    pairs = [_values_args(s, v, o) for s, v, o in zip(scores, values, values_out)]
    return [v for v, _ in pairs], [o for _, o in pairs]


def l1_mask_global(scores, k, default_masks=None, among_alive=False, values=None, values_out=None):
    scores = list(scores)
    for s in scores:
        _check_tensor(s, "scores")
    values, values_out = _values_list(scores, values, values_out)
    scores, masks, score_dtype, mask_dtype = _prepare_list(scores, default_masks, "l1_mask_global")
    if not scores:
        return backends.resolve("cpu", torch.float32).l1_mask_global([], int(k), [], bool(among_alive))
    backend = backends.resolve(scores[0].device, score_dtype, mask_dtype)
    ranked, backend = kernel_scores(scores, backend)
    if values_out is None:
        out = backend.l1_mask_global(ranked, int(k), masks, bool(among_alive))
    else:
        out = backend.l1_mask_global(ranked, int(k), masks, bool(among_alive), values, values_out)
    # without a default mask a result has the scores' dtype, as torch's
    return [o if m is not None or o.dtype == score_dtype else o.to(score_dtype) for o, m in zip(out, masks)]


# ------------------------------------------------------------------ phases
# The passes of the same selection as separate ops (schemas and semantics in
# csrc/ops.cpp), for pruneext.select_loop, which runs them itself, e.g. with
# the histograms summed across processes. Their keys are those of the float
# scores: integer scores are ranked as their exact float copy, as above.

# bits of the magnitude key of each score dtype the phases rank
KEY_BITS = contract.KEY_BITS


class PhaseInput:
    """A list prepared once for all phases of one selection: one device, one
    score dtype (integers as their exact float copy), one mask dtype, and
    the backend that runs the phases."""

    def __init__(self, scores, default_masks=None, among_alive=False, dtype=None):
        # dtype: the list's score dtype where this part of it may be empty
        # (every process must run the passes of the same key width)
        scores, masks, score_dtype, mask_dtype = _prepare_list(scores, default_masks, "l1 phases")
        score_dtype = score_dtype or dtype or torch.float32
        if scores and dtype is not None and score_dtype != dtype:
            scores = [s.to(dtype) for s in scores]
            score_dtype = dtype
        device = scores[0].device if scores else torch.device("cpu")
        backend = backends.resolve(device, score_dtype, mask_dtype, phases=True)
        view = backends.INTEGER_SCORE_VIEWS.get(score_dtype, score_dtype)
        if view != score_dtype:
            if score_dtype == torch.int64 and not all(_exact_in_float64(s) for s in scores):
                raise TypeError("int64 importance scores of magnitude above 2^53 cannot be ranked across processes")
            scores = [s.to(view) for s in scores]
        self.scores, self.masks, self.among_alive = scores, masks, bool(among_alive)
        self.key_bits = KEY_BITS[view]
        self.result_dtype = score_dtype  # of a mask written without a default mask
        self.phases = backend.phases

    # An empty part (a rank that holds none of the list) counts nothing;
    # the native ops cannot take an empty list (no tensor names a device).
    def key_histogram(self, shift, bits, prefix):
        if not self.scores:
            return torch.zeros(1 << bits, dtype=torch.int64)
        return self.phases.key_histogram(self.scores, self.masks, self.among_alive, shift, bits, prefix)

    def select_threshold(self, k):
        """[T, below, equal] of the k-th smallest alive key in one call, or
        None where the backend has no such op (select_loop.find_threshold)."""
        if not self.scores or self.phases.select_threshold is None:
            return None
        return self.phases.select_threshold(self.scores, self.masks, self.among_alive, k)

    def count_equal(self, threshold):
        if not self.scores:
            return torch.zeros(0, dtype=torch.int64)
        return self.phases.count_equal(self.scores, self.masks, self.among_alive, threshold)

    def mask_write(self, threshold, ties):
        if not self.scores:
            return []
        out = self.phases.mask_write(self.scores, self.masks, self.among_alive, threshold, list(ties))
        return [o if m is not None or o.dtype == self.result_dtype else o.to(self.result_dtype)
                for o, m in zip(out, self.masks)]
