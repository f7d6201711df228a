"""Callbacks that drive a pruneext.MagnitudePruner from the training loops
people already use. Each lives in its own module and imports its library
only when imported itself:

    from pruneext.integrations.transformers import PrunerCallback   # Hugging Face Trainer
    from pruneext.integrations.lightning import PrunerCallback       # Lightning Trainer

Both call `pruner.step()` once per optimizer step, after the step (where
the pruner must run: it re-zeroes what the step moved and advances the
schedule), and keep the pruner's state with the trainer's checkpoints, so a
resumed run continues the schedule with the same masks.
"""


def missing(library, package):
    """The ImportError a module of this package raises without its library."""
    return ImportError(
        f"pruneext.integrations.{library} needs the {package!r} package, which is not installed "
        f"(pip install {package})"
    )
