"""Groups of the list's tensors, each launched as one: the device table.

A pass over the list launches each kernel once per group, not once per
tensor (a LLaMA-shaped list has a few hundred tensors; the launches, not the
bytes, would bound the call). A group is the tensors that share every
constexpr of the kernels (the kind of default mask and of output; the score
dtype is the list's). Its kernels read the tensors through a table in device
memory, one row of 11 int64 per tensor, in list order:

    0 BITS   address of the scores (their integer view)
    1 PREV   address of the default mask (the scores' when there is none)
    2 OUT    address of the output mask
    3 N      entries of the tensor
    4..7     the tensor's first entry, and its first block of the histogram,
             window and mask passes, counted over the group (each pass has
             its own block size)
    8 SLOT   its first tie count, counted over the whole list (the scan of
             the tie counts runs in list order across the groups)
    9 VALUES address of the values the mask multiplies (the scores' when
             the call has none; see the mask ops' values_out)
   10 VOUT   address of their masked output (the output mask's when none)

and a closing row whose columns 4..7 hold the group's totals. Building it
is one loop over the tensors and one small host-to-device copy (no sync).
A group of one tensor, and every tensor of a traced graph (fake tensors
have no addresses; a table would also hide its writes from torch.compile's
mutation analysis), is handed to the kernels directly instead.
"""
import torch
import triton

WIDTH = 11
ENTRY, HIST, WINDOW, MASK = 4, 5, 6, 7  # the columns of first entries / blocks


class Group:
    """Tensors of the list (select._Job) launched as one."""

    counted = False  # all entries are read (see select._Candidates)

    def __init__(self, jobs, blocks, device, direct):
        """blocks: {column: block size} of the passes."""
        self.jobs = jobs
        first = jobs[0]
        self.n = sum(job.n for job in jobs)
        self.bits, self.prev, self.out = first.bits, first.key_prev, first.out
        # the masked values (select._Job; other jobs have none)
        self.values = getattr(first, "values", None)
        self.values_out = getattr(first, "values_out", None)
        self.has_prev, self.out_one = first.prev is not None, first.out_one
        self.count_base = first.count_base
        self.blocks = {col: sum(triton.cdiv(job.n, size) for job in jobs) for col, size in blocks.items()}
        self.direct = direct or len(jobs) == 1
        if self.direct:
            assert len(jobs) == 1
            self.table, self.rows, self.steps = self.bits, 1, 0  # (the table argument is not read)
            return
        rows, begins = [], dict.fromkeys((ENTRY, *blocks), 0)
        for job in jobs:
            values, values_out = getattr(job, "values", None), getattr(job, "values_out", None)
            rows.append([
                job.bits.data_ptr(), job.key_prev.data_ptr(), job.out.data_ptr(), job.n,
                *(begins[col] for col in (ENTRY, HIST, WINDOW, MASK)), job.count_base,
                (job.bits if values is None else values).data_ptr(),
                (job.out if values_out is None else values_out).data_ptr(),
            ])
            begins[ENTRY] += job.n
            for col, size in blocks.items():
                begins[col] += triton.cdiv(job.n, size)
        rows.append([0, 0, 0, 0, *(begins[col] for col in (ENTRY, HIST, WINDOW, MASK)), 0, 0, 0])
        # From pageable memory a non-blocking copy is staged at once: no sync.
        self.table = torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)
        self.rows, self.steps = len(jobs), (len(jobs) - 1).bit_length()

    def args(self):
        """The arguments every kernel that reads the tensors begins with."""
        return self.bits, self.prev, self.n, self.table, self.rows, self.steps

    def key_consts(self, plan):
        return dict(self.jobs[0].key_consts(plan), TABLE=not self.direct)

    def block_count(self, col, size):
        return self.blocks[col]  # (counted in blocks of `size` when built)


MAX_ROWS = 1 << 20  # kernels._row_of halves at most 20 times


def groups(jobs, blocks, device, tracing):
    """The groups of `jobs` (non-empty tensors), each in list order. A
    tensor with a 64-bit default mask on 16/32-bit scores, or the reverse
    (a rare pair), is launched alone: the table variant of its mask kernel
    takes an 8-byte stack frame (ptxas, sm_90)."""
    kinds, alone = {}, []
    for job in jobs:
        if tracing or (job.prev is not None and (job.prev.element_size() == 8) != (job.bits.element_size() == 8)):
            alone.append(Group([job], blocks, device, direct=True))
        else:
            kinds.setdefault(job.kind, []).append(job)
    tables = [members[i:i + MAX_ROWS] for members in kinds.values() for i in range(0, len(members), MAX_ROWS)]
    return [Group(members, blocks, device, direct=False) for members in tables] + alone
