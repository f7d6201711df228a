"""MagnitudePruner in a Hugging Face Trainer:

    pruner = pruneext.MagnitudePruner(model, pruneext.schedules.cubic(0.7, end=1000, every=50))
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[PrunerCallback(pruner)])
    trainer.train()                                # or trainer.train(resume_from_checkpoint=True)

`on_step_end` is the Trainer's point after `optimizer.step()`, the
scheduler's step and `zero_grad()`: the pruner steps there, once per
optimizer step (gradient accumulation included). At each checkpoint the
pruner's state (step, sparsity, bit masks) is saved beside the model as
`pruneext_pruner.pt`; when a run resumes, the Trainer has loaded the
weights (they keep their zeros) and `on_train_begin` loads the masks from
the checkpoint it resumed from: `output_dir/checkpoint-<step>` (what
`resume_from_checkpoint=True` picks), or `resume_from` where the checkpoint
is elsewhere. A resumed run without that file raises: going on with fresh
masks would prune anew.
"""
import os

import torch

from . import missing

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised where transformers is absent
    raise missing("transformers", "transformers") from e

STATE_FILE = "pruneext_pruner.pt"


class PrunerCallback(TrainerCallback):
    """Steps `pruner` after every optimizer step and keeps its state in the
    Trainer's checkpoints. `resume_from`: the checkpoint folder to load the
    pruner from when a run resumes, where it is not
    `args.output_dir/checkpoint-<step>`."""

    def __init__(self, pruner, resume_from=None):
        self.pruner = pruner
        self.resume_from = resume_from

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0 or self.pruner.step_count == state.global_step:
            return  # a fresh run, or the pruner already stands where the Trainer does
        folder = self.resume_from or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        path = os.path.join(folder, _state_file(self.pruner))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"PrunerCallback: the Trainer resumes at step {state.global_step} but {path} does not exist; "
                "pass PrunerCallback(pruner, resume_from=<the checkpoint folder>)"
            )
        self.pruner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def on_step_end(self, args, state, control, **kwargs):
        self.pruner.step()

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero and not self.pruner.sharded:
            return  # the masks of unsharded weights are the same on every process: one copy
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(self.pruner.state_dict(), os.path.join(folder, _state_file(self.pruner)))


def _state_file(pruner):
    """The pruner's file in a checkpoint: one, or one per process where each
    holds the masks of its own shards (FSDP2)."""
    if not pruner.sharded:
        return STATE_FILE
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return f"pruneext_pruner-rank{rank}.pt"
