"""Prune an FSDP2 model with pruneext, then train it: every rank keeps only
its shard of the weights and of the masks, and the masks are exactly those
of pruning the unsharded model in one process.

    torchrun --standalone --nproc-per-node 2 examples/fsdp2_prune.py   # CPU (gloo) or GPUs (NCCL)
"""
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import pruneext as prune


def main():
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    mesh = init_device_mesh("cuda" if use_cuda else "cpu", (dist.get_world_size(),))

    torch.manual_seed(0)  # the same model on every rank before sharding
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 8)
    )
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)

    # One threshold over every weight of the model, found from histograms
    # all-reduced across ranks: no rank gathers the weights.
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    prune.global_unstructured([(m, "weight") for m in linears], prune.L1Unstructured, amount=0.8)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    device = "cuda" if use_cuda else "cpu"
    for step in range(5):
        x = torch.randn(32, 64, device=device)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    # The masks are DTensors sharded like the weights: count this rank's part,
    # then the whole model's sparsity with one small all-reduce.
    zeros = sum(int((m.weight_mask.to_local() == 0).sum()) for m in linears)
    counts = torch.tensor([zeros, sum(m.weight_mask.to_local().numel() for m in linears)], device=device)
    dist.all_reduce(counts)
    # gloo's worker lets go of `counts` a moment after all_reduce returns; if
    # Python drops it first, the worker frees it as the interpreter exits,
    # which aborts the process (pruneext.distributed.settle says why)
    prune.distributed.settle(counts)
    effective = [m.weight_orig.to_local() * m.weight_mask.to_local() for m in linears]
    assert all(torch.all(w[mk.weight_mask.to_local() == 0] == 0) for w, mk in zip(effective, linears))
    if rank == 0:
        print(f"global sparsity {counts[0].item() / counts[1].item():.3f} after training, loss {loss.item():.4f}")
    dist.barrier()  # every rank done before any tears the group down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
