"""Exact L1 pruning across processes: DTensor parameters (FSDP2, tensor
parallel) and lists split over ranks (`process_group=`), with only
histograms and counts on the wire.

Every process runs pruneext.select_loop over the part of the list it holds;
the loop's histograms are summed by an all-reduce, so all processes find the
same threshold key T. Ties at T go to the lowest global position: parameter
order, then the flat index of the unsharded tensor (DTensor lists), or rank,
then list order (`process_group` lists). When T's entries are split, the
processes first sum their per-parameter (or per-rank) counts of entries equal
to T, which locates the one parameter (or rank) where the cut falls, and only
inside that parameter exchange per-run counts (a run: the entries of a shard
that are consecutive in the unsharded tensor; one per shard for Shard(0)).

A replicated shard (a Replicate placement) counts once, on coordinate 0 of
each replicated mesh dimension; every replica writes the same mask.

Failures are collective: every process checks its input first, then all of
them agree (one all-reduce of a flag) before any selection collective, so a
bad input on one rank raises on every rank and no rank waits forever.
"""
import contextlib
import functools
import math
import pickle
import time

import torch
import torch.distributed as dist

from . import ops, select_loop
from ._dtensor import DTensor, is_dtensor

if DTensor is not None:
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset


# ------------------------------------------------------------------ collectives


def settle(*tensors, timeout_s=10.0):
    """Return once no process group's worker holds `tensors` any more (or
    after timeout_s). Call it on the tensors of the last collective before a
    process exits; pruneext's own collectives settle theirs.

    A blocking collective returns when its result is ready, but gloo's
    worker thread lets go of the work, and with it of the tensors, a moment
    later (and a barrier keeps the works still in flight when it was called
    until it ends). Where Python drops a tensor first, the worker frees its
    Python object, which takes the GIL: once the interpreter is finalizing,
    that ends the thread inside a destructor and the process aborts
    ('terminate called without an active exception', seen at the end of
    the torchrun examples with the cores busy). The process group outlives
    destroy_process_group when DTensor's caches keep its device mesh, so its
    workers are not joined before the interpreter exits."""
    deadline = time.monotonic() + timeout_s
    for t in tensors:
        if t.device.type != "cpu" or not hasattr(t, "_use_count"):
            continue  # (NCCL's watchdog frees its works on its own schedule)
        # the tensor's own reference is the one left once the work is freed
        while t._use_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.0005)  # (releases the GIL)


class GroupComm:
    """select_loop's collectives over a process group, counting the bytes
    this process sends (the payload of each collective)."""

    def __init__(self, group=None):
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.bytes_sent = 0

    def sum(self, tensor):
        tensor = tensor.contiguous()
        self.bytes_sent += tensor.numel() * tensor.element_size()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        settle(tensor)
        return tensor

    def gather(self, obj):
        self.bytes_sent += len(pickle.dumps(obj))
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out


# Bytes sent by the collectives of the last distributed call in this process
# (a test and the benchmark read it).
last_call_bytes = 0


def _flag_device(group):
    """The device a collective of `group` takes tensors on (NCCL: the GPU)."""
    backend = dist.get_backend(group)
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def agreement(comm):
    """Run the body (this process's checks), then agree with every process
    of comm's group: if any failed, each raises (its own exception, or one of
    the same type naming the rank that failed), so none goes on alone into a
    collective. With comm None, a plain block."""
    if comm is None:
        yield
        return
    error = None
    try:
        yield
    except Exception as e:  # noqa: BLE001  (re-raised below, on every rank)
        error = e
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int64, device=_flag_device(comm.group))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=comm.group)
    settle(flag)
    comm.bytes_sent += flag.element_size()
    if int(flag.item()) == 0:
        return
    reports = comm.gather(None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    rank, (kind, message) = next((r, rep) for r, rep in enumerate(reports) if rep is not None)
    raise _error_type(kind)(f"pruning failed on rank {rank}: {message}")


def _error_type(name):
    known = {e.__name__: e for e in (ValueError, TypeError, AssertionError, RuntimeError, AttributeError, IndexError)}
    return known.get(name, RuntimeError)


# --------------------------------------------------------------- DTensor lists


def _group_of(mesh):
    """The process group spanning `mesh`: its own for a 1-D mesh; the
    default group for an N-D mesh that spans every process."""
    if mesh.ndim == 1:
        return mesh.get_group()
    if mesh.size() != dist.get_world_size():
        raise NotImplementedError("pruneext: an N-D device mesh must span every process")
    return None


class _Shard:
    """This process's shard of one DTensor: its local tensor, whether it
    counts (not a replica), and its runs in the unsharded tensor's flat
    order."""

    def __init__(self, t):
        for p in t.placements:
            if type(p) not in (Shard, Replicate):  # (subclasses such as _StridedShard are not)
                raise NotImplementedError(f"pruneext: DTensor placement {p} is not supported (Shard or Replicate)")
        mesh = t.device_mesh
        coords = mesh.get_coordinate()
        self.local = t.to_local()
        self.owned = coords is not None and all(
            c == 0 for c, p in zip(coords, t.placements) if isinstance(p, Replicate)
        )
        shape, offset = compute_local_shape_and_global_offset(t.shape, mesh, t.placements)
        self.global_shape = tuple(t.shape)
        self.local_shape, self.offset = tuple(shape), tuple(offset)

    def runs(self):
        """(global flat start of each run, run length). Below the innermost
        dim j where the shard is narrower than the tensor, it spans whole
        rows, so each index of the dims before j starts a run."""
        g, s, o = self.global_shape, self.local_shape, self.offset
        if math.prod(s) == 0:
            return [], 0
        strides = _strides(g)
        narrow = [d for d in range(len(g)) if s[d] != g[d]]
        if not narrow:
            return [0], math.prod(s)
        j = narrow[-1]
        starts = torch.zeros(1, dtype=torch.int64)
        for d in range(j):  # row-major over the dims before j
            starts = (starts[:, None] + (torch.arange(s[d]) + o[d]) * strides[d]).reshape(-1)
        return (starts + o[j] * strides[j]).tolist(), s[j] * math.prod(g[j + 1 :])


def _strides(shape):
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return out[::-1]


class DTensorList:
    """A list of DTensor scores (and optional DTensor masks) on one mesh."""

    def __init__(self, scores, masks, comm):
        meshes = {s.device_mesh for s in scores if is_dtensor(s)}
        if len(meshes) > 1:
            raise ValueError("pruneext: all sharded parameters of one call must be on one device mesh")
        self.mesh = scores[0].device_mesh
        for s, m in zip(scores, masks):
            if not is_dtensor(s):
                raise TypeError("pruneext: a list mixes DTensor and plain tensors; shard all of them or none")
            if m is not None and (not is_dtensor(m) or m.placements != s.placements or m.shape != s.shape):
                raise ValueError("pruneext: a mask of a DTensor parameter must be a DTensor of its shape and placements")
        self.shards = [_Shard(s) for s in scores]
        self.dtype = ops.common_dtype(scores)
        self.mask_shards = [None if m is None else m.to_local() for m in masks]
        self.placements = [s.placements for s in scores]
        self.comm = comm

    def phase_inputs(self, among_alive):
        """(owned, every): the owned shards, which the histograms count (a
        replica must not count twice), and every local shard, which gets a
        mask. The scores' dtype fixes the key width where none is owned."""
        every = ops.PhaseInput([sh.local for sh in self.shards], self.mask_shards, among_alive, self.dtype)
        owned = [i for i, sh in enumerate(self.shards) if sh.owned]
        # the owned ones as `every` prepared them (integer scores are copied
        # to float once); only their histograms are read
        counted = ops.PhaseInput(
            [every.scores[i] for i in owned], [every.masks[i] for i in owned], among_alive, every.scores[0].dtype
        )
        return counted, every

    def budgets(self, sel, among_alive):
        """Each local shard's share of sel.ties, in global order."""
        counts = self.every.count_equal(sel.threshold).cpu()
        owned = torch.tensor([sh.owned for sh in self.shards], dtype=torch.int64)
        totals = self.comm.sum((counts * owned).to(_flag_device(self.comm.group))).cpu().tolist()
        budgets, left = [], sel.ties
        cut = None
        for i, total in enumerate(totals):  # parameter order
            if cut is None and left < total:
                cut, cut_left = i, left
            left = max(0, left - total)
        for i in range(len(totals)):
            budgets.append(select_loop.ALL if cut is None or i < cut else 0)
        if cut is not None and cut_left > 0:
            budgets[cut] = self._cut_budget(cut, cut_left, sel, among_alive)
        return budgets

    def _cut_budget(self, i, ties, sel, among_alive):
        """The budget of this process's shard of parameter i, where the
        global cut falls: per-run counts of every shard, in global order."""
        shard = self.shards[i]
        starts, length = shard.runs()
        counts = []
        if starts:
            rows = shard.local.reshape(len(starts), length).unbind(0)
            mask = self.alive_mask(i, sel.threshold)
            mrows = [None] * len(rows) if mask is None else mask.reshape(len(starts), length).unbind(0)
            counts = ops.PhaseInput(list(rows), list(mrows), among_alive, self.dtype).count_equal(sel.threshold).tolist()
        mine = list(zip(starts, counts if shard.owned else [0] * len(starts)))
        runs = sorted({start: count for part in self.comm.gather(mine) for start, count in part if count}.items())
        taken = {}
        for start, count in runs:  # global flat order
            taken[start] = min(count, ties)
            ties -= taken[start]
        return sum(taken.get(start, 0) for start in starts)

    def alive_mask(self, i, threshold):
        """The mask that says which entries of local shard i are alive (for
        counting the ties of threshold key T in its runs), or None."""
        return self.mask_shards[i]

    def to_dtensors(self, local_masks):
        return [
            DTensor.from_local(m, self.mesh, p, run_check=False, shape=sh.global_shape, stride=tuple(_strides(sh.global_shape)))
            for m, p, sh in zip(local_masks, self.placements, self.shards)
        ]


def l1_masks_dtensor(scores, k_of_alive, default_masks=None, among_alive=False):
    """Masks (DTensors, the scores' mesh and placements) of the global L1
    selection over DTensor `scores`, identical to pruning the unsharded
    tensors in one process."""
    masks = list(default_masks or [None] * len(scores))
    comm = comm_for_dtensors(scores)
    with agreement(comm):
        parts = DTensorList(scores, masks, comm)
        counted, parts.every = parts.phase_inputs(among_alive)
    return parts.to_dtensors(select_shards(parts, counted, k_of_alive, among_alive))


class ShardedWeights(DTensorList):
    """DTensor weights (FSDP2, tensor parallel) pruned in place by
    MagnitudePruner, as select_shards sees them: each process prunes its
    local shards with their own masks (`masks`, the pruner's MaskFormat;
    `index`: the weights' positions there; `pruned`: zero entries of each
    local shard's mask); the histograms count the owned shards only."""

    def __init__(self, weights, masks, index, pruned, comm):
        super().__init__(weights, [None] * len(weights), comm)
        self.format, self.index, self.pruned = masks, index, pruned

    def phase_inputs(self, among_alive):
        every = self._input(range(len(self.shards)))
        return self._input([i for i, sh in enumerate(self.shards) if sh.owned]), every

    def _input(self, part):
        weights = [self.shards[i].local for i in part]
        return self.format.selection_input(weights, [self.index[i] for i in part], self.pruned, self.dtype)

    def alive_mask(self, i, threshold):
        return self.format.alive_mask(self.index[i], self.shards[i].local.numel(), threshold)


def prune_weights_in_place(weights, masks, index, pruned, k_of_alive):
    """MagnitudePruner's selection over DTensor `weights` (see
    ShardedWeights): each process prunes its local shards in place, as the
    unsharded weights would be pruned in one process. Returns how many
    entries of each local shard this call pruned (int64)."""
    parts = ShardedWeights(weights, masks, index, pruned, comm_for_dtensors(weights))
    counted, parts.every = parts.phase_inputs(among_alive=True)
    return select_shards(parts, counted, k_of_alive, among_alive=True)


def select_shards(parts, counted, k_of_alive, among_alive):
    """The selection over a DTensorList `parts` whose phase inputs are
    `counted` (the owned shards, which the histograms count) and
    `parts.every` (every local shard, which is written): the threshold from
    the summed histograms, each shard's tie budget in global order, then
    this process's write (what parts.every.mask_write returns)."""
    global last_call_bytes
    comm = parts.comm
    sel = select_loop.find_threshold(_OnDevice(counted, _flag_device(comm.group)), k_of_alive, comm)
    out = select_loop.write(parts.every, sel, lambda sel: parts.budgets(sel, among_alive))
    last_call_bytes = comm.bytes_sent
    return out


def comm_for_dtensors(tensors):
    """The collectives of the mesh of the first DTensor among `tensors`
    (None when there is none)."""
    for t in tensors:
        if is_dtensor(t):
            return GroupComm(_group_of(t.device_mesh))
    return None


# ------------------------------------------------------- process_group lists


def l1_masks_across_ranks(scores, k_of_alive, default_masks, among_alive, group):
    """Masks of the global L1 selection over the union of every rank's list
    (order: rank, then list order), ranked as one list: the scores' dtypes
    are promoted across ranks as torch.cat would."""
    global last_call_bytes
    comm = GroupComm(group)
    device = _flag_device(group)
    with agreement(comm):
        local = ops.common_dtype(scores) if scores else None
    # (no collective inside an agreement: a rank that failed would skip it)
    dtypes = [d for d in comm.gather(local) if d is not None]
    dtype = functools.reduce(torch.promote_types, dtypes) if dtypes else torch.float32
    with agreement(comm):
        inputs = ops.PhaseInput(scores, default_masks, among_alive, dtype)

    def ties(sel):
        counts = inputs.count_equal(sel.threshold).cpu().tolist()
        mine = torch.zeros(comm.world_size, dtype=torch.int64)
        mine[comm.rank] = sum(counts)
        totals = comm.sum(mine.to(device)).cpu().tolist()
        left = max(0, sel.ties - sum(totals[: comm.rank]))
        return select_loop.share_in_order(counts, left)

    sel = select_loop.find_threshold(_OnDevice(inputs, device), k_of_alive, comm)
    out = select_loop.write(inputs, sel, ties)
    last_call_bytes = comm.bytes_sent  # (the write sends nothing)
    return out


class _OnDevice:
    """A PhaseInput's select_loop.KeyCounts with the histograms on the
    collective's device (an empty list has none of its own)."""

    def __init__(self, inputs, device):
        self.inputs, self.device = inputs, device
        self.key_bits = inputs.key_bits

    def key_histogram(self, shift, bits, prefix):
        return self.inputs.key_histogram(shift, bits, prefix).to(self.device)

    def select_threshold(self, k):
        return None  # (across processes the histograms are summed)
