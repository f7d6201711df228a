"""Train an FSDP2 model while pruning it to 80 % with pruneext.MagnitudePruner:
every rank prunes its own shards in place and keeps their masks as bits, and
the masks are exactly those of the unsharded model pruned in one process
(the threshold comes from histograms all-reduced across ranks).

    torchrun --standalone --nproc-per-node 2 examples/fsdp2_lean_training.py   # CPU (gloo) or GPUs (NCCL)
"""
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import pruneext


def main():
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = "cuda" if use_cuda else "cpu"
    mesh = init_device_mesh(device, (dist.get_world_size(),))

    torch.manual_seed(0)  # the same model on every rank before sharding
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 8))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)

    # after fully_shard, on every rank: 0 % at step 0 to 80 % at step 30
    schedule = pruneext.schedules.cubic(0.8, initial=0.0, begin=0, end=30, every=10)
    pruner = pruneext.MagnitudePruner(model, schedule)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(40):
        x = torch.randn(32, 64, device=device)
        loss = model(x).square().mean()
        loss.backward()  # FSDP2 reduce-scatters; the pruner masks each rank's gradient shard
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()

    # the weights are DTensors: count this rank's zeros, then sum over ranks
    linears = [m for m in model if isinstance(m, nn.Linear)]
    counts = torch.tensor(
        [sum(int((m.weight.to_local() == 0).sum()) for m in linears), sum(m.weight.to_local().numel() for m in linears)],
        device=device,
    )
    dist.all_reduce(counts)
    # gloo's worker lets go of `counts` a moment after all_reduce returns; if
    # Python drops it first, the worker frees it as the interpreter exits,
    # which aborts the process (pruneext.distributed.settle says why)
    pruneext.distributed.settle(counts)
    if dist.get_rank() == 0:
        print(f"sparsity {pruner.sparsity:.2f}, zero weights {counts[0].item() / counts[1].item():.3f}, loss {loss.item():.4f}")
    dist.barrier()  # every rank done before any tears the group down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
