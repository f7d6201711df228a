"""scripts/triton_aot_check.py compiles the Triton kernels as the GPU JIT
specialises them, so CI sees what the interpreter cannot: on the first H200
run count_ties_kernel failed to compile for a 1-entry tensor (the JIT passes
an integer argument equal to 1 as the constexpr 1, a Python int, and
block_count read `count.to(tl.int64)`), while every interpreter test passed.

A small subset here (float32 scores, a few compiles); CI runs the whole
sweep with the script. The check runs in a fresh process: it needs real
JITFunctions, and conftest imported the kernels under TRITON_INTERPRET=1.
"""
import json
import os
import re
import subprocess
import sys

import pytest

try:
    import triton  # noqa: F401
except Exception as e:  # ImportError, or a Triton that does not match this torch
    pytest.skip(f"triton is not importable ({type(e).__name__}: {e})", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r'''
import dataclasses, json
import torch
import triton_aot_check as aot  # (first: it drops TRITON_INTERPRET before pruneext loads)
from pruneext.backends.triton import kernels

# block_count before the fix: .to() of what the JIT may make a Python int
OLD_BLOCK_COUNT = """def block_count(count, BLOCK: tl.constexpr):
    return tl.cdiv(count.to(tl.int64), BLOCK)
"""

def as_plain(launch, name):
    """The launch with argument `name` an i32 again, not the constexpr 1."""
    i = launch.kernel.arg_names.index(name)
    return dataclasses.replace(launch, signature=dict(launch.signature, **{name: "i32"}),
                               constexprs={p: v for p, v in launch.constexprs.items() if p != (i,)})

def as_one(launch, name):
    """The launch with argument `name` the constexpr 1."""
    i = launch.kernel.arg_names.index(name)
    return dataclasses.replace(launch, signature=dict(launch.signature, **{name: "constexpr"}),
                               constexprs={**launch.constexprs, (i,): 1})

todo = aot.to_compile(aot.record_launches((torch.float32,)))
one_entry = [l for l in todo if l.kernel is kernels.count_ties_kernel and l.specialised().get("n") == 1]
k_one = [l for l in todo if l.kernel is kernels.select_bucket_kernel and ("k", 1) in l.values]
out = {"one_entry": [l.label() for l in one_entry], "k_one": [l.label() for l in k_one]}
if one_entry and k_one:
    out["fixed"] = [aot.check(l, 90) for l in (one_entry[0], k_one[0], as_one(k_one[0], "k"))]
    kernels.block_count._unsafe_update_src(OLD_BLOCK_COUNT)
    kernels.count_ties_kernel.hash = None  # (its cache key includes its callees')
    out["reverted"] = [aot.check(l, 90) for l in (one_entry[0], as_plain(one_entry[0], "n"))]
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "scripts"), env.get("PYTHONPATH", "")])
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))  # compiled here, not found
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_one_entry_and_k_one_launches_are_compiled_as_the_jit_specialises_them(probe):
    # a 1-entry tensor: n is the constexpr 1; k = 1 is recorded (select_bucket_kernel
    # does not specialise k, so it compiles as an i32 there)
    assert probe["one_entry"], "no count_ties_kernel launch with n = 1 among the compiled specialisations"
    assert probe["k_one"], "no select_bucket_kernel launch with k = 1 among the compiled specialisations"
    assert all("n=1" in label for label in probe["one_entry"])
    assert all(re.search(r", i(32|64)\) ", label) for label in probe["k_one"]), probe["k_one"]
    for failures, line in probe["fixed"]:  # and k as the constexpr 1 (as a caller that specialised it would)
        assert failures == 0, line
        assert not line.startswith("FAIL"), line


def test_the_check_fails_on_the_old_block_count(probe):
    """Negative control: with block_count as it was before the fix, the
    1-entry launch fails to compile (the H200's error), and the same launch
    with n an i32, as the interpreter and the old check saw it, compiles."""
    (failures, line), (plain_failures, plain_line) = probe["reverted"]
    assert failures == 1 and line.startswith("FAIL count_ties_kernel("), line
    assert "n=1" in line and "CompilationError" in line, line
    assert plain_failures == 0 and "n=1" not in plain_line, plain_line

