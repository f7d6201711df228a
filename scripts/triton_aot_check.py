"""Compile every Triton kernel specialisation pruneext launches for a GPU
target, without a GPU, and report each one's registers, spills and shared
memory.

The interpreter tests (TRITON_INTERPRET=1) run the kernels' arithmetic on
CPU tensors, but never through Triton's GPU compiler: a kernel can pass them
and still fail to compile, or spill, on the H100. This script drives the
real host code (pruneext/backends/triton/select.py) on small CPU tensors with the
launches recorded instead of run, then compiles each distinct launch for the
target with triton.compile, which needs no driver. Each launch is compiled
as the GPU JIT specialises it for its argument values (jit_specialization:
an integer equal to 1 becomes the constexpr 1, integers and pointers
divisible by 16 are marked so; the interpreter does neither, and a kernel
that read `n.to(...)` failed to compile on the H200 for a 1-entry tensor
only), and once more with its int32 arguments widened to int64, as a tensor
of more than 2^31 entries launches them. The shapes recorded include
1-entry tensors, k = 1 and sizes divisible by 16, as the tests use them.

    python scripts/triton_aot_check.py [--arch 90] [--quick] [--all] [--ones] [--jobs N]

It records the fused ops (select.py), the phase ops (phases.py), the
grouped select (groups.py) and the bit-mask ops (bits.py), one mask dtype per distinct launch (mask_kinds), and
compiles of each kernel variant (its constexprs) the launches that together
specialise every argument in each way recorded (to_compile); --all compiles
every recorded specialisation instead (about 1.5x the compiles); --quick
takes float32 and bfloat16 scores only (CI's second Triton version); --ones
also compiles each variant with each integer argument the JIT may
specialise set to 1 in turn (shapes the sweep does not make); the compiles
run on --jobs processes (default: every core).

Exits 1 if a specialisation fails to compile, or if a kernel that runs a
program per block of entries spills past an 8-byte stack frame
(select_bucket_kernel runs one program over the histogram, and Triton 3.6
gives it an 8-byte stack frame).
"""
import argparse
import dataclasses
import itertools
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # real JITFunctions, not interpreted ones

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.compiler.compiler import make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from pruneext.backends.triton import bits, groups, phases, select  # noqa: E402
from pruneext.backends.contract import KEY_PLANS, MASK_BITS, VALUE_DTYPES  # noqa: E402

# An 8-byte stack frame without local memory is reported, not fatal: Triton
# 3.6 (the GPU machine's) gives the histogram kernel's aggregation loop one,
# and both versions give one to several per-block kernels as the JIT
# specialises them (an output pointer divisible by 16: vector stores)
SMALL_FRAME = 8
ONE_PROGRAM = {"select_bucket_kernel"}  # spills there cost nothing measurable
FLOAT8_ONES = {one for view, one in MASK_BITS.values() if view == torch.uint8 and one != 1}  # a mask's ONE
DIVISIBLE = ["tt.divisibility", 16]  # the attribute of a "D" argument (BaseBackend.parse_attr)


def known_spill(launch):
    """A spill reported, not fatal, as it is known: window_kernel over 16-bit
    scores with a float8 default mask that filters, its size divisible by 16
    (Triton 3.8's ptxas holds it at 64 registers and spills 20 bytes; seen
    once this check compiled the JIT's divisibility, so there all along).
    Rare masks, one pass; a follow-up may reshape the kernel."""
    consts = {launch.kernel.arg_names[p[0]]: v for p, v in launch.constexprs.items()}
    return launch.name == "window_kernel" and consts.get("ONE") in FLOAT8_ONES and consts.get("FILTER")


QUICK_SCORES = (torch.float32, torch.bfloat16)


@dataclasses.dataclass
class Launch:
    """One specialisation as the GPU JIT compiles it: the signature by
    argument name (types, "constexpr" for a declared constexpr or a
    specialised 1), the constexprs and attributes by argument path (as
    ASTSource takes them), and the integer values seen launching it."""

    kernel: object
    signature: dict
    constexprs: dict
    attrs: dict
    num_warps: int
    values: set = dataclasses.field(default_factory=set)

    @property
    def name(self):
        return self.kernel.fn.__name__

    def specialised(self):
        """{argument: 1} of the runtime arguments the JIT made constexprs."""
        declared = {p.name for p in self.kernel.params if p.is_constexpr}
        names = self.kernel.arg_names
        return {names[path[0]]: v for path, v in self.constexprs.items() if names[path[0]] not in declared}

    def label(self):
        names, ones = self.kernel.arg_names, self.specialised()
        args = []
        for i, name in enumerate(names):
            kind = self.signature[name]
            if name in ones:
                args.append(f"{name}={ones[name]}")
            elif kind != "constexpr":
                args.append(kind + ("/16" if DIVISIBLE in self.attrs.get((i,), []) else ""))
        consts = {names[p[0]]: v for p, v in self.constexprs.items() if names[p[0]] not in ones}
        return f"{self.name}({', '.join(args)}) {dict(consts, num_warps=self.num_warps)}"


_BINDERS = {}


def jit_specialization(kernel, args, meta, backend):
    """(signature, constexprs, attrs) that Triton's JIT compiles this launch
    with, by Triton's own binder (JITFunction.run: create_function_from_signature,
    then _pack_args; the same in 3.6 and 3.8): an integer argument equal to 1
    becomes the constexpr 1, and integers and pointers divisible by 16 get
    tt.divisibility, except where the kernel says do_not_specialize."""
    if kernel not in _BINDERS:
        _BINDERS[kernel] = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = _BINDERS[kernel](*args, **meta)
    _, signature, constexprs, attrs = kernel._pack_args(backend, meta, bound, specialization, options)
    return signature, constexprs, attrs


def record_launches(score_dtypes, arch=90):
    """Every distinct specialisation the ops launch over each score dtype
    and each kind of default mask, for a list and for one tensor, as Launch."""
    backend = make_backend(GPUTarget("cuda", arch, 32))
    launches = {}

    def recorder(num_warps):
        def record(kernel, grid, *args, tracing=False, **meta):
            signature, constexprs, attrs = jit_specialization(kernel, args, dict(meta, num_warps=num_warps), backend)
            key = (kernel, tuple(signature.items()), repr(sorted(constexprs.items())), repr(sorted(attrs.items())),
                   num_warps)
            launch = launches.setdefault(key, Launch(kernel, signature, constexprs, attrs, num_warps))
            launch.values.update((n, a) for n, a in zip(kernel.arg_names, args) if isinstance(a, int))

        return record

    record_phases(recorder(phases.NUM_WARPS), score_dtypes)
    record_groups(recorder(groups.NUM_WARPS), score_dtypes)
    record_bits(recorder(bits.NUM_WARPS), score_dtypes)
    select._launch, real = recorder(select.NUM_WARPS), select._launch
    window_min = select.WINDOW_MIN
    try:
        for dtype, select.WINDOW_MIN in itertools.product(score_dtypes, (window_min, 0)):  # both paths
            cases = [(None, False)] + [(m, a) for m in mask_kinds() for a in (False, True)]
            for mask_dtype, among_alive in cases:
                for scores, ks in score_lists(dtype, shapes=among_alive or mask_dtype is None):
                    masks = [None if mask_dtype is None else torch.ones_like(s, dtype=mask_dtype) for s in scores]
                    for k in ks:
                        record_l1_masks(scores, k, masks, among_alive, dtype, mask_dtype)
    finally:
        select._launch, select.WINDOW_MIN = real, window_min
    return list(launches.values())


def score_lists(dtype, shapes):
    """(scores, the k to select among them) of the fused ops' sweep: a list
    (its tensors through a table, table.py) and one tensor (handed
    directly), of 300 and 35 entries, k = 0 and 100; with `shapes` also the
    sizes and k the JIT specialises differently: 256 entries (divisible by
    16), 1 (the constexpr 1), k = 1, a tensor that starts 4 bytes into its
    storage (a pointer not divisible by 16), and a list of 3 (a table's
    binary search of 2 steps; launched alone, where a 64-bit mask meets
    32-bit scores, the third's first tie-count slot is 2). (`shapes` is
    asked for the masks that filter and for none: the kinds of mask that do
    not filter add no code that reads a size.)"""
    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float32).to(dtype)

    lists = [([randn(300), randn(7, 5)], (0, 100)), ([randn(300)], (0, 100))]
    if shapes:
        unaligned = randn(36)[1:]
        lists += [
            ([randn(300), unaligned], (1,)),
            ([randn(300), randn(7, 5), randn(40)], (1,)),  # a table of 3 (steps = 2), or 3 launched alone
            ([unaligned], (1,)),
            ([randn(16, 16)], (1, 100)),
            ([randn(1)], (1,)),
            ([randn(1), randn(256)], (1, 100)),
        ]
    return lists


def record_l1_masks(scores, k, masks, among_alive, dtype, mask_dtype):
    """The launches of one l1_masks call, and of the same call writing the
    masked values (values_out): values of the scores' dtype, and of another;
    with a default mask only of its dtype (the kernels read its bits as
    values')."""
    try:
        select.l1_masks(scores, k, masks, among_alive)
        for value_dtype in {dtype, torch.float32} if mask_dtype is None else {mask_dtype}:
            if value_dtype not in VALUE_DTYPES:
                continue
            values = [s.to(value_dtype) for s in scores]
            select.l1_masks(scores, k, masks, among_alive,
                            values=values, values_out=[torch.empty_like(v) for v in values])
    except RuntimeError as e:  # nothing ran, so the device-side alive count is 0
        if "exceeds" not in str(e):
            raise


def mask_kinds():
    """One mask dtype per distinct launch it causes: the kernels see a mask
    as its integer view and the bits of 1 as an integer argument, typed by
    Triton as i64, i32, or specialised when it is 1 (bool, uint8 and int8
    launch the same kernels, and so on)."""
    kinds = {}
    for dtype, (view, one) in MASK_BITS.items():
        kinds.setdefault((view, 1 if one == 1 else arg_type(one)), dtype)
    return list(kinds.values())


def record_phases(record, score_dtypes):
    """The phase ops' launches (pruneext/backends/triton/phases.py, sharded pruning)
    over each score dtype and kind of default mask, with and without a cut
    inside a tensor's ties, on 300 entries, 256 and 1, for a key (the +inf
    one: int64 for float64 scores) and the prefix of its higher digits."""
    phases._launch, real = record, phases._launch
    try:
        for dtype in score_dtypes:
            plan = KEY_PLANS[dtype]
            bits, key = plan.digits[-1][1], plan.inf_bits
            for mask_dtype, among_alive in [(None, False)] + [(m, a) for m in mask_kinds() for a in (False, True)]:
                for n in (300, 256, 1):
                    scores = [torch.randn(n).to(dtype)]
                    masks = [None if mask_dtype is None else torch.ones_like(scores[0], dtype=mask_dtype)]
                    phases.key_histogram(scores, masks, among_alive, 0, bits, key >> bits)
                    phases.count_equal(scores, masks, among_alive, key)
                    for ties in (0, 1, 7):  # none of a tensor's ties, or a cut inside them
                        phases.mask_write(scores, masks, among_alive, key, [ties])
    finally:
        phases._launch = real


def record_groups(record, score_dtypes):
    """The grouped select's launches (pruneext/backends/triton/groups.py,
    the row and N:M scopes) over each score dtype and kind of default mask:
    groups of 1 (the constexpr 1), 4 and 32 entries (the small kernel) and
    of 33 and 48 (the row kernel), one group (the constexpr 1) and several,
    k = 0, 1 and 2, with and without per-group budgets."""
    def launch(kernel, grid, *args, tracing=False, interpret=False, **meta):
        record(kernel, grid, *args, **meta)

    groups._launch, real = launch, groups._launch
    try:
        for dtype in score_dtypes:
            # every kind of mask that filters; one that does not (it only
            # passes through), and per-group budgets, with the float32 mask
            kinds = [(None, False), (torch.float32, False)] + [(m, True) for m in mask_kinds()]
            for mask_dtype, among_alive in kinds:
                budgets = mask_dtype in (None, torch.float32)
                for size, count in ((1, 16), (4, 1), (4, 80), (32, 3), (33, 1), (48, 5)):
                    scores = torch.randn(count, size).to(dtype)
                    mask = None if mask_dtype is None else torch.ones_like(scores, dtype=mask_dtype)
                    cases = [(0, None), (1, None), (min(2, size), None)]
                    cases += [(0, torch.ones(count, dtype=torch.int64))] if budgets else []
                    for k, group_k in cases:
                        groups.l1_mask_grouped(scores, size, k, mask, among_alive, group_k)
    finally:
        groups._launch = real


def record_bits(record, score_dtypes):
    """The bit-mask ops' launches (pruneext/backends/triton/bits.py, lean training)
    over each score dtype, for a list (a table) and one tensor (direct),
    with budgets of none or all of a tensor's ties and with a cut inside
    them (the tie counts and the ranked prune): tables of 3 and 2 tensors,
    one of 256 entries (divisible by 16) and one of 1."""
    bits._launch, real = record, bits._launch
    try:
        for dtype in score_dtypes:
            for sizes in ((256, 300, 35), (1,)):
                weights = [torch.randn(n).to(dtype) for n in sizes]
                masks = [torch.full(((w.numel() + 7) // 8,), 255, dtype=torch.uint8) for w in weights]
                for length in range(len(sizes), 0, -1):
                    for ties in ((0, 2**63 - 1, 0), (7, 7, 7), (1, 1, 1)):  # all or none of the ties; cuts inside
                        bits.bits_prune(weights[:length], masks[:length], 5, list(ties[:length]))
                    bits.bits_apply(weights[:length], masks[:length])
    finally:
        bits._launch = real


def arg_type(a):
    """Triton's type of a Python int argument (as the mask's 1 is passed)."""
    if isinstance(a, bool):
        return "i1"
    if isinstance(a, int):
        return "i32" if -(2**31) <= a < 2**31 else "i64"
    raise TypeError(f"unexpected kernel argument {a!r}")


def compile_launch(launch, arch):
    """Compile one specialisation; returns the cubin."""
    src = ASTSource(fn=launch.kernel, signature=launch.signature, constexprs=launch.constexprs, attrs=launch.attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps})
    return compiled.asm["cubin"]


def widened(launch):
    """The launch with its int32 arguments as int64 (a tensor of more than
    2^31 entries)."""
    signature = {n: "i64" if t == "i32" else t for n, t in launch.signature.items()}
    return dataclasses.replace(launch, signature=signature)


def with_ones(launch):
    """The launch with each integer argument the JIT may specialise (not
    do_not_specialize) set to the constexpr 1 in turn."""
    for i, p in enumerate(launch.kernel.params):
        if launch.signature[p.name] in ("i32", "i64") and not p.do_not_specialize:
            yield dataclasses.replace(
                launch, signature=dict(launch.signature, **{p.name: "constexpr"}),
                constexprs={**launch.constexprs, (i,): 1},
                attrs={path: a for path, a in launch.attrs.items() if path != (i,)},
            )


def variant_of(launch):
    """The kernel as its launch declares it (constexpr arguments, warps),
    whatever the JIT specialised of its other arguments."""
    names, ones = launch.kernel.arg_names, launch.specialised()
    declared = sorted((p, v) for p, v in launch.constexprs.items() if names[p[0]] not in ones)
    return launch.kernel, repr(declared), launch.num_warps


def arg_classes(launch):
    """How the JIT specialised each runtime argument of the launch: the
    constexpr 1, or its type and whether it is divisible by 16."""
    ones = launch.specialised()
    return frozenset(
        (name, "=1") if name in ones else (name, kind, DIVISIBLE in launch.attrs.get((i,), []))
        for i, (name, kind) in enumerate(launch.signature.items()) if name in ones or kind != "constexpr"
    )


def to_compile(launches, every=False, ones=False):
    """The specialisations to compile. Of each variant of a kernel: launches
    that together specialise each argument in every way a recorded launch
    does (greedily, the launch that adds the most first; every recorded one
    with `every`: the classes cover the failures seen, a 1 or an alignment
    that changes a type, at a third of the compiles), the first of them with
    its int32 arguments widened to int64, and with `ones` the first of them
    with each integer argument as the constexpr 1 in turn."""
    groups = {}
    for launch in launches:
        groups.setdefault(variant_of(launch), []).append(launch)
    todo = {}
    for group in groups.values():
        if every:
            chosen = group
        else:
            chosen, left = [], set().union(*map(arg_classes, group))
            while left:
                best = max(group, key=lambda launch: len(arg_classes(launch) & left))
                chosen.append(best)
                left -= arg_classes(best)
        for launch in (*chosen, widened(chosen[0]), *(with_ones(chosen[0]) if ones else ())):
            todo.setdefault((launch.kernel, launch.label()), launch)
    return list(todo.values())


def resource_usage(cubin):
    """REG / STACK / SHARED / LOCAL of the kernel, read with cuobjdump
    (Triton ships one)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out)}


def check(launch, arch):
    """(failures, report line) of compiling one specialisation."""
    label = launch.label()
    try:
        usage = resource_usage(compile_launch(launch, arch))
    except Exception as e:  # report them all, then fail
        return 1, f"FAIL {label}: {type(e).__name__}: {e}"
    spills = usage.get("LOCAL", 0) + usage.get("STACK", 0)
    small = usage.get("LOCAL", 0) == 0 and usage.get("STACK", 0) <= SMALL_FRAME
    fatal = spills > 0 and launch.name not in ONE_PROGRAM and not small and not known_spill(launch)
    return int(fatal), f"{'SPILL' if fatal else 'stack' if spills else 'ok   '} {usage} {label}"


_TODO = []  # the specialisations to compile, inherited by the forked workers


def _check_index(args):
    index, arch = args
    return check(_TODO[index], arch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for sm_90")
    parser.add_argument("--quick", action="store_true",
                        help="float32 and bfloat16 scores only (the second Triton version in CI)")
    parser.add_argument("--all", action="store_true",
                        help="every recorded specialisation, not those that cover each argument's")
    parser.add_argument("--ones", action="store_true",
                        help="also each specialisable integer argument as the constexpr 1, in turn")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes")
    args = parser.parse_args()
    launches = record_launches(QUICK_SCORES if args.quick else tuple(KEY_PLANS), args.arch)
    _TODO[:] = to_compile(launches, every=args.all, ones=args.ones)
    print(f"triton {triton.__version__}, torch {torch.__version__}, sm_{args.arch}: {len(launches)} launches "
          f"as the JIT specialises them ({sum(bool(launch.specialised()) for launch in launches)} with an "
          f"argument specialised to 1); compiling {len(_TODO)}")
    work = [(i, args.arch) for i in range(len(_TODO))]
    if args.jobs > 1:  # compiles are independent; fork shares the recorded launches
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(_check_index, work, chunksize=8)
    else:
        results = [_check_index(w) for w in work]
    failures = sum(count for count, _ in results)
    print("\n".join(line for _, line in results))
    framed = sum(line.startswith("stack") for _, line in results)
    print(f"{failures} failed" if failures else
          f"all compiled, no spills in the per-block kernels but the known ones ({framed} with a stack frame)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
