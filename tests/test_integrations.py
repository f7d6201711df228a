"""The trainer callbacks of pruneext.integrations: the pruner steps once per
optimizer step inside a Hugging Face Trainer and a Lightning Trainer, the
final sparsity is exactly the schedule's, and a run resumed from a
checkpoint ends with the masks (and weights) of the run that was never
interrupted. The oracle of the masks is that uninterrupted run and the
exact count round(s * n); each library's tests skip with a reason where it
is not installed. The README's two examples run as written.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import pruneext

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARSITY = 0.7


def readme_block(title):
    """The first python block after README's heading `title`."""
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        section = f.read().split(title, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def zeros_and_entries(weights):
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


# ------------------------------------------------------------- transformers

hf = pytest.importorskip  # (called per test: the Lightning tests must not skip with these)


def tiny_llama(seed=0):
    transformers = hf("transformers", reason="transformers is not installed")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config)


def token_data(n=24, length=16):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 64, (n, length), generator=g)
    return [{"input_ids": t, "labels": t} for t in tokens]


def hf_run(tmp_path, max_steps, resume=None, callback_kwargs=None, model=None):
    transformers = hf("transformers", reason="transformers is not installed")
    hf("accelerate", reason="the Trainer needs accelerate, which is not installed")
    from pruneext.integrations.transformers import PrunerCallback

    model = model or tiny_llama()
    linears = [(m, "weight") for m in model.model.layers.modules() if isinstance(m, nn.Linear)]
    pruner = pruneext.MagnitudePruner(linears, pruneext.schedules.cubic(SPARSITY, end=6, every=2))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=1e-2, lr_scheduler_type="constant", weight_decay=0.1, save_strategy="steps", save_steps=3, logging_strategy="no",
        report_to=[], use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=token_data(), callbacks=[PrunerCallback(pruner, **(callback_kwargs or {}))]
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, pruner, [m.weight for m, _ in linears], trainer


def test_hf_trainer_steps_the_pruner_to_the_exact_sparsity(tmp_path):
    model, pruner, weights, trainer = hf_run(tmp_path, max_steps=8)
    assert pruner.step_count == trainer.state.global_step == 8  # once per optimizer step (accumulation 2)
    zeros, n = zeros_and_entries(weights)
    assert zeros == round(SPARSITY * n)
    assert os.path.isfile(tmp_path / "checkpoint-6" / "pruneext_pruner.pt")


def test_hf_trainer_resumes_with_the_same_masks(tmp_path):
    _, whole, whole_weights, _ = hf_run(tmp_path / "whole", max_steps=8)
    hf_run(tmp_path / "cut", max_steps=3)  # stops after the checkpoint at step 3 (sparsity mid-schedule)
    _, resumed, resumed_weights, trainer = hf_run(tmp_path / "cut", max_steps=8, resume=True, model=tiny_llama(seed=5))
    assert resumed.step_count == trainer.state.global_step == 8
    for (m, n), (m2, n2) in zip(whole.targets, resumed.targets):
        assert torch.equal(whole.mask(m, n), resumed.mask(m2, n2))
    for a, b in zip(whole_weights, resumed_weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_hf_trainer_resume_without_the_pruner_state_raises(tmp_path):
    hf_run(tmp_path, max_steps=3)
    os.remove(tmp_path / "checkpoint-3" / "pruneext_pruner.pt")
    with pytest.raises(FileNotFoundError, match="resume_from"):
        hf_run(tmp_path, max_steps=8, resume=True)


def test_hf_trainer_resume_from_another_folder(tmp_path):
    hf_run(tmp_path / "a", max_steps=3)
    os.rename(tmp_path / "a" / "checkpoint-3", tmp_path / "elsewhere")
    _, pruner, _, _ = hf_run(tmp_path / "b", max_steps=4, resume=str(tmp_path / "elsewhere"),
                             callback_kwargs={"resume_from": str(tmp_path / "elsewhere")})
    assert pruner.step_count == 4


def test_readme_hf_example_runs_as_written(tmp_path, monkeypatch):
    hf("transformers", reason="transformers is not installed")
    hf("accelerate", reason="the Trainer needs accelerate, which is not installed")
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "readme_example"}
    exec(compile(readme_block("### In a Hugging Face Trainer"), "README.md", "exec"), scope)
    weights = [m.weight for m in scope["model"].model.layers.modules() if isinstance(m, nn.Linear)]
    zeros, n = zeros_and_entries(weights)
    assert zeros == round(0.5 * n)


# ----------------------------------------------------------------- lightning


def lightning_module():
    try:
        import lightning.pytorch as L
    except ImportError:
        L = pytest.importorskip("pytorch_lightning", reason="neither lightning nor pytorch_lightning is installed")

    class Regression(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(2)
            x = torch.randn(32, 16, generator=g)  # 8 batches: 4 optimizer steps an epoch
            data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
            return torch.utils.data.DataLoader(data, batch_size=4)

    return L, Regression()


def lightning_run(tmp_path, max_steps, ckpt_path=None):
    L, module = lightning_module()
    from pruneext.integrations.lightning import PrunerCallback

    pruner = pruneext.MagnitudePruner(module.net, pruneext.schedules.cubic(SPARSITY, end=10, every=2))
    # at each epoch's end: a run resumed mid-epoch replays batches unless the
    # data loader keeps its own state, which is Lightning's business, not ours
    checkpoints = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path), every_n_epochs=1, save_top_k=-1)

    class AtStart(L.Callback):  # the pruner as the fit starts (after any restore)
        def on_train_start(self, trainer, pl_module):
            self.state = pruner.state_dict()

    at_start = AtStart()
    trainer = L.Trainer(
        max_steps=max_steps, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[PrunerCallback(pruner), at_start, checkpoints], default_root_dir=str(tmp_path),
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return module, pruner, trainer, at_start.state


def test_lightning_steps_the_pruner_to_the_exact_sparsity(tmp_path):
    module, pruner, trainer, _ = lightning_run(tmp_path, max_steps=12)
    assert pruner.step_count == trainer.global_step == 12  # once per optimizer step (accumulation 2)
    zeros, n = zeros_and_entries([m.weight for m in module.net if isinstance(m, nn.Linear)])
    assert zeros == round(SPARSITY * n)


def test_lightning_resumes_with_the_same_masks(tmp_path):
    # (Lightning's own resume does not replay the uninterrupted run's
    # trajectory bit for bit, with or without a pruner: the oracle is the
    # pruner's state in the checkpoint, and the schedule's exact count.)
    lightning_run(tmp_path / "whole", max_steps=12)
    ckpt = next((tmp_path / "whole").glob("epoch=0-step=4*.ckpt"))  # mid-schedule
    saved = next(v for k, v in torch.load(ckpt, weights_only=False)["callbacks"].items() if "PrunerCallback" in k)
    assert saved["step"] == 4 and 0 < saved["sparsity"] < SPARSITY
    module, resumed, trainer, at_start = lightning_run(tmp_path / "resumed", max_steps=12, ckpt_path=str(ckpt))
    assert at_start["step"] == 4 and at_start["sparsity"] == saved["sparsity"]
    for got, want in zip(at_start["masks"], saved["masks"]):
        assert torch.equal(got, want)
    assert resumed.step_count == trainer.global_step == 12
    weights = [m.weight for m in module.net if isinstance(m, nn.Linear)]
    zeros, n = zeros_and_entries(weights)
    assert zeros == round(SPARSITY * n)
    # masks only grow: what the checkpoint pruned is still pruned
    for (m, name), bits in zip(resumed.targets, saved["masks"]):
        kept_then = torch.from_numpy(np.unpackbits(bits.numpy(), bitorder="little")[: m.weight.numel()].astype(bool))
        kept_then = kept_then.view_as(m.weight)
        assert not (resumed.mask(m, name) & ~kept_then).any()


def test_readme_lightning_example_runs_as_written(tmp_path, monkeypatch):
    lightning_module()  # skips without Lightning
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "readme_example"}
    exec(compile(readme_block("### In a Lightning Trainer"), "README.md", "exec"), scope)
    weights = [m.weight for m in scope["model"].modules() if isinstance(m, nn.Linear)]
    zeros, n = zeros_and_entries(weights)
    assert zeros == round(0.5 * n)


# ------------------------------------------------------------ missing library


@pytest.mark.parametrize("module,blocked,package", [
    ("transformers", ["transformers"], "transformers"),
    ("lightning", ["lightning", "pytorch_lightning"], "lightning"),
])
def test_a_missing_library_is_named(module, blocked, package):
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{b!r}] = None\n" for b in blocked)
        + "import pruneext\n"
        + "try:\n"
        + f"    import pruneext.integrations.{module}\n"
        + "except ImportError as e:\n"
        + "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert f"pip install {package}" in out.stdout and f"pruneext.integrations.{module}" in out.stdout


def test_readme_wanda_2_4_of_a_causal_lm():
    """README's Wanda-style one-shot 2:4 pruning on a tiny LLaMA (CPU,
    float32: to_semi_structured leaves every layer dense and says why)."""
    model = tiny_llama()
    layers = [m for m in model.model.layers.modules() if isinstance(m, nn.Linear)]
    calibration = [torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    seen = []  # the inputs of one layer, captured independently of pruneext
    probe = layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().reshape(-1, 32)))
    with torch.no_grad(), pruneext.ActivationNorms(model, modules=layers) as norms:
        for batch in calibration:
            model(batch)
    probe.remove()
    wanda = layers[0].weight.detach().abs() * torch.cat(seen).pow(2).sum(0).sqrt()
    for layer in layers:
        pruneext.nm_structured(layer, "weight", importance_scores=norms.scores(layer))
    groups = wanda.reshape(-1, 4)
    expected = torch.ones_like(groups).scatter_(1, groups.topk(2, dim=1, largest=False).indices, 0)
    assert torch.equal(layers[0].weight_mask, expected.reshape(wanda.shape))
    for layer in layers:
        assert bool(((layer.weight.reshape(-1, 4) == 0).sum(1) >= 2).all())
    report = pruneext.to_semi_structured(model)
    assert report.converted == [] and len(report.skipped) == len(layers) + 1  # and lm_head
    assert model(calibration[0]).logits.shape == (2, 16, 64)
