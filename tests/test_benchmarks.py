"""The benchmark's arithmetic: the bytes its floors count, the k its op
level passes, and one op-level row end to end on tiny CPU tensors."""
import os
import sys

import pytest
import torch

import pruneext

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cases, contenders, report, run, timing  # noqa: E402

N = 2**20


def _case(mode, dtype, size=N, model=None, amount=0.5):
    return cases.Case(mode, dtype, amount, "cpu", size, model)


@pytest.mark.parametrize(
    "mode,dtype,per_entry",
    [
        ("single", "float32", 8),  # read 4-byte scores, write a 4-byte mask
        ("single", "bfloat16", 4),
        ("single", "float16", 4),
        ("iterative", "float32", 12),  # and read the 4-byte previous mask
        ("iterative", "bfloat16", 6),
        ("global", "float32", 8),
        ("global", "bfloat16", 4),
    ],
)
def test_op_floor_bytes_per_entry(mode, dtype, per_entry):
    model = "small-llama" if mode == "global" else None
    size = cases.model_numel(model) if model else N
    case = _case(mode, dtype, size, model)
    assert report.op_floor_bytes(case) == per_entry * size
    assert report.floor_bytes(case, "op") == per_entry * size


def test_op_floor_bytes_of_another_mask_dtype():
    # fp32 scores, bool mask: 4 + 1 bytes; iterative reads the old mask too
    assert report.op_floor_bytes(_case("single", "float32"), mask_itemsize=1) == 5 * N
    assert report.op_floor_bytes(_case("iterative", "float32"), mask_itemsize=1) == 6 * N


def test_module_floor_is_unchanged():
    assert report.floor_bytes(_case("single", "float32")) == 12 * N
    assert report.floor_bytes(_case("iterative", "bfloat16")) == 10 * N
    assert report.floor_bytes(_case("global", "float32", 4096, "warmup")) == 3 * 4 * 4096


def test_op_k_counts_among_the_alive():
    single = _case("single", "float32", 1001, amount=0.3)
    assert single.op_k() == 300 and single.expected_pruned() == 300
    it = _case("iterative", "float32", 5)  # first prune: round(2.5) = 2, then round(0.5 * 3) = 2
    assert (it.pre_pruned(), it.op_k(), it.expected_pruned()) == (2, 2, 4)
    assert _case("iterative", "float32", 2**16).expected_pruned() == 2**15 + 2**14


def test_probe_cases():
    labels = [c.label for c in cases.probe_cases("cpu", size=2**12)]
    assert labels == [
        "single 2^12 float32 amount=0.5 cpu",
        "single 2^12 float32 amount=0.9 cpu",
        "single 2^12 bfloat16 amount=0.5 cpu",
        "iterative 2^12 float32 amount=0.5 cpu",
        "global small-llama bfloat16 amount=0.5 cpu",
    ]
    assert cases.probe_cases("cuda")[0].size == 2**28
    assert cases.probe_cases("cuda")[-1].model == "llama-7b"
    with pytest.raises(ValueError):
        cases.probe_cases("cpu", model="llama-7b")


def test_select_by_level():
    names = [c.name for c in contenders.select("torch,cpu", "op")]
    assert names == ["op-topk", "op-cpu"]
    assert [c.name for c in contenders.select("torch,cpu")] == ["torch.prune", "pruneext-cpu"]
    assert {c.level for c in contenders.select(None, "op")} == {"op"}
    assert contenders.select(None, "op")[0].name == "op-topk"


@pytest.mark.parametrize("mode", ["single", "iterative", "global"])
def test_op_level_rows(mode):
    """Every op contender prunes the expected entries, and the row's floor
    and xfloor follow from its bytes and the copy figure of the same run."""
    model = "warmup" if mode == "global" else None
    case = _case(mode, "float32", cases.model_numel(model) if model else 4096, model)
    picked = contenders.select("op-topk,op-torch,op-cpu", "op")
    policy = timing.Policy(budget_s=0.01, min_reps=1, max_reps=2)
    runner = run.Runner(picked, policy, "none", "cpu", seed=0)
    rows = list(runner.run_case(case))
    assert [r["contender"] for r in rows] == ["op-topk", "op-torch", "op-cpu"]
    for r in rows:
        assert r["status"] == "ok", r["note"]
        assert r["check_ok"], r["check"]
        assert r["level"] == "op" and r["reference"] == "op-topk"
        assert r["floor_bytes"] == (12 if mode == "iterative" else 8) * case.size
        assert r["x_floor"] == pytest.approx(r["median_s"] * r["copy_gbps"] * 1e9 / r["floor_bytes"])
    assert rows[0]["speedup"] == pytest.approx(1.0)


def test_reps_fixes_the_count():
    _, args = run.parse_args(["--reps", "3"])
    _, _, policy = run._plan(args, "cpu")
    clock = timing.Clock("cpu")
    slow = timing.Policy(**{**vars(policy), "slow_s": 0.0})  # every call counts as slow
    for p in (policy, slow):
        assert timing.measure(clock, lambda: None, lambda s: torch.ones(4), p).reps == 3


def test_scopes_benchmark_runs_and_checks_its_masks(tmp_path, capsys):
    """benchmarks.scopes on small shapes: a row per shape, dtype and scope,
    its masks compared with torch's before they are timed."""
    if "cpu" not in pruneext.available_backends():
        pytest.skip("pruneext._C is not built here")
    import json

    from benchmarks import scopes

    out = tmp_path / "scopes.json"
    scopes.main(["--shapes", "8x16,4x40", "--dtypes", "float32,bfloat16", "--reps", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shape"], r["dtype"], r["scope"]) for r in rows][:2] == [([8, 16], "float32", "row"), ([8, 16], "float32", "2:4")]
    assert len(rows) == 8 and all(r["pruneext_s"] > 0 and r["torch_s"] > 0 and r["copy_s"] > 0 for r in rows)
    assert "speed-up" in capsys.readouterr().out


def test_cpu_matrix_cells_over_their_yardsticks(tmp_path, capsys):
    """benchmarks.cpu_matrix on a small size: a cell per dtype and variant,
    each over its yardstick (clones of its fresh outputs' sizes, values: two
    of x, global: its parts; for the in-place bits update, a copy_); the
    spread of each row reported."""
    if "cpu" not in pruneext.available_backends():
        pytest.skip("pruneext._C is not built here")
    import json

    from benchmarks import cpu_matrix

    out = tmp_path / "matrix.json"
    cpu_matrix.main(["--sizes", "12", "--reps", "1", "--json", str(out)])
    found = json.loads(out.read_text())
    rows = found["rows"]
    assert len(rows) == 4 * 5 and {r["variant"] for r in rows} == set(cpu_matrix.VARIANTS)
    want = {"mask": "clone", "values": "2 clones", "alive": "clone", "global": "8 part clones", "bits": "copy_"}
    for r in rows:
        assert r["yardstick"] == want[r["variant"]] and r["ratio"] == r["seconds"] / r["yardstick_s"], r
    assert set(found["spreads"]) == {f"{v}@2^12" for v in cpu_matrix.VARIANTS}
    assert found["machine"]["thp"].keys() == {"enabled", "defrag"}
    assert "worst spread" in capsys.readouterr().out
