"""The masks of pruneext.MagnitudePruner, in its two formats, and how the
selection loop (pruneext.select_loop) sees weights pruned in place.

`bits` keeps one bit per entry (uint8, ceil(numel / 8) bytes: bit e & 7 of
byte e >> 3) and runs on the bit-mask ops (l1_bits_prune, l1_bits_apply);
`bool` keeps one bool per entry and runs on the phase ops with the masks as
default masks, as torch.nn.utils.prune's iterative pruning would.

The pruner keeps every pruned weight at +0 (it re-zeroes them before each
selection), so with bits the histograms need no mask at all: an entry that
is pruned is a zero of key 0, and the alive histogram is the histogram of
every entry less the pruned count in the bin of key 0. Nothing reads the bits
until the write, which prunes only alive entries.
"""
import math
from typing import List, Protocol, Sequence, runtime_checkable

import torch

from . import backends, ops
from .backends.contract import KEY_BITS, pack_bits, unpack_bits


@runtime_checkable
class MaskFormat(Protocol):
    """How MagnitudePruner keeps its masks: one mask per weight, in a format
    of its own. Adding a format is a class with these members and a line in
    _FORMATS below (pruneext/backends/README.md). `j` indexes the weights
    the masks were made for; `index` maps a list of tensors to those."""

    name: str  # the mask_format it is chosen by, and is saved under
    masks: List[torch.Tensor]  # the state: saved and loaded as they are

    def __init__(self, weights: Sequence[torch.Tensor]) -> None:
        """Masks that keep every entry of `weights`."""

    def apply(self, tensors: Sequence[torch.Tensor], index: Sequence[int]) -> None:
        """Zero, in place, what masks[index[i]] prunes in tensors[i]."""

    def selection_input(self, weights, index, pruned, dtype):
        """The weights (pruned in place, with masks[index]) as the
        selection loop's input (select_loop.SelectionInput), whose
        mask_write prunes in place and returns the count each weight lost;
        `pruned`: the entries each mask prunes already; `dtype`: the list's."""

    def alive_mask(self, j: int, numel: int, threshold: int):
        """Mask j's alive entries as a bool tensor, where counting the
        entries of key `threshold` needs it; else None."""

    def as_bool(self, j: int, shape) -> torch.Tensor:
        """Mask j as a new bool tensor of `shape` (True: kept)."""

    def assign(self, j: int, keep: torch.Tensor) -> None:
        """Make mask j `keep` (bool, the weight's shape; within mask j: the
        grouped scopes' masks only grow). The weights are zeroed by apply."""

    def pruned_count(self, j: int, numel: int) -> int:
        """How many of mask j's `numel` entries are pruned."""

    def check_state(self, j: int, mask: torch.Tensor, weight: torch.Tensor) -> None:
        """Raise ValueError where a loaded `mask` cannot be mask j."""


def _bit_ops(tensors):
    return backends.resolve(tensors[0].device, tensors[0].dtype, phases=True, bits=True)


class BitMasks:
    """Packed masks, one uint8 tensor per weight."""

    name = "bits"

    def __init__(self, weights):
        # pad bits set too: the ops ignore them, and a byte of 8 alive
        # entries is all ones either way
        self.masks = [torch.full(((w.numel() + 7) // 8,), 255, dtype=torch.uint8, device=w.device) for w in weights]

    def apply(self, tensors, index):
        """Zero, in place, what masks[index[i]] prunes in tensors[i] (one
        dtype and device)."""
        if tensors:
            _bit_ops(tensors).bits.apply(tensors, [self.masks[j] for j in index])

    def selection_input(self, weights, index, pruned, dtype):
        return _ZeroedWeights(weights, [self.masks[j] for j in index], [pruned[j] for j in index], dtype)

    def alive_mask(self, j, numel, threshold):
        """Which entries are alive, where counting entries of key T needs
        it: only T = 0 (a pruned entry is a +0, below any T > 0)."""
        return unpack_bits(self.masks[j], numel) if threshold == 0 else None

    def as_bool(self, j, shape):
        return unpack_bits(self.masks[j], math.prod(shape)).reshape(shape)

    def assign(self, j, keep):
        packed = pack_bits(keep.reshape(-1))
        self.masks[j][: packed.numel()].copy_(packed)

    def pruned_count(self, j, numel):
        return numel - int(unpack_bits(self.masks[j], numel).sum())

    def check_state(self, j, mask, weight):
        if mask.dtype != torch.uint8 or mask.shape != self.masks[j].shape:
            raise ValueError(
                f"bit mask {j}: expected uint8 of shape {tuple(self.masks[j].shape)}, "
                f"got {mask.dtype} of shape {tuple(mask.shape)}"
            )


class BoolMasks:
    """One bool per entry, the parameter's shape."""

    name = "bool"

    def __init__(self, weights):
        self.masks = [torch.ones_like(w, dtype=torch.bool) for w in weights]

    def apply(self, tensors, index):
        for t, j in zip(tensors, index):
            t.masked_fill_(self.masks[j].logical_not(), 0)

    def selection_input(self, weights, index, pruned, dtype):
        return _BoolMasked(weights, [self.masks[j] for j in index], dtype)

    def alive_mask(self, j, numel, threshold):
        return self.masks[j]

    def as_bool(self, j, shape):
        return self.masks[j].clone()

    def assign(self, j, keep):
        self.masks[j].copy_(keep.reshape(self.masks[j].shape))

    def pruned_count(self, j, numel):
        return numel - int(self.masks[j].sum())

    def check_state(self, j, mask, weight):
        if mask.dtype != torch.bool or mask.shape != self.masks[j].shape:
            raise ValueError(
                f"bool mask {j}: expected bool of shape {tuple(self.masks[j].shape)}, "
                f"got {mask.dtype} of shape {tuple(mask.shape)}"
            )


# Every mask format, by name: MagnitudePruner(mask_format=...) takes these.
_FORMATS = {format.name: format for format in (BitMasks, BoolMasks)}
FORMATS = tuple(_FORMATS)


def new_masks(mask_format, weights) -> MaskFormat:
    return _FORMATS[mask_format](weights)


class _ZeroedWeights:
    """Weights of one dtype and device, pruned in place (pruned entries are
    +0) with bit masks, as select_loop.SelectionInput: its mask write prunes
    in place and returns how many entries each weight lost."""

    # (dtype: the weights'; a process's part of a sharded list may be empty,
    # and then counts nothing and writes nothing)
    def __init__(self, weights, masks, pruned, dtype):
        self.scores, self.masks = weights, masks
        self.pruned = torch.tensor(pruned, dtype=torch.int64)
        self.key_bits = KEY_BITS[dtype]
        if weights:
            backend = _bit_ops(weights)
            self.phases, self.bits = backend.phases, backend.bits
        self.none = [None] * len(weights)

    def key_histogram(self, shift, bits, prefix):
        if not self.scores:
            return torch.zeros(1 << bits, dtype=torch.int64)
        hist = self.phases.key_histogram(self.scores, self.none, False, shift, bits, prefix)
        if prefix == 0:  # the bucket that holds key 0: the pruned entries
            hist[0] -= int(self.pruned.sum())
        return hist

    def select_threshold(self, k):
        """The fused select over every entry for k plus the pruned count: the
        pruned entries are the smallest keys (0), so the (pruned + k)-th key
        of all is the k-th of the alive; its counts less the pruned entries
        they include (below T when T > 0, else equal to it)."""
        if not self.scores or self.phases.select_threshold is None:
            return None
        p = int(self.pruned.sum())
        found = self.phases.select_threshold(self.scores, self.none, False, k + p).cpu()
        # (k + p among all splits the keys == T exactly when k among the alive does)
        split = 0 < k + p - int(found[1]) < int(found[2])
        if int(found[0]) > 0:
            found[1] -= p
        else:
            found[2] -= p
            if split:  # (else the per-tensor counts are 0)
                found[3:] -= self.pruned
        return found

    def count_equal(self, threshold):
        if not self.scores:
            return torch.zeros(0, dtype=torch.int64)
        counts = self.phases.count_equal(self.scores, self.none, False, threshold).cpu()
        return counts - self.pruned if threshold == 0 else counts

    def mask_write(self, threshold, ties):
        if not self.scores:
            return torch.zeros(0, dtype=torch.int64)
        return self.bits.prune(self.scores, self.masks, threshold, list(ties)).cpu()


class _BoolMasked:
    """Weights with bool masks as select_loop.SelectionInput: the phase ops
    among the alive entries; the write zeroes the newly pruned weights and
    updates the masks in place."""

    def __init__(self, weights, masks, dtype):
        self.inputs = ops.PhaseInput(weights, masks, among_alive=True, dtype=dtype)
        self.scores, self.masks = weights, masks
        self.key_bits = self.inputs.key_bits

    def key_histogram(self, shift, bits, prefix):
        return self.inputs.key_histogram(shift, bits, prefix)

    def select_threshold(self, k):
        return self.inputs.select_threshold(k)

    def count_equal(self, threshold):
        return self.inputs.count_equal(threshold).cpu()

    def mask_write(self, threshold, ties):
        counts = []
        for w, m, new in zip(self.scores, self.masks, self.inputs.mask_write(threshold, ties)):
            counts.append(m.sum() - new.sum())  # (what this write pruned: new is within m)
            m.copy_(new)
            w.masked_fill_(new.logical_not(), 0)
        # one host sync for the list, where the caller reads the counts
        return torch.stack(counts).cpu() if counts else torch.zeros(0, dtype=torch.int64)
