"""The Triton kernels of the radix select (driven by select.py).

A kernel that reads the tensors of the list reads either one tensor, handed
to it directly (TABLE=False: a list of one, or a traced graph), or every
tensor of a group through a device table of them (TABLE=True, table.py):
one launch per pass then covers the whole group, and each block finds its
tensor by a binary search over the table's first blocks. `bits_ptr` and
`prev_ptr` then only give the element types of the table's addresses.
Element offsets are int64 throughout. A small int64 `state` tensor carries
the selection from one launch to the next, so the pipeline needs no host
sync:

    state[0] PREFIX  the key digits resolved so far (finally the threshold T)
    state[1] RANK    rank of the k-th key within the current bucket
                     (finally r: how many keys == T to select)
    state[2] BELOW   keys below the current bucket (finally count(key < T))
    state[3] TOTAL   alive keys in all, after the first pass
    state[4] IN_BIN  keys in the current bucket (finally count(key == T))
    state[5] HIT     1 when the sampled window holds the k-th key (window.py)
    state[6] CAND    keys the window pass appended to the candidate buffer

The radix kernels take a GATE: ALWAYS (0) runs them; ON_HIT (1) and ON_MISS
(2) run them only when state[HIT] is 1, resp. 0, so the candidate passes and
the passes over all entries can both be launched, and the device picks one.

(The kernels spell these indices, and the table's columns, as literals:
Inductor re-emits the source of user kernels, and plain literals need no
module globals.)

With FILTER (among_alive with a default mask) only entries whose mask is 1
count. Each kernel loads that mask itself: torch's mutation analysis of
user kernels would take a pointer handed to a helper function (and feeding
an atomic's mask) for a written one, and clone the mask under torch.compile.
(Table launches run in eager mode only, so their helpers may take pointers.)
"""
import triton
import triton.language as tl

from .keys import magnitude_key

PREFIX, RANK, BELOW, TOTAL, IN_BIN, HIT, CAND = range(7)  # for the host
STATE_SIZE = 7
ALWAYS, ON_HIT, ON_MISS = 0, 1, 2  # GATE


@triton.jit
def block_count(count, BLOCK: tl.constexpr):
    """Blocks of BLOCK entries covering `count`, in int64: an int32 count
    (a tensor of fewer than 2^31 entries) would wrap in tl.cdiv for
    2^31 - BLOCK < count < 2^31, and the stride loops would skip every block.
    tl.cast, not count.to: the GPU JIT passes an integer argument equal to 1
    as the constexpr 1, a Python int with no .to (a 1-entry tensor failed
    to compile on the H200)."""
    return tl.cdiv(tl.cast(count, tl.int64), BLOCK)


@triton.jit
def _row_of(table_ptr, rows, steps, target, COL: tl.constexpr, MAX_STEPS: tl.constexpr = 20):
    """The last row of the table whose column COL is <= target (the column
    ascends; `steps` = ceil(log2(rows)) <= MAX_STEPS halvings). target: a
    scalar or a block of them. (Rows are 11 int64, as table.py writes them.)
    The halvings are unrolled, each skipped past `steps`: a loop of `steps`
    trips cost the per-block kernels an 8-byte stack frame (Triton 3.8)."""
    lo = target * 0
    hi = lo + rows - 1
    for step in tl.static_range(MAX_STEPS):
        if step < steps:
            mid = (lo + hi + 1) // 2
            ok = tl.load(table_ptr + mid * 11 + COL) <= target
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid - 1)
    return lo


@triton.jit
def _table_block(table_ptr, rows, steps, block, bits_ptr, prev_ptr, COL: tl.constexpr, BLOCK: tl.constexpr):
    """Block `block` of a table launch (numbered in column COL): its tensor's
    scores and default mask, the tensor's entry count, the block's offsets
    in it, its tie-count slot, and the tensor's table row."""
    entry = table_ptr + _row_of(table_ptr, rows, steps, block, COL) * 11
    bits = tl.load(entry + 0).to(tl.pointer_type(bits_ptr.dtype.element_ty))
    prev = tl.load(entry + 1).to(tl.pointer_type(prev_ptr.dtype.element_ty))
    local = block - tl.load(entry + COL)
    offs = local * BLOCK + tl.arange(0, BLOCK)
    return bits, prev, tl.load(entry + 3), offs, tl.load(entry + 8) + local, entry


@triton.jit
def _gate_open(state_ptr, GATE: tl.constexpr):
    """Whether a kernel launched with this GATE runs (see the module doc)."""
    hit = tl.load(state_ptr + 5)  # HIT
    return (GATE == 0) | ((hit != 0) == (GATE == 1))


@triton.jit
def histogram_kernel(
    bits_ptr, prev_ptr, n, table_ptr, rows, steps, hist_ptr, hist_base, replica_stride, state_ptr,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr,
    ONE: tl.constexpr, FILTER: tl.constexpr, TABLE: tl.constexpr,
    SHIFT: tl.constexpr, DIGIT_BITS: tl.constexpr, FIRST: tl.constexpr,
    BLOCK: tl.constexpr, REPLICAS: tl.constexpr, GATE: tl.constexpr, COUNTED: tl.constexpr,
):
    """hist[replica][hist_base + d] += number of alive keys of this block
    whose digit (key >> SHIFT) & (2^DIGIT_BITS - 1) is d, among the keys
    whose higher bits equal state[PREFIX] (all keys in the FIRST pass).
    COUNTED: the keys are the candidate buffer, of state[CAND] keys (at most
    n, its capacity).

    Each program strides over the blocks (a grid capped at MAX_PROGRAMS of
    select.py), so a pass that its GATE skips costs few programs. Program p
    counts into replica p % REPLICAS (replica_stride entries apart):
    magnitudes crowd into few bins, and the copies spread those bins' atomics
    over more addresses. select_bucket_kernel adds the replicas up."""
    if _gate_open(state_ptr, GATE):
        if COUNTED:
            count = tl.minimum(tl.load(state_ptr + 6), n)  # CAND
        else:
            count = n
        hist_ptr += hist_base + (tl.program_id(0) % REPLICAS).to(tl.int64) * replica_stride
        if TABLE:
            blocks = tl.load(table_ptr + rows * 11 + 5)  # the closing row: the group's blocks
        else:
            blocks = block_count(count, BLOCK)
        for block in range(tl.program_id(0).to(tl.int64), blocks, tl.num_programs(0)):
            if TABLE:
                bits, prev, limit, offs, _, _ = _table_block(table_ptr, rows, steps, block, bits_ptr, prev_ptr, 5, BLOCK)
            else:
                bits, prev, limit = bits_ptr, prev_ptr, count
                offs = block * BLOCK + tl.arange(0, BLOCK)  # (an int64 block: 64-bit offsets)
            in_range = offs < limit
            key = magnitude_key(tl.load(bits + offs, mask=in_range, other=0), ABS_MASK, INF_BITS, WIDE)
            valid = in_range
            if FILTER:
                valid = valid & (tl.load(prev + offs, mask=in_range, other=0) == ONE)
            if not FIRST:
                valid = valid & ((key >> (SHIFT + DIGIT_BITS)) == tl.load(state_ptr + 0))  # PREFIX
            digit = ((key >> SHIFT) & ((1 << DIGIT_BITS) - 1)).to(tl.int32)
            add_block_histogram(hist_ptr, digit, valid, BLOCK, DIGIT_BITS)


@triton.jit
def add_block_histogram(hist_ptr, digit, valid, BLOCK: tl.constexpr, DIGIT_BITS: tl.constexpr):
    """hist[d] += the valid lanes of the block whose digit is d, with one
    atomic per crowded bin rather than one per lane: the candidate passes
    and tied data crowd a block into a few bins, and their lanes would
    serialise on those addresses. The smallest digit first (zeros, the
    common tie of pruned weights); then, up to PEEL times, the digit of the
    first lane not yet counted (a lane drawn by place: a bin is drawn about
    as often as it is crowded), until a drawn bin holds fewer than CROWD
    lanes. Each of those bins takes one atomic; the lanes left, spread over
    many bins, one each. Returns how many lanes did (for the tests)."""
    PEEL: tl.constexpr = 16
    CROWD: tl.constexpr = 8
    low = tl.min(tl.where(valid, digit, 1 << DIGIT_BITS), axis=0)
    at_low = valid & (digit == low)
    n_low = tl.sum(at_low.to(tl.int64), axis=0)
    tl.atomic_add(hist_ptr + low, n_low, mask=n_low > 0, sem="relaxed")
    rest = valid & (digit != low)
    # (place, digit) in one integer: its min is the first lane left, and its
    # digit; 32 bits where they fit (a GPU's blocks), to spare registers
    if (BLOCK << DIGIT_BITS) < 2**31:
        packed = (tl.arange(0, BLOCK) << DIGIT_BITS) | digit
    else:
        packed = (tl.arange(0, BLOCK).to(tl.int64) << DIGIT_BITS) | digit
    drawn = tl.zeros([], tl.int32)
    n_at = tl.full([], CROWD, tl.int64)
    while (drawn < PEEL) & (n_at >= CROWD):
        first = tl.min(tl.where(rest, packed, BLOCK << DIGIT_BITS), axis=0)  # digit 0 when none is left
        d = (first & ((1 << DIGIT_BITS) - 1)).to(tl.int32)
        at = rest & (digit == d)
        n_at = tl.sum(at.to(tl.int64), axis=0)
        tl.atomic_add(hist_ptr + d, n_at, mask=n_at > 0, sem="relaxed")
        rest = rest & (digit != d)
        drawn += 1
    tl.atomic_add(hist_ptr + digit, tl.full([BLOCK], 1, tl.int64), mask=rest, sem="relaxed")
    return tl.sum(rest.to(tl.int32), axis=0)


@triton.jit
def _bins(hist_ptr, replica_stride, start, lanes, REPLICAS: tl.constexpr):
    """Counts of bins start + lanes, summed over the histogram's replicas."""
    h = tl.load(hist_ptr + start + lanes)
    for r in tl.static_range(1, REPLICAS):
        h += tl.load(hist_ptr + r * replica_stride + start + lanes)
    return h


@triton.jit(do_not_specialize=["k"])
def select_bucket_kernel(
    hist_ptr, hist_base, replica_stride, state_ptr, k,
    DIGIT_BITS: tl.constexpr, FROM_K: tl.constexpr, CHUNK: tl.constexpr, REPLICAS: tl.constexpr,
    GATE: tl.constexpr,
):
    """One program: the bucket of the histogram that holds the rank-th
    smallest key; appends its digit to state[PREFIX] and narrows RANK/BELOW.
    IN_BIN is that bucket's count: after the last pass, the keys equal to
    the threshold T. FROM_K (the first pass over all entries) starts afresh
    from rank k, saturated at the alive total (the host raises on k > total
    where it can sync; a traced graph cannot, and then every alive entry is
    selected); otherwise the pass goes on from the state (the candidates'
    first pass: from the window pass's rank and count below)."""
    if _gate_open(state_ptr, GATE):
        _select_bucket(hist_ptr, hist_base, replica_stride, state_ptr, k, DIGIT_BITS, FROM_K, CHUNK, REPLICAS)


@triton.jit
def _select_bucket(
    hist_ptr, hist_base, replica_stride, state_ptr, k,
    DIGIT_BITS: tl.constexpr, FROM_K: tl.constexpr, CHUNK: tl.constexpr, REPLICAS: tl.constexpr,
):
    NBINS: tl.constexpr = 1 << DIGIT_BITS
    hist_ptr += hist_base
    lanes = tl.arange(0, CHUNK)
    if FROM_K:
        total = tl.zeros([], tl.int64)
        for start in range(0, NBINS, CHUNK):
            total += tl.sum(_bins(hist_ptr, replica_stride, start, lanes, REPLICAS), axis=0)
        tl.store(state_ptr + 3, total)  # TOTAL
        rank = tl.minimum(total, tl.cast(k, tl.int64))  # (k may be the constexpr 1: see block_count)
        prefix = tl.zeros([], tl.int64)
        below_bucket = tl.zeros([], tl.int64)
    else:
        rank = tl.load(state_ptr + 1)  # RANK
        prefix = tl.load(state_ptr + 0)  # PREFIX
        below_bucket = tl.load(state_ptr + 2)  # BELOW
    # First bin whose inclusive cumulative count reaches rank (bin 0 for rank 0).
    bucket = tl.zeros([], tl.int64)
    below = tl.zeros([], tl.int64)
    in_bin = tl.zeros([], tl.int64)
    found = tl.zeros([], tl.int32)
    cum = tl.zeros([], tl.int64)
    for start in range(0, NBINS, CHUNK):
        h = _bins(hist_ptr, replica_stride, start, lanes, REPLICAS)
        inclusive = tl.cumsum(h, axis=0) + cum
        hit = (inclusive >= rank) & (found == 0)
        first = tl.min(tl.where(hit, lanes, CHUNK), axis=0)
        here = first < CHUNK
        bucket = tl.where(here, start + first, bucket)
        below = tl.where(here, tl.sum(tl.where(lanes == first, inclusive - h, 0), axis=0), below)
        in_bin = tl.where(here, tl.sum(tl.where(lanes == first, h, 0), axis=0), in_bin)
        found = found | here.to(tl.int32)
        cum += tl.sum(h, axis=0)
    tl.store(state_ptr + 0, (prefix << DIGIT_BITS) | bucket)
    tl.store(state_ptr + 1, rank - below)
    tl.store(state_ptr + 2, below_bucket + below)
    tl.store(state_ptr + 4, in_bin)  # IN_BIN


@triton.jit
def sample_kernel(
    bits_ptr, prev_ptr, n, table_ptr, rows, steps, count, sample_ptr, sample_base,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr,
    ONE: tl.constexpr, FILTER: tl.constexpr, TABLE: tl.constexpr, BLOCK: tl.constexpr,
):
    """sample[sample_base + i] = the int64 key of entry i * n // count, for
    i < count (of a table: of its tensors end to end, n entries in all); a
    dead entry (FILTER, mask not 1) takes the largest key."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    wanted = i < count
    where = i * n // count
    if TABLE:  # each entry's tensor, by the tensors' first entries
        entry = table_ptr + _row_of(table_ptr, rows, steps, where, 4) * 11
        bits = tl.load(entry + 0).to(tl.pointer_type(bits_ptr.dtype.element_ty))
        prev = tl.load(entry + 1).to(tl.pointer_type(prev_ptr.dtype.element_ty))
        where -= tl.load(entry + 4)
    else:
        bits, prev = bits_ptr, prev_ptr
    key = magnitude_key(tl.load(bits + where, mask=wanted, other=0), ABS_MASK, INF_BITS, WIDE).to(tl.int64)
    if FILTER:
        key = tl.where(tl.load(prev + where, mask=wanted, other=0) == ONE, key, ABS_MASK)
    tl.store(sample_ptr + sample_base + i, key, mask=wanted)


@triton.jit
def window_kernel(
    bits_ptr, prev_ptr, n, table_ptr, rows, steps,
    window_ptr, cand_ptr, capacity, state_ptr, below_ptr, alive_ptr, count_base,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr,
    ONE: tl.constexpr, FILTER: tl.constexpr, TABLE: tl.constexpr, BLOCK: tl.constexpr,
):
    """The one pass over all entries when a sampled window [lo, hi] =
    window[0:2] brackets the k-th key: below[count_base + block] = alive
    keys of the block below lo, alive[...] = alive keys of the block, and
    the alive keys within [lo, hi] appended to cand (state[CAND] counts them
    all, stored or not: the first `capacity` are). No histogram, so no
    atomic per entry: one per block reserves its candidates' places."""
    pid = tl.program_id(0).to(tl.int64)
    if TABLE:
        bits, prev, limit, offs, _, _ = _table_block(table_ptr, rows, steps, pid, bits_ptr, prev_ptr, 6, BLOCK)
    else:
        bits, prev, limit = bits_ptr, prev_ptr, n
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < limit
    key = magnitude_key(tl.load(bits + offs, mask=in_range, other=0), ABS_MASK, INF_BITS, WIDE)
    alive = in_range
    if FILTER:
        alive = alive & (tl.load(prev + offs, mask=in_range, other=0) == ONE)
    lo = tl.load(window_ptr)
    hi = tl.load(window_ptr + 1)
    tl.store(below_ptr + count_base + pid, tl.sum((alive & (key < lo)).to(tl.int64), axis=0))
    tl.store(alive_ptr + count_base + pid, tl.sum(alive.to(tl.int64), axis=0))
    inside = alive & (key >= lo) & (key <= hi)
    n_in = tl.sum(inside.to(tl.int64), axis=0)
    start = tl.atomic_add(state_ptr + 6, n_in, mask=n_in > 0, sem="relaxed")  # CAND
    place = start + tl.cumsum(inside.to(tl.int32), axis=0).to(tl.int64) - 1
    tl.store(cand_ptr + place, key.to(cand_ptr.dtype.element_ty), mask=inside & (place < capacity))


@triton.jit
def count_ties_kernel(
    bits_ptr, prev_ptr, n, table_ptr, rows, steps, state_ptr, counts_ptr, count_base,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr,
    ONE: tl.constexpr, FILTER: tl.constexpr, TABLE: tl.constexpr, BLOCK: tl.constexpr,
):
    """counts[count_base + block] = alive keys of the block equal to T, when
    the cut splits those keys (RANK < IN_BIN). Otherwise every key == T is
    selected (or none, for RANK == 0) whatever its place, the counts stay
    zero, and the scores are not read: with tie-free data, the common case,
    this pass costs a launch of a few programs (they stride over the blocks,
    as in histogram_kernel)."""
    if tl.load(state_ptr + 1) < tl.load(state_ptr + 4):  # RANK < IN_BIN
        if TABLE:
            blocks = tl.load(table_ptr + rows * 11 + 7)  # the closing row: the group's blocks
        else:
            blocks = block_count(n, BLOCK)
        for block in range(tl.program_id(0).to(tl.int64), blocks, tl.num_programs(0)):
            if TABLE:
                bits, prev, limit, offs, slot, _ = _table_block(table_ptr, rows, steps, block, bits_ptr, prev_ptr, 7, BLOCK)
            else:
                bits, prev, limit, slot = bits_ptr, prev_ptr, n, count_base + block
                offs = block * BLOCK + tl.arange(0, BLOCK)
            in_range = offs < limit
            key = magnitude_key(tl.load(bits + offs, mask=in_range, other=0), ABS_MASK, INF_BITS, WIDE)
            alive = in_range
            if FILTER:
                alive = alive & (tl.load(prev + offs, mask=in_range, other=0) == ONE)
            ties = alive & (key == tl.load(state_ptr + 0))  # PREFIX
            tl.store(counts_ptr + slot, tl.sum(ties.to(tl.int64), axis=0))


@triton.jit
def write_mask_kernel(
    bits_ptr, prev_ptr, n, table_ptr, rows, steps, out_ptr, state_ptr, ties_before_ptr, count_base,
    values_ptr, values_out_ptr,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr,
    ONE: tl.constexpr, FILTER: tl.constexpr, TABLE: tl.constexpr, HAS_PREV: tl.constexpr,
    OUT_ONE: tl.constexpr, VALUES: tl.constexpr, VALUE_TYPE: tl.constexpr, BLOCK: tl.constexpr,
):
    """out = 0 where selected, else the previous mask (or OUT_ONE). Selected:
    alive and key < T, or key == T among the first r such keys in flat
    order (ties_before = exclusive scan of count_ties_kernel's counts; all
    zero when every key == T is selected, and then each block's own ranks
    are below r). With VALUES, also values_out = out * values in values'
    dtype VALUE_TYPE (torch's apply_mask product; a default mask then has
    values' width, its bits read as that float type). Both are handed as
    integer views, as the scores are: the interpreter has no bfloat16 loads;
    16-bit products are taken in float32 and rounded, as torch takes them."""
    pid = tl.program_id(0).to(tl.int64)
    if TABLE:
        bits, prev, limit, offs, slot, entry = _table_block(table_ptr, rows, steps, pid, bits_ptr, prev_ptr, 7, BLOCK)
        out = tl.load(entry + 2).to(tl.pointer_type(out_ptr.dtype.element_ty))
        values = tl.load(entry + 9).to(tl.pointer_type(values_ptr.dtype.element_ty))
        values_out = tl.load(entry + 10).to(tl.pointer_type(values_out_ptr.dtype.element_ty))
    else:
        bits, prev, out, limit, slot = bits_ptr, prev_ptr, out_ptr, n, count_base + pid
        values, values_out = values_ptr, values_out_ptr
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < limit
    key = magnitude_key(tl.load(bits + offs, mask=in_range, other=0), ABS_MASK, INF_BITS, WIDE)
    if HAS_PREV:  # (FILTER implies HAS_PREV: the mask is read once)
        keep = tl.load(prev + offs, mask=in_range, other=0)
    else:
        keep = tl.full([BLOCK], OUT_ONE, out_ptr.dtype.element_ty)
    alive = in_range
    if FILTER:
        alive = alive & (keep == ONE)
    threshold = tl.load(state_ptr + 0)  # PREFIX
    ties = alive & (key == threshold)
    tie_rank = tl.load(ties_before_ptr + slot) + tl.cumsum(ties.to(tl.int32), axis=0) - 1
    selected = alive & ((key < threshold) | (ties & (tie_rank < tl.load(state_ptr + 1))))  # RANK
    mask = tl.where(selected, tl.zeros_like(keep), keep)
    tl.store(out + offs, mask, mask=in_range)
    if VALUES:
        v = tl.load(values + offs, mask=in_range, other=0).to(VALUE_TYPE, bitcast=True)
        if HAS_PREV:
            factor = mask.to(VALUE_TYPE, bitcast=True)
        else:  # the mask is 0 or 1
            factor = tl.where(selected, 0.0, 1.0)
        if VALUE_TYPE == tl.float64:
            product = factor.to(tl.float64) * v
        else:
            product = (factor.to(tl.float32) * v.to(tl.float32)).to(VALUE_TYPE)
        tl.store(values_out + offs, product.to(values_out_ptr.dtype.element_ty, bitcast=True), mask=in_range)
