"""MagnitudePruner in a Lightning Trainer:

    pruner = pruneext.MagnitudePruner(model, pruneext.schedules.cubic(0.7, end=1000, every=50))
    trainer = L.Trainer(callbacks=[PrunerCallback(pruner)])
    trainer.fit(lit_module)                        # or trainer.fit(lit_module, ckpt_path="last.ckpt")

Lightning counts optimizer steps in `trainer.global_step`; after each
training batch (`on_train_batch_end`, past the batch's optimizer step, if
it took one) the pruner steps until it has stepped as often, so it steps
once per optimizer step with gradient accumulation too. (Not
`on_before_zero_grad`: Lightning 2 zeroes the gradients inside the next
step's closure, after that step's forward.) The pruner's state (step, sparsity, bit masks) is this callback's
state_dict, so it travels inside Lightning's checkpoints and comes back
when a fit resumes from one (after the weights, which keep their zeros).
Works with `lightning` or the older `pytorch_lightning` package.
"""
from . import missing

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as e:  # pragma: no cover - exercised where Lightning is absent
        raise missing("lightning", "lightning") from e


class PrunerCallback(Callback):
    """Steps `pruner` after every optimizer step; its state is saved and
    restored with Lightning's checkpoints."""

    def __init__(self, pruner):
        self.pruner = pruner

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        while self.pruner.step_count < trainer.global_step:
            self.pruner.step()

    def state_dict(self):
        return self.pruner.state_dict()

    def load_state_dict(self, state_dict):
        self.pruner.load_state_dict(state_dict)
