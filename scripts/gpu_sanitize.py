"""A few mask-op calls for compute-sanitizer (scripts/gpu_check.sh second).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
        python3 scripts/gpu_sanitize.py --set memcheck
    compute-sanitizer --tool racecheck python3 scripts/gpu_sanitize.py --set racecheck

Each case runs the op on every GPU backend named (default: cuda and triton,
those available) and checks the result bit for bit against the C++ `cpu`
backend (the `torch` backend where `cpu` is missing), so a case that the
sanitizer passes also computed the right mask. The memcheck set walks the
kernels' paths on small tensors (sampled window hit and miss, heavy ties,
every score width, a default mask with among_alive, a mixed global list,
empty and trivial k); the racecheck set is one sampled case per backend
(racecheck is slow). Without the caching allocator every tensor is its own
cudaMalloc, so an access past a tensor's end is past its allocation too.

--device cpu (the dry rehearsal, with TRITON_INTERPRET=1 for Triton) runs
the same cases, smaller with --small, on CPU tensors. Exit status: 0 when
every case matched, 1 otherwise.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pruneext  # noqa: E402
from pruneext import ops  # noqa: E402


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mask(shape, dtype, seed):
    r = torch.rand(shape, generator=_gen(seed))
    return r > 0.3 if dtype == torch.bool else (r > 0.3).to(dtype)


def cases(which, small):
    """[(name, global?, scores, k, default masks, among_alive)] on the CPU."""
    big = (300, 700) if small else (1000, 1537)  # over the sampled-window minimum unless small
    n = big[0] * big[1]
    g = _gen(1)
    x = torch.randn(big, generator=g)
    if which == "racecheck":
        return [("sampled f32", False, x, n // 2, None, False)]
    sorted_x = torch.linspace(-5, 5, n)  # the sampled window misses often on sorted data
    skewed = torch.randn(n, generator=g)
    skewed.view(-1, 4096 if n % 4096 == 0 else 100)[::32] *= 1000
    ties = torch.randint(0, 3, big, generator=g).float()
    shapes = [(0,), (1,), (37,), (4097,), (300, 70), (2, 3, 5)]
    lst = [torch.randn(s, generator=g).to(torch.bfloat16) for s in shapes]
    lst_masks = [None if i % 3 == 1 else _mask(s, torch.bool, 10 + i) for i, s in enumerate(shapes)]
    eligible = sum(int((m == 1).sum()) if m is not None else t.numel() for t, m in zip(lst, lst_masks))
    return [
        ("sampled f32, amount 0.5", False, x, n // 2, None, False),
        ("sampled f32, amount 0.9", False, x, int(0.9 * n), None, False),
        ("sampled bf16", False, x.to(torch.bfloat16), n // 2, None, False),
        ("sampled f16, f32 mask, among_alive", False, x.half(), n // 4, _mask(big, torch.float32, 2), True),
        ("f64, bool mask", False, x.double(), n // 3, _mask(big, torch.bool, 3), False),
        ("sorted f32 (window misses)", False, sorted_x, n // 2, None, False),
        ("skewed f32 (window misses)", False, skewed, n // 10, None, False),
        ("heavy ties", False, ties, n // 2 + 1, None, False),
        ("small f32, k = 1", False, torch.randn(37, 53, generator=g), 1, None, False),
        ("k = 0", False, torch.randn(4096, generator=g), 0, None, False),
        ("k = n", False, torch.randn(4096, generator=g), 4096, None, False),
        ("empty", False, torch.empty(0), 0, None, False),
        ("global bf16, bool masks, among_alive", True, lst, eligible // 2, lst_masks, True),
        ("global f32, one big tensor", True, [x, x[:7, :3].contiguous()], n // 2, [None, None], False),
    ]


def _run(backend, is_global, scores, k, masks, among, device):
    with pruneext.use_backend(backend):
        if is_global:
            got = ops.l1_mask_global([s.to(device) for s in scores], k,
                                     [None if m is None else m.to(device) for m in masks], among)
        else:
            got = [ops.l1_mask(scores.to(device), k, None if masks is None else masks.to(device), among)]
    if device != "cpu":
        torch.cuda.synchronize()
    return [g.cpu() for g in got]


def _same_bits(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", choices=["memcheck", "racecheck"], default="memcheck")
    p.add_argument("--device", default="cuda")
    p.add_argument("--backends", help="comma list (default: cuda,triton on CUDA; triton on CPU), those available")
    p.add_argument("--small", action="store_true", help="smaller tensors (the dry rehearsal)")
    args = p.parse_args(argv)
    available = pruneext.available_backends()
    wanted = (args.backends or ("cuda,triton" if args.device == "cuda" else "triton")).split(",")
    chosen = [b for b in wanted if b in available]
    for b in wanted:
        if b not in available:
            print(f"backend {b}: not available ({pruneext.backends.unavailable_backends().get(b)})", flush=True)
    oracle = "cpu" if "cpu" in available else "torch"
    if not chosen:
        print("no backend to check")
        return 1
    bad = total = 0
    for name, is_global, scores, k, masks, among in cases(args.set, args.small):
        want = _run(oracle, is_global, scores, k, masks, among, "cpu")
        for backend in chosen:
            t0 = time.perf_counter()
            total += 1
            try:
                got = _run(backend, is_global, scores, k, masks, among, args.device)
                ok = len(got) == len(want) and all(_same_bits(g, w) for g, w in zip(got, want))
                verdict = "ok" if ok else f"MISMATCH against {oracle}"
            except Exception as e:  # recorded; the next case still runs under the sanitizer
                ok, verdict = False, f"ERROR {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            bad += not ok
            print(f"{args.set} {backend:<7} {name:<40} {verdict} ({time.perf_counter() - t0:.2f} s)", flush=True)
    print(f"{args.set}: {total - bad}/{total} calls matched the {oracle} backend bit for bit")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
