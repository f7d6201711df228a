"""Did every contender prune the same entries?

For each contender's result (the masks of one pruned state) the harness keeps
a digest per tensor: the number of zeros and the sum of their flat indices.
Verdicts, against the count torch.nn.utils.prune prunes (`Case.expected_pruned`):

  ok              the count is the expected one (and, for a pruneext backend,
                  the digest equals the reference pruneext backend's: pruneext
                  breaks ties by flat index, so every backend must pick the
                  very same entries)
  ties +d         kthvalue only: it pruned d entries more, all tied with the
                  threshold (|x| > kthvalue keeps no tie rule); informative
  MISMATCH ...    anything else: a wrong count, or a pruneext backend that
                  picked different entries than the reference backend
"""
_CHUNK = 1 << 24


def digest(masks):
    """[(zeros, sum of the zeros' flat indices)] per mask, as Python ints
    (computed in chunks, so memory stays small)."""
    out = []
    for mask in masks:
        flat = mask.detach().reshape(-1)
        zeros = index_sum = 0
        for start in range(0, flat.numel(), _CHUNK):
            idx = (flat[start : start + _CHUNK] == 0).nonzero().reshape(-1)
            zeros += idx.numel()
            index_sum += int(idx.sum()) + start * idx.numel()
        out.append((zeros, index_sum))
    return out


def pruned(dig):
    return sum(z for z, _ in dig)


def verdict(contender, dig, expected, reference_digest):
    """(ok: bool, text) for one contender's digest."""
    count = pruned(dig)
    if contender.name == "kthvalue":
        if count == expected:
            return True, "ok"
        if count > expected:
            return True, f"ties +{count - expected}"
        return False, f"MISMATCH {count - expected:+d}"
    if count != expected:
        return False, f"MISMATCH {count - expected:+d} entries"
    if contender.is_pruneext and reference_digest is not None and dig != reference_digest:
        return False, "MISMATCH set != reference"
    return True, "ok"

