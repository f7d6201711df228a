"""What the API asks of a tensor about sharding: whether it is a DTensor
(FSDP2, tensor parallel) and the part this process holds. One place, so a
torch without DTensor needs one fallback."""
try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch without DTensor: nothing is ever sharded
    DTensor = None


def is_dtensor(t):
    return DTensor is not None and isinstance(t, DTensor)


def any_dtensor(tensors):
    return any(is_dtensor(t) for t in tensors)


def local(t):
    """This process's part of `t`: a DTensor's local shard, else `t`."""
    return t.to_local() if is_dtensor(t) else t
