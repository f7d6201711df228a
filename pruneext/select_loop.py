"""The selection as a loop over the kernels' phase ops: one driver for one
process and for many.

The fused ops (pruneext.ops.l1_mask_global) run a radix select inside one
kernel call. Its passes only need digit histograms, and histograms of
disjoint parts of a list add up, so the same select over a list spread
across processes is this loop with the histograms summed by an all-reduce:

  1. for each radix digit, most significant first: the histogram of the
     digit over the alive entries whose higher digits equal the prefix
     chosen so far (summed over the processes), and the bucket that holds the
     k-th smallest key; the first histogram's total is the alive count,
     which fixes k for a float amount;
  2. the threshold key T and r, how many entries equal to T are pruned;
  3. when r splits the entries equal to T, each part's share of r in the
     global order (the caller's `ties`), then every part writes its masks.

Bytes on the wire: 2^12 + 2^11 + 2^8 int64 bins for float32 keys (one pass
of 2^15 for 16-bit keys), and what `ties` exchanges: none of it grows with
the tensors. `LocalComm` is the one-process case: no collectives.
"""
import pickle
from typing import List, Optional, Protocol, Sequence

import torch

from .backends.contract import radix_digits

ALL = torch.iinfo(torch.int64).max  # a tie budget that prunes every tie


class LocalComm:
    """The collectives of one process: every sum and gather is the identity.
    Counts the bytes a process would send, as the distributed ones do."""

    world_size = 1
    rank = 0

    def __init__(self):
        self.bytes_sent = 0

    def sum(self, tensor):
        """All-reduce (sum) of an int64 tensor; returns the sum."""
        self.bytes_sent += tensor.numel() * tensor.element_size()
        return tensor

    def gather(self, obj):
        """All-gather of a small picklable object; returns one per rank."""
        self.bytes_sent += len(pickle.dumps(obj))
        return [obj]


class KeyCounts(Protocol):
    """What find_threshold reads of this process's part of the list."""

    key_bits: int  # significant bits of the magnitude key (contract.KEY_BITS)

    def key_histogram(self, shift: int, bits: int, prefix: int) -> torch.Tensor:
        """int64 counts of digit (key >> shift) & (2^bits - 1) over the alive
        entries whose higher digits (key >> (shift + bits)) equal `prefix`."""

    def select_threshold(self, k: int) -> Optional[torch.Tensor]:
        """[T, below, equal, equal per tensor...] of the k-th smallest alive
        key in one call, or None: then the histogram passes run."""


class SelectionInput(KeyCounts, Protocol):
    """What select and write read: the part's tensors, which the tie
    budgets follow one to one, and its two last phases. The kinds there
    are: ops.PhaseInput (scores with default masks, on a backend's phase
    ops), lean_masks' _ZeroedWeights and _BoolMasked (MagnitudePruner's
    weights, pruned in place); distributed._OnDevice is a KeyCounts only."""

    scores: Sequence[torch.Tensor]

    def count_equal(self, threshold: int) -> torch.Tensor:
        """How many alive entries of each tensor have key `threshold`."""

    def mask_write(self, threshold: int, ties: List[int]):
        """Prune the keys below T and each tensor's first ties[i] alive keys
        equal to T; what it returns, select and write return."""


class Selection:
    """What find_threshold settled: k, the threshold key T, how many entries
    equal to T are pruned (`ties`) and how many there are (`equal`); where
    known, how many each tensor holds (`equal_per_tensor`)."""

    def __init__(self, k, threshold, ties, equal, equal_per_tensor=None):
        self.k, self.threshold, self.ties, self.equal = k, threshold, ties, equal
        self.equal_per_tensor = equal_per_tensor

    @property
    def split(self):
        """Whether only some of the entries equal to T are pruned: only then
        does the order among them matter."""
        return 0 < self.ties < self.equal


def find_threshold(phase_input: KeyCounts, k_of_alive, comm, alive=None) -> Selection:
    """Run the radix passes over `phase_input` (this process's part of the
    list) with histograms summed by `comm`.
    `k_of_alive(alive)` gives k from the alive count of the whole list (and
    raises for a bad amount: the same on every process, since the count is).
    In one process, with the alive count known (`alive`), a backend that has
    the fused select's threshold op answers in one call instead (its sampled
    window reads the keys about once, against once per digit here)."""
    if alive is not None and comm.world_size == 1:
        k = int(k_of_alive(alive))
        if k == 0:
            return Selection(0, 0, 0, 0)
        found = phase_input.select_threshold(k)
        if found is not None:
            threshold, below, equal, *per_tensor = (int(v) for v in found.tolist())
            return Selection(k, threshold, k - below, equal, per_tensor)
    prefix, rank, below = 0, None, 0
    k = None
    bucket_count = 0
    for shift, bits in radix_digits(phase_input.key_bits):
        hist = comm.sum(phase_input.key_histogram(shift, bits, prefix)).cpu()
        if k is None:
            k = int(k_of_alive(int(hist.sum())))
            if k == 0:
                return Selection(0, 0, 0, 0)
            rank = k  # 1-based rank of the k-th smallest key
        cum = hist.cumsum(0)
        bucket = int(torch.searchsorted(cum, torch.tensor(rank), right=False))
        bucket_count = int(hist[bucket])
        lower = int(cum[bucket]) - bucket_count
        rank -= lower
        below += lower
        prefix = (prefix << bits) | bucket
    return Selection(k, prefix, k - below, bucket_count)


def select(phase_input: SelectionInput, k_of_alive, comm=None, ties=None, alive=None):
    """Masks of `phase_input` for the global selection. `ties(selection)`
    returns this process's tie budget per tensor when the selection splits
    the entries equal to T; the default (one process) gives them in list
    order, which is the contract's order. `alive`: the alive count, where
    the caller knows it (see find_threshold)."""
    comm = comm or LocalComm()
    return write(phase_input, find_threshold(phase_input, k_of_alive, comm, alive), ties)


def write(phase_input: SelectionInput, sel: Selection, ties=None):
    """The driver's tail, the same for one process and for many: each
    tensor's tie budget for Selection `sel` (every or no entry equal to T
    unless the selection splits them; then `ties(sel)`, where the caller
    knows the global order, else list order), then `phase_input`'s write."""
    n = len(phase_input.scores)
    if not sel.split:
        budgets = [ALL if sel.ties else 0] * n
    elif ties is not None:
        budgets = ties(sel)
    else:
        counts = sel.equal_per_tensor
        if counts is None:
            counts = phase_input.count_equal(sel.threshold).tolist()
        budgets = share_in_order(counts, sel.ties)
    return phase_input.mask_write(sel.threshold, budgets)


def share_in_order(counts, ties):
    """Budgets that give `ties` to the parts in their order: each takes all
    of its entries equal to T until the ties run out."""
    budgets = []
    for count in counts:
        take = min(count, ties)
        # ALL where a part takes every tie: its write needs no tie ranks
        budgets.append(ALL if take == count and take > 0 else take)
        ties -= take
    return budgets
