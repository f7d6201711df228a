"""Compile every Triton kernel specialisation pruneext launches for a GPU
target, without a GPU, and report each one's registers, spills and shared
memory.

The interpreter tests (TRITON_INTERPRET=1) run the kernels' arithmetic on
CPU tensors, but never through Triton's GPU compiler: a kernel can pass them
and still fail to compile, or spill, on the H100. This script drives the
real host code (pruneext/backends/triton/select.py) on small CPU tensors with the
launches recorded instead of run, then compiles each distinct launch
(kernel, argument types, constexprs, num_warps) for the target with
triton.compile, which needs no driver. Integer arguments are compiled as
Triton types them at run time, and once more widened to int64, as a tensor
of more than 2^31 entries launches them.

    python scripts/triton_aot_check.py [--arch 90] [--quick] [--jobs N]

It records the fused ops (select.py), the phase ops (phases.py) and the
bit-mask ops (bits.py), one mask dtype per distinct launch (mask_kinds);
--quick takes float32 and bfloat16 scores only (CI's second Triton
version); the compiles run on --jobs processes (default: every core).

Exits 1 if a specialisation fails to compile, or if a kernel that runs a
program per block of entries spills (select_bucket_kernel runs one program
over the histogram, and Triton 3.6 gives it an 8-byte stack frame).
"""
import argparse
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

from pruneext.backends.triton import bits, phases, select  # noqa: E402
from pruneext.backends.contract import KEY_PLANS, MASK_BITS, VALUE_DTYPES  # noqa: E402

# Triton 3.6 (the GPU machine's) gives the histogram kernel's aggregation
# loop an 8-byte stack frame that Triton 3.8 does not: reported, not fatal
OLD_TRITON = tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 8)
ONE_PROGRAM = {"select_bucket_kernel"}  # spills there cost nothing measurable
POINTER = {torch.int64: "*i64", torch.int32: "*i32", torch.int16: "*i16", torch.uint8: "*u8"}


QUICK_SCORES = (torch.float32, torch.bfloat16)


def record_launches(score_dtypes):
    """Every distinct launch of the ops over each score dtype and each kind
    of default mask, for a list and for one tensor, as (kernel, argument
    types, constexprs, num_warps)."""
    launches = {}

    def recorder(num_warps):
        def record(kernel, grid, *args, tracing=False, **meta):
            types = tuple(arg_type(a) for a in args)
            key = (kernel.fn.__name__, types, tuple(sorted(meta.items())))
            launches[key] = (kernel, types, dict(meta, num_warps=num_warps))

        return record

    record_phases(recorder(phases.NUM_WARPS), score_dtypes)
    record_bits(recorder(bits.NUM_WARPS), score_dtypes)
    select._launch, real = recorder(select.NUM_WARPS), select._launch
    window_min = select.WINDOW_MIN
    try:
        for dtype, select.WINDOW_MIN in itertools.product(score_dtypes, (window_min, 0)):  # both paths
            cases = [(None, False)] + [(m, a) for m in mask_kinds() for a in (False, True)]
            for mask_dtype, among_alive in cases:
                scores = [torch.randn(300, dtype=torch.float32).to(dtype), torch.randn(7, 5).to(dtype)]
                masks = [None if mask_dtype is None else torch.ones_like(s, dtype=mask_dtype) for s in scores]
                # a list (its tensors through a table, table.py) and one tensor (handed directly)
                for k, length in itertools.product((0, 100), (2, 1)):
                    try:
                        select.l1_masks(scores[:length], k, masks[:length], among_alive)
                        # with the masked values written by the same pass (values_out):
                        # values of the scores' dtype, and of another; with a default
                        # mask only of its dtype (the kernels read its bits as values')
                        for value_dtype in {dtype, torch.float32} if mask_dtype is None else {mask_dtype}:
                            if value_dtype not in VALUE_DTYPES:
                                continue
                            values = [s.to(value_dtype) for s in scores[:length]]
                            select.l1_masks(scores[:length], k, masks[:length], among_alive,
                                            values=values, values_out=[torch.empty_like(v) for v in values])
                    except RuntimeError as e:  # nothing ran, so the device-side alive count is 0
                        if "exceeds" not in str(e):
                            raise
    finally:
        select._launch, select.WINDOW_MIN = real, window_min
    return list(launches.values())


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
    inside a tensor's ties."""
    phases._launch, real = record, phases._launch
    try:
        for dtype in score_dtypes:
            for mask_dtype, among_alive in [(None, False)] + [(m, a) for m in mask_kinds() for a in (False, True)]:
                scores = [torch.randn(300).to(dtype)]
                masks = [None if mask_dtype is None else torch.ones_like(scores[0], dtype=mask_dtype)]
                phases.key_histogram(scores, masks, among_alive, 0, KEY_PLANS[dtype].digits[-1][1], 0)
                phases.count_equal(scores, masks, among_alive, 5)
                for ties in (0, 7):  # all or none of a tensor's ties; a cut inside them
                    phases.mask_write(scores, masks, among_alive, 5, [ties])
    finally:
        phases._launch = real


def record_bits(record, score_dtypes):
    """The bit-mask ops' launches (pruneext/backends/triton/bits.py, lean training)
    over each score dtype, for a list (a table) and one tensor (direct),
    with budgets of none or all of a tensor's ties and with a cut inside
    them (the tie counts and the ranked prune)."""
    bits._launch, real = record, bits._launch
    try:
        for dtype in score_dtypes:
            weights = [torch.randn(300).to(dtype), torch.randn(7, 5).to(dtype)]
            masks = [torch.full(((w.numel() + 7) // 8,), 255, dtype=torch.uint8) for w in weights]
            for length in (2, 1):
                for ties in ((0, 2**63 - 1), (7, 7)):  # all or none of a tensor's ties; a cut inside them
                    bits.bits_prune(weights[:length], masks[:length], 5, list(ties[:length]))
                bits.bits_apply(weights[:length], masks[:length])
    finally:
        bits._launch = real


def arg_type(a):
    if isinstance(a, torch.Tensor):
        return POINTER[a.dtype]
    if isinstance(a, bool):
        return "i1"
    if isinstance(a, int):  # Triton's own rule for a Python int
        return "i32" if -(2**31) <= a < 2**31 else "i64"
    raise TypeError(f"unexpected kernel argument {a!r}")


def compile_one(kernel, types, meta, arch):
    """Compile one specialisation; returns the cubin."""
    names = kernel.arg_names
    signature = dict(zip(names, types))
    constexprs = {}
    for name, value in meta.items():
        if name in names:
            signature[name] = "constexpr"
            constexprs[(names.index(name),)] = value
    signature = {n: signature[n] for n in names}
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": meta["num_warps"]})
    return compiled.asm["cubin"]


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
    """(failures, report lines) of one launch: compiled as recorded and with
    its int32 arguments widened to int64."""
    kernel, types, meta = launch
    widened = tuple("i64" if t == "i32" else t for t in types)
    failures, lines = 0, []
    for variant in dict.fromkeys((types, widened)):
        label = f"{kernel.fn.__name__}({', '.join(variant)}) {meta}"
        try:
            usage = resource_usage(compile_one(kernel, variant, meta, arch))
        except Exception as e:  # report them all, then fail
            failures += 1
            lines.append(f"FAIL {label}: {type(e).__name__}: {e}")
            continue
        spills = usage.get("LOCAL", 0) + usage.get("STACK", 0)
        fatal = spills > 0 and kernel.fn.__name__ not in ONE_PROGRAM
        if fatal and OLD_TRITON and usage.get("LOCAL", 0) == 0 and usage.get("STACK", 0) <= 8:
            fatal = False  # Triton < 3.8: an 8-byte frame for the block-histogram loop (a known risk)
        failures += fatal
        lines.append(f"{'SPILL' if fatal else 'stack' if spills else 'ok   '} {usage} {label}")
    return failures, lines


_LAUNCHES = []  # the recorded launches, inherited by the forked workers


def _check_index(args):
    index, arch = args
    return check(_LAUNCHES[index], arch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for sm_90")
    parser.add_argument("--quick", action="store_true",
                        help="float32 and bfloat16 scores only (the second Triton version in CI)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes")
    args = parser.parse_args()
    _LAUNCHES[:] = record_launches(QUICK_SCORES if args.quick else tuple(KEY_PLANS))
    print(f"triton {triton.__version__}, torch {torch.__version__}, sm_{args.arch}: {len(_LAUNCHES)} launches")
    work = [(i, args.arch) for i in range(len(_LAUNCHES))]
    if args.jobs > 1:  # compiles are independent; fork shares the recorded launches
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(_check_index, work, chunksize=8)
    else:
        results = [_check_index(w) for w in work]
    failures = 0
    for count, lines in results:
        failures += count
        print("\n".join(lines))
    print(f"{failures} failed" if failures else "all compiled, no spills in the per-block kernels")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
