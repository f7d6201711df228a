"""Every L1 selection the API makes, behind one call.

    masks = selection.l1_masks(scores, k_of_alive, default_masks, among_alive,
                               values=..., values_out=..., group=None)
    mask = selection.grouped_mask(scores, group_size, k, default_mask, among_alive,
                                  group_k=None)     (the row and N:M scopes)

Whether the selection runs in one process or across many is decided here,
once, from the inputs: DTensor scores (FSDP2, tensor parallel) are ranked
across their mesh and lists split over ranks (`group`) across the group,
both by pruneext.distributed over the phase ops (pruneext.select_loop); a
plain list is ranked by the fused ops (pruneext.ops), one kernel call.
Methods, global_unstructured and their fallbacks call nothing else.
"""
from . import distributed, ops
from ._dtensor import DTensor, any_dtensor, is_dtensor, local


def l1_masks(scores, k_of_alive, default_masks=None, among_alive=False, values=None, values_out=None, group=None):
    """The masks of the global L1 selection over `scores` (one mask per
    tensor; ties to the lowest list position, then flat index).

    `k_of_alive(n)`: how many to prune of the n entries that may be pruned
    (all of them, or those whose default mask is 1 when among_alive); it
    raises for a bad amount. `values_out` (plain tensors only): the fused
    ops write mask * values there in the same pass. `group`: the process
    group a list split over ranks is ranked across (order: rank, then list
    order)."""
    scores = list(scores)
    masks = list(default_masks) if default_masks is not None else [None] * len(scores)
    if group is not None:
        return distributed.l1_masks_across_ranks(scores, k_of_alive, masks, among_alive, group)
    if any_dtensor(scores + [m for m in masks if m is not None]):
        return distributed.l1_masks_dtensor(scores, k_of_alive, masks, among_alive=among_alive)
    counted = [among_alive and m is not None for m in masks]
    alive = sum(s.numel() for s, c in zip(scores, counted) if not c)
    k = k_of_alive(alive + ops.count_alive([m for m, c in zip(masks, counted) if c]))
    if len(scores) == 1:
        one = dict(values=values[0] if values else None, values_out=values_out[0] if values_out else None)
        return [ops.l1_mask(scores[0], k, default_mask=masks[0], among_alive=among_alive, **one)]
    return ops.l1_mask_global(scores, k, masks, among_alive=among_alive, values=values, values_out=values_out)


def grouped_mask(scores, group_size, k, default_mask=None, among_alive=False, group_k=None):
    """The mask of the select within groups of `group_size` consecutive
    entries (ops.l1_mask_grouped: the row and N:M scopes). A group never
    spans processes here: a DTensor is masked shard by shard, which is exact
    where each shard holds whole groups (every placement Replicate or
    Shard(0) of a tensor of two or more dimensions: rows and the groups
    within them stay whole), and refused otherwise, before anything runs."""
    tensors = [scores, default_mask, group_k]
    if not any_dtensor([t for t in tensors if t is not None]):
        return ops.l1_mask_grouped(scores, group_size, k, default_mask, among_alive, group_k)
    sharded = next(t for t in tensors if is_dtensor(t))
    check_whole_groups(sharded)
    placements = sharded.placements
    part = ops.l1_mask_grouped(local(scores), group_size, k, None if default_mask is None else local(default_mask),
                               among_alive, None if group_k is None else local(group_k))
    return DTensor.from_local(part, sharded.device_mesh, placements, shape=sharded.shape, stride=sharded.stride())


def check_whole_groups(t):
    """Raise ValueError unless each shard of the DTensor `t` holds whole rows
    (every placement Replicate or Shard(0), two or more dimensions), so the
    grouped scopes' groups never cross a shard boundary."""
    placements = t.placements
    if t.dim() < 2 or not all(p.is_replicate() or (p.is_shard() and p.dim == 0) for p in placements):
        raise ValueError(
            f"grouped (row or N:M) pruning of a DTensor needs every placement Replicate or Shard(0) of a "
            f"tensor of 2 or more dimensions, so no group crosses a shard boundary; got {list(placements)} "
            f"on shape {tuple(t.shape)}"
        )
