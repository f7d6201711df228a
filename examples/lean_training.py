"""Train while pruning to 80 % sparsity with pruneext.MagnitudePruner: a
cubic schedule, one global threshold, masks kept as bits, the weights zeroed
in place.

    python examples/lean_training.py
"""
import os
import tempfile

import torch
from torch import nn

import pruneext

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 8))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

# 0 % at step 0 to 80 % at step 300, updated every 50 steps (Zhu & Gupta 2017)
schedule = pruneext.schedules.cubic(0.8, initial=0.0, begin=0, end=300, every=50)
pruner = pruneext.MagnitudePruner(model, schedule, scope="global", mask_format="bits")

x, y = torch.randn(512, 64), torch.randint(0, 8, (512,))
for step in range(400):
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()        # gradients of pruned weights are zeroed as they accumulate
    optimizer.step()
    optimizer.zero_grad()
    pruner.step()          # re-zeroes what weight decay moved; prunes more when the schedule rises

weights = [m.weight for m in model if isinstance(m, nn.Linear)]
zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
print(f"loss {loss.item():.3f}, sparsity {pruner.sparsity:.2f}, zero weights {zeros:.3f}")
out = tempfile.mkdtemp()
torch.save(model.state_dict(), os.path.join(out, "model.pt"))    # standard keys: a sparse model
torch.save(pruner.state_dict(), os.path.join(out, "pruner.pt"))  # the masks as bits, the step
