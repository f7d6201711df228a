"""The CUDA ops' argument checks run in host-compiled code before any CUDA
launcher, and no exception crosses a launcher's boundary -- without a GPU.

On the first H200 run every exception thrown from the .cu units killed the
process (issue 21), so every check of the CUDA ops lives in
csrc/cuda/ops_cuda.cpp and the .cu units only launch (csrc/cuda/launchers.h).
Here the CUDA kernels are called through the dispatcher with CPU tensors:
a check that runs on the host raises the CPU op's own exception (type and
message); anything that reached a launcher would fail on the CPU tensors
with another message instead. Runs wherever pruneext._C has CUDA kernels
(CI builds them); a GPU is not needed.
"""
import pathlib
import re

import pytest
import torch

import pruneext  # noqa: F401  (loads the extension and registers the ops)


def _has_cuda_kernel():
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("pruneext::l1_mask", "CUDA")
    except RuntimeError:  # the op itself is missing: pruneext._C did not load
        return False


pytestmark = pytest.mark.skipif(not _has_cuda_kernel(), reason="pruneext._C was built without CUDA kernels")

CUDA_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
ops = torch.ops.pruneext


def on_cuda_kernel(op, *args):
    """The CUDA key's kernel of `op` on these (CPU) arguments."""
    return op.redispatch(CUDA_KEYS, *args)


x = torch.randn(64)
h = torch.randn(64, dtype=torch.float16)
half_alive = (torch.arange(64) % 2).float()
bits8 = torch.zeros(8, dtype=torch.uint8)

# (name, op, args): each raises on the CPU backend.
BAD_CALLS = [
    ("l1_mask k < 0", ops.l1_mask.default, (x, -1)),
    ("l1_mask k > numel", ops.l1_mask.default, (x, 65)),
    ("l1_mask empty, k = 1", ops.l1_mask.default, (torch.empty(0), 1)),
    ("l1_mask k > numel with a mask, not among_alive", ops.l1_mask.default, (x, 65, half_alive, False)),
    ("l1_mask integer scores", ops.l1_mask.default, (torch.ones(4, dtype=torch.int32), 1)),
    ("l1_mask mask of another shape", ops.l1_mask.default, (x, 1, torch.ones(63))),
    ("l1_mask complex128 mask", ops.l1_mask.default, (x, 1, torch.ones(64, dtype=torch.complex128))),
    ("l1_mask values without values_out", ops.l1_mask.default, (x, 1, None, False, x.clone(), None)),
    ("l1_mask values_out of another dtype", ops.l1_mask.default, (x, 1, None, False, None, torch.empty(64, dtype=torch.float64))),
    ("l1_mask values_out non-contiguous", ops.l1_mask.default, (x.view(8, 8), 1, None, False, None, torch.empty(8, 8).t())),
    ("l1_mask values_out is the scores", ops.l1_mask.default, (x, 1, None, False, None, x)),
    ("l1_mask_global k > entries", ops.l1_mask_global.default, ([x, x[:10]], 75, [None, None])),
    ("l1_mask_global dtypes differ", ops.l1_mask_global.default, ([x, h], 1, [])),
    ("l1_mask_global masks != tensors", ops.l1_mask_global.default, ([x, x], 1, [None])),
    ("l1_mask_global.into mask of the wrong dtype", ops.l1_mask_global.into,
     ([x], 1, [None], False, [torch.empty(64, dtype=torch.float64)])),
    ("l1_mask_global.into k > entries", ops.l1_mask_global.into, ([x], 65, [None], False, [torch.empty(64)])),
    ("l1_select_threshold k > numel", ops.l1_select_threshold.default, ([x], [], False, 65)),
    ("l1_key_histogram bits = 17", ops.l1_key_histogram.default, ([x], [], False, 0, 17, 0)),
    ("l1_key_histogram past the key", ops.l1_key_histogram.default, ([h], [], False, 1, 15, 0)),
    ("l1_count_equal dtypes differ", ops.l1_count_equal.default, ([x, h], [], False, 0)),
    ("l1_mask_write negative budget", ops.l1_mask_write.default, ([x, x], [], False, 0, [0, -1])),
    ("l1_mask_write budgets != tensors", ops.l1_mask_write.default, ([x, x], [], False, 0, [1])),
    ("l1_bits_prune negative threshold", ops.l1_bits_prune.default, ([x], [bits8], -1, [0])),
    ("l1_bits_prune mask of the wrong size", ops.l1_bits_prune.default, ([x], [bits8[:1]], 0, [0])),
    ("l1_bits_prune negative budget", ops.l1_bits_prune.default, ([x], [bits8], 0, [-1])),
    ("l1_bits_apply int32 mask", ops.l1_bits_apply.default, ([x], [torch.zeros(2, dtype=torch.int32)])),
    ("l1_bits_apply non-contiguous tensor", ops.l1_bits_apply.default, ([x.view(8, 8).t()], [bits8])),
    ("l1_bits_apply integer tensor", ops.l1_bits_apply.default, ([torch.zeros(8, dtype=torch.int32)], [bits8[:1]])),
]


def _raised(call):
    with pytest.raises(Exception) as e:
        call()
    return type(e.value), str(e.value).splitlines()[0]


@pytest.mark.parametrize("name,op,args", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_cuda_kernel_checks_on_the_host_as_the_cpu_op(name, op, args):
    want = _raised(lambda: op(*args))  # the CPU backend (the tensors are CPU ones)
    got = _raised(lambda: on_cuda_kernel(op, *args))
    assert got == want, f"{name}: the CUDA kernel raised {got}, the CPU one {want}"


def test_nothing_written_before_the_host_checks():
    # A bad values_out must leave every caller tensor as it was: the check
    # runs before a launcher could write.
    out = torch.full((64,), 7.0)
    before = (x.clone(), out.clone())
    with pytest.raises(TypeError):
        on_cuda_kernel(ops.l1_mask.default, x, 1, half_alive.double(), False, None, out)
    assert torch.equal(x, before[0]) and torch.equal(out, before[1])


def test_a_launcher_error_comes_back_as_an_exception():
    # Valid arguments on CPU tensors pass every host check and reach a
    # launcher, which fails on them (no CUDA device or a CPU device for its
    # guard): that error must come back through the launcher's boundary as a
    # Python exception, for every launcher, and the process goes on.
    calls = [
        (ops.l1_mask.default, (x, 3)),
        (ops.l1_select_threshold.default, ([x], [], False, 3)),
        (ops.l1_key_histogram.default, ([x], [], False, 16, 15, 0)),
        (ops.l1_count_equal.default, ([x], [], False, 0)),
        (ops.l1_mask_write.default, ([x], [], False, 0, [0])),
        (ops.l1_bits_prune.default, ([x.clone()], [bits8.clone()], 1 << 30, [0])),
        (ops.l1_bits_apply.default, ([x.clone()], [bits8.clone()])),
    ]
    if torch.cuda.is_available():
        pytest.skip("with a CUDA device the launcher may run on CPU pointers; this checks the no-GPU path")
    for op, args in calls:
        with pytest.raises(RuntimeError):
            on_cuda_kernel(op, *args)
    assert torch.equal(ops.l1_mask(x, 3), ops.l1_mask(x, 3))  # the process is alive and well


CSRC_CUDA = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda"


def test_cuda_units_are_launchers():
    # The checks and the registration live in host-compiled code; a .cu unit
    # (or a header only they include) raising a user-facing error would bring
    # the crash class of issue 21 back.
    device_side = sorted(CSRC_CUDA.glob("*.cu")) + sorted(CSRC_CUDA.glob("*.cuh"))
    assert device_side, CSRC_CUDA
    for path in device_side:
        text = path.read_text()
        found = re.findall(r"\bTORCH_CHECK\w*\(|\bTORCH_LIBRARY\w*\(|\bprepare_problem\(|\bcheck_bit_masks\(", text)
        assert not found, f"{path.name}: {sorted(set(found))} belong in ops_cuda.cpp"
    declared = (CSRC_CUDA / "launchers.h").read_text()
    launchers = re.findall(r"^Launched (\w+)\(", declared, flags=re.M)
    assert len(launchers) == 7
    for name in launchers:
        # every launcher is declared noexcept and defined through the guard
        assert re.search(rf"Launched {name}\([^;]*\) noexcept;", declared), name
        defined = [p for p in device_side if re.search(rf"^Launched {name}\(", p.read_text(), flags=re.M)]
        assert len(defined) == 1, (name, defined)
        body = defined[0].read_text().split(f"Launched {name}(", 1)[1]
        assert "launch_guarded(" in body.split("\n}\n", 1)[0], f"{name} does not run under launch_guarded"
