"""Sparsity schedules for pruneext.MagnitudePruner: callables step -> float.

    pruner = pruneext.MagnitudePruner(model, pruneext.schedules.cubic(0.9, end=10_000, every=100))

A schedule gives the fraction of the entries in scope that are zero at a
step. The pruner only ever prunes more (masks grow), so a schedule should not
decrease; where it does, the masks stay as they are.
"""
import numbers


def _fraction(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return float(value)


def _step(value, what, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer step, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value}")
    return int(value)


class Constant:
    """The same sparsity at every step."""

    def __init__(self, sparsity):
        self.sparsity = _fraction(sparsity, "sparsity")

    def __call__(self, step):
        return self.sparsity

    def __repr__(self):
        return f"constant({self.sparsity})"


def constant(sparsity):
    return Constant(sparsity)


class Cubic:
    """Zhu & Gupta (2017), "To prune, or not to prune":
    s_t = final + (initial - final) * (1 - (t - begin) / (end - begin))^3
    for begin <= t <= end, evaluated at the last multiple of `every` steps
    since `begin` (so the masks change every `every` steps); `initial`
    before `begin`, `final` from `end` on. It prunes fast early, while the
    network can recover, and slowly near the final sparsity."""

    def __init__(self, final, initial=0.0, begin=0, end=None, every=1):
        self.final = _fraction(final, "final sparsity")
        self.initial = _fraction(initial, "initial sparsity")
        if self.initial > self.final:
            raise ValueError(f"initial sparsity {initial} exceeds the final {final}: masks only grow")
        if end is None:
            raise TypeError("cubic() needs end=, the step at which the final sparsity is reached")
        self.begin = _step(begin, "begin", 0)
        self.end = _step(end, "end", self.begin + 1)
        self.every = _step(every, "every", 1)

    def __call__(self, step):
        if step < self.begin:
            return self.initial
        if step >= self.end:
            return self.final
        t = self.begin + (step - self.begin) // self.every * self.every
        left = 1.0 - (t - self.begin) / (self.end - self.begin)
        # the same formula, written so that t = begin gives `initial` exactly
        return self.initial + (self.final - self.initial) * (1.0 - left**3)

    def __repr__(self):
        return (
            f"cubic({self.final}, initial={self.initial}, begin={self.begin}, end={self.end}, every={self.every})"
        )


def cubic(final, initial=0.0, begin=0, end=None, every=1):
    return Cubic(final, initial, begin, end, every)
