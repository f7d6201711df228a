"""What is measured: one `Case` per (mode, size or model, dtype, amount, device).

Modes
  single     l1_unstructured(module, "weight", amount) on one fresh parameter
             of `size` elements (shape (size // 1024, 1024), else (size,)).
  iterative  the same call on a parameter already pruned by 50 % (the setup,
             not timed, applies one shared 50 % L1 mask with custom_from_mask),
             so the new amount is a fraction of the entries still alive; this
             is torch's PruningContainer path.
  global     global_unstructured(params, L1Unstructured, amount) over a list
             of model-shaped parameters (see MODELS).

Every input is generated from a fixed seed (standard normal values, made in
the case's dtype), so all contenders see the same tensors.
"""
import itertools
from dataclasses import asdict, dataclass
from typing import Optional

import torch

MODES = ("single", "iterative", "global")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"f32": "float32", "fp32": "float32", "bf16": "bfloat16", "f16": "float16", "fp16": "float16",
                 "half": "float16", "float": "float32"}
SHORT_DTYPE = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}

ITERATIVE_PRE_AMOUNT = 0.5  # the iterative mode's first, untimed, prune


def _llama_like(dim, ffn, blocks, vocab):
    """Linear-weight shapes of a LLaMA-style decoder: per block q, k, v, o
    (dim x dim), gate and up (ffn x dim), down (dim x ffn); plus the
    embedding and the LM head (vocab x dim)."""
    block = [(dim, dim)] * 4 + [(ffn, dim), (ffn, dim), (dim, ffn)]
    return block * blocks + [(vocab, dim), (vocab, dim)]


# Parameter lists of the global mode: name -> list of 2-D shapes.
MODELS = {
    # scaled-down transformers (the LLaMA-7B ratios, ffn = 2.6875 * dim)
    "warmup": _llama_like(16, 43, 1, 64),  # the global mode's warm-up (Case.small)
    "tiny-llama": _llama_like(64, 172, 2, 500),  # 0.2 M parameters, for --quick
    "small-llama": _llama_like(128, 344, 4, 2000),  # 1.3 M
    "mid-llama": _llama_like(512, 1376, 4, 8000),  # 16.8 M, --full
    # the case behind DESIGN.md's "about 12x the parameter bytes" (67 M)
    "16xlinear2048": [(2048, 2048)] * 16,
    # LLaMA-7B (6.7 B parameters, 13.5 GB in bf16): GPU only, with --llama
    "llama-7b": _llama_like(4096, 11008, 32, 32000),
}
GPU_ONLY_MODELS = {"llama-7b"}


def model_numel(model):
    return sum(r * c for r, c in MODELS[model])


@dataclass(frozen=True)
class Case:
    mode: str
    dtype: str
    amount: float
    device: str
    size: int  # elements in total (single/iterative: the one tensor; global: the list)
    model: Optional[str] = None  # global mode only

    @property
    def torch_dtype(self):
        return DTYPES[self.dtype]

    @property
    def shapes(self):
        """Shapes of the parameters this case prunes."""
        if self.mode == "global":
            return list(MODELS[self.model])
        return [(self.size // 1024, 1024) if self.size % 1024 == 0 and self.size >= 1024 else (self.size,)]

    @property
    def param_bytes(self):
        return self.size * self.torch_dtype.itemsize

    @property
    def size_label(self):
        if self.model is not None:
            return self.model
        return size_label(self.size)

    @property
    def label(self):
        return f"{self.mode} {self.size_label} {self.dtype} amount={self.amount:g} {self.device}"

    def pre_pruned(self):
        """Entries the iterative mode's first, untimed, prune zeroes (0 elsewhere)."""
        return round(ITERATIVE_PRE_AMOUNT * self.size) if self.mode == "iterative" else 0

    def op_k(self):
        """The k of the mask op: entries to prune among those still alive
        (torch's round(amount * alive), as L1Unstructured computes it)."""
        return round(self.amount * (self.size - self.pre_pruned()))

    def expected_pruned(self):
        """How many entries torch.nn.utils.prune zeroes (in total) for this case."""
        return self.pre_pruned() + self.op_k()

    def small(self):
        """A tiny case on the same code path (mode, dtype, device): the warm-up."""
        if self.mode == "global":
            return Case(self.mode, self.dtype, self.amount, self.device, model_numel("warmup"), "warmup")
        return Case(self.mode, self.dtype, self.amount, self.device, 4096)

    def to_dict(self):
        return asdict(self)

    @staticmethod
    def from_dict(d):
        return Case(**d)


def size_label(n):
    """2^k for powers of two, else the integer."""
    if n > 0 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


def parse_size(text):
    """'2^20', '1048576', '1M', '16Mi' -> elements."""
    t = text.strip().lower().replace("_", "")
    if "^" in t:
        base, exp = t.split("^")
        return int(base) ** int(exp)
    for suffix, mult in (("gi", 2**30), ("mi", 2**20), ("ki", 2**10), ("g", 10**9), ("m", 10**6), ("k", 10**3)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(float(t))


def parse_dtype(text):
    t = text.strip().lower()
    t = DTYPE_ALIASES.get(t, t)
    if t not in DTYPES:
        raise ValueError(f"unknown dtype {text!r}; choose from {', '.join(DTYPES)}")
    return t


def make_params(case, seed=0):
    """The parameters of `case`: nn.Parameters with standard normal values in
    the case's dtype, made directly on the device (no float32 detour)."""
    gen = torch.Generator(device=case.device)
    gen.manual_seed(seed)
    params = []
    for shape in case.shapes:
        t = torch.empty(shape, dtype=case.torch_dtype, device=case.device)
        t.normal_(generator=gen)
        params.append(torch.nn.Parameter(t))
    return params


# ---------------------------------------------------------------------------
# Presets: which cases a run measures.


@dataclass
class Plan:
    """The sweep: every field may be overridden from the command line."""

    sizes: list
    dtypes: list
    amounts: list
    modes: list
    models: list  # global mode
    # The default run keeps its budget by sweeping amounts other than 0.5
    # only up to this size (None: at every size).
    amount_sweep_max_size: Optional[int] = None
    # The global models measured in 16-bit dtypes too (others: float32 only);
    # None: every model in every dtype.
    models_all_dtypes: Optional[list] = None
    # Iterative sizes and amounts (None: the same as `sizes`, `amounts`).
    iterative_sizes: Optional[list] = None
    iterative_amounts: Optional[list] = None


def preset(name, device):
    """The plan of a preset ("quick", "default", "full") for a device type."""
    all_dtypes = list(DTYPES)
    amounts = [0.1, 0.5, 0.9]
    if name == "quick":
        return Plan(sizes=[2**12, 2**16], dtypes=["float32", "bfloat16"], amounts=[0.5],
                    modes=list(MODES), models=["tiny-llama"], models_all_dtypes=[])
    if device == "cuda":
        if name == "full":
            return Plan(sizes=[2**k for k in range(16, 31, 2)], dtypes=all_dtypes, amounts=amounts,
                        modes=list(MODES), models=["small-llama", "mid-llama", "16xlinear2048"])
        return Plan(sizes=[2**16, 2**20, 2**24, 2**26, 2**28], dtypes=all_dtypes, amounts=amounts,
                    modes=list(MODES), models=["small-llama", "16xlinear2048"], amount_sweep_max_size=2**24,
                    iterative_sizes=[2**16, 2**20, 2**24, 2**28])
    if name == "full":
        return Plan(sizes=[2**k for k in range(16, 27, 2)], dtypes=all_dtypes, amounts=amounts,
                    modes=list(MODES), models=["small-llama", "mid-llama", "16xlinear2048"])
    # CPU default: about two minutes on a 2-core machine.
    return Plan(sizes=[2**16, 2**20, 2**24], dtypes=all_dtypes, amounts=amounts, modes=list(MODES),
                models=["small-llama", "16xlinear2048"], amount_sweep_max_size=2**20,
                models_all_dtypes=["small-llama"], iterative_sizes=[2**16, 2**20, 2**22], iterative_amounts=[0.5])


# The GPU probe of issue 11 (scripts/gpu_check.sh second): the cases its
# targets name, at PROBE_SIZE elements and on the LLaMA-7B-shaped list.
PROBE_SIZE = 2**28


def probe_cases(device, size=None, model=None):
    """single `size` float32 at 0.5 and 0.9, single bfloat16 at 0.5,
    iterative float32 at 0.5 (a second 0.5 on a 50 % mask), global `model`
    bfloat16 at 0.5. Defaults: 2^28 elements and llama-7b (on CPU, where
    llama-7b is not measured, small-llama)."""
    size = size or PROBE_SIZE
    model = model or ("llama-7b" if device == "cuda" else "small-llama")
    if model in GPU_ONLY_MODELS and device != "cuda":
        raise ValueError(f"model {model!r} is measured on CUDA only")
    return [
        Case("single", "float32", 0.5, device, size),
        Case("single", "float32", 0.9, device, size),
        Case("single", "bfloat16", 0.5, device, size),
        Case("iterative", "float32", 0.5, device, size),
        Case("global", "bfloat16", 0.5, device, model_numel(model), model),
    ]


def build_cases(plan, device, llama=False):
    """The list of cases of `plan` on `device`, in run order (per mode, then
    dtype, then size, then amount)."""
    cases = []
    for mode in plan.modes:
        if mode == "global":
            for dtype, model, amount in itertools.product(plan.dtypes, plan.models, plan.amounts):
                if model in GPU_ONLY_MODELS and device != "cuda":
                    continue
                if plan.models_all_dtypes is not None and model not in plan.models_all_dtypes and dtype != "float32":
                    continue
                if plan.amount_sweep_max_size is not None and amount != 0.5 and model_numel(model) > plan.amount_sweep_max_size:
                    continue
                cases.append(Case(mode, dtype, amount, device, model_numel(model), model))
            if llama and device == "cuda" and "llama-7b" not in plan.models:
                # the LLaMA-7B-shaped list is measured in bfloat16, as it is trained
                for amount in plan.amounts:
                    if plan.amount_sweep_max_size is not None and amount != 0.5:
                        continue
                    cases.append(Case(mode, "bfloat16", amount, device, model_numel("llama-7b"), "llama-7b"))
            continue
        sizes, amounts = plan.sizes, plan.amounts
        if mode == "iterative":
            sizes, amounts = plan.iterative_sizes or sizes, plan.iterative_amounts or amounts
        for dtype, size, amount in itertools.product(plan.dtypes, sorted(sizes), amounts):
            if plan.amount_sweep_max_size is not None and amount != 0.5 and size > plan.amount_sweep_max_size:
                continue
            cases.append(Case(mode, dtype, amount, device, size))
    return cases
