"""The training benchmark's harness (benchmarks.training) at its smoke size:
it runs, its figures are consistent, and the pruner's state is the bits."""
import json

import pytest

from benchmarks import training


def test_quick_run(tmp_path, capsys):
    out = tmp_path / "training.json"
    training.main(["--quick", "--reps", "1", "--json", str(out)])
    r = json.loads(out.read_text())
    assert r["memory"]["mask_over_params"] == pytest.approx(1 / 32)  # fp32: one bit per 32
    for opt in ("sgd", "adamw", "adamw fused"):
        t = r["training"][opt]
        assert t["torch hooks extra_bytes"] == 2 * t["param_bytes"]  # mask + weight
        assert t["pruner over torch hooks"] > 0 and t["pruner over dense"] > 0
    for key in ("clone_s", "copy_s", "update_s", "remask_s", "inplace_pass_s", "torch_global_s"):
        assert r["update"][key] > 0
    assert r["update"]["update_over_copy"] == pytest.approx(r["update"]["update_s"] / r["update"]["copy_s"])
    added = r["added"]
    assert added["torch hooks added_s"] > 0 and added["pruner added_s"] > 0
    assert added["pruner over torch hooks"] == pytest.approx(added["pruner added_s"] / added["torch hooks added_s"])
    report = capsys.readouterr().out
    assert "pruner update 0 -> 50 % (global)" in report and "| pruner, updating |" in report
    assert "## 4. What each method adds" in report


def test_parts_run_alone(tmp_path, capsys):
    """--parts picks the parts (the GPU check runs update and added alone);
    an unknown part, or CPU memory on another device, is refused."""
    out = tmp_path / "training.json"
    training.main(["--quick", "--reps", "1", "--parts", "update,added", "--json", str(out)])
    r = json.loads(out.read_text())
    assert {"update", "added"} <= r.keys() and not {"memory", "training"} & r.keys()
    report = capsys.readouterr().out
    assert "## 1. Update" in report and "## 4. What each method adds" in report and "## 3." not in report
    for bad in (["--parts", "update,bogus"], ["--parts", "memory", "--device", "cuda"]):
        with pytest.raises(SystemExit) as e:
            training.main(bad)
        assert e.value.code == 2
