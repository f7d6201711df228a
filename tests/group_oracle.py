"""The numpy oracle of the grouped select (row and N:M scopes), shared by
the op tests and the API tests: written from the contract in csrc/ops.cpp,
with nothing of pruneext."""
import numpy as np


def oracle(x, group_size, k, mask=None, among_alive=False, group_k=None):
    """numpy: in each group, k_g minus the entries the mask already pruned of
    its alive entries, smallest |x| first (NaN last), ties by index."""
    flat = x.detach().cpu().reshape(-1).double().numpy()
    out = np.ones(flat.size) if mask is None else mask.detach().cpu().reshape(-1).double().numpy().copy()
    alive_all = np.ones(flat.size, bool) if not (among_alive and mask is not None) else out == 1
    for g in range(flat.size // group_size):
        idx = np.arange(g * group_size, (g + 1) * group_size)
        alive = alive_all[idx]
        budget = (k if group_k is None else int(group_k[g])) - int((~alive).sum())
        magnitude = np.abs(flat[idx])
        order = np.lexsort((idx, np.nan_to_num(magnitude, nan=0.0), np.isnan(magnitude)))
        order = [i for i in order if alive[i]][: max(budget, 0)]
        out[idx[order]] = 0
    return out.reshape(tuple(x.shape))
