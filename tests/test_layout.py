"""The shape of pruneext/backends/ (pruneext/backends/README.md), read from
the imports of its modules: no backend imports another, Triton imports
nothing from the oracle, and the contract imports no backend. A test, so
that the next shortcut (a check borrowed from the oracle) fails here
instead of letting a bug pass both sides of a comparison."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pruneext"
BACKENDS = PACKAGE / "backends"
# The backends, by the name of their module (a file or a folder) under
# pruneext/backends/; the registry (__init__.py) and contract.py are not.
BACKEND_MODULES = ("reference", "native", "triton")


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_of(source, name, is_package):
    """The pruneext modules that module `name` (whose source is `source`)
    imports, absolute, as far as the source names them (`from . import x`
    counts as importing x)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "pruneext" or m.startswith("pruneext.")}


def _imports(path):
    return _imports_of(path.read_text(), _module_name(path), path.name == "__init__.py")


def _backend_of(module):
    """The backend a module belongs to (by its name), or None."""
    parts = module.split(".")
    if parts[:2] == ["pruneext", "backends"] and len(parts) > 2 and parts[2] in BACKEND_MODULES:
        return parts[2]
    return None


SOURCES = sorted(BACKENDS.rglob("*.py"))


def test_every_backend_is_there():
    names = {p.name if p.is_dir() else p.stem for p in BACKENDS.iterdir()}
    assert set(BACKEND_MODULES) <= names
    assert (BACKENDS / "contract.py").is_file()


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_no_backend_imports_another(path):
    own = _backend_of(_module_name(path))
    others = {m for m in _imports(path) if _backend_of(m) not in (None, own)}
    assert not others, f"{path.relative_to(PACKAGE)} imports another backend: {sorted(others)}"


@pytest.mark.parametrize("path", sorted((BACKENDS / "triton").rglob("*.py")), ids=lambda p: p.name)
def test_triton_imports_nothing_from_the_oracle(path):
    oracle = {m for m in _imports(path) if _backend_of(m) == "reference" or m == "pruneext.backends.reference"}
    assert not oracle, f"{path.relative_to(PACKAGE)} imports the oracle: {sorted(oracle)}"


def test_contract_imports_no_backend_and_no_pruneext_module():
    found = _imports(BACKENDS / "contract.py")
    assert not found, f"contract.py imports {sorted(found)}; it is the base every backend stands on"


def test_the_layout_test_sees_an_import_between_backends():
    """The checks above are only as good as _imports_of: relative imports of
    other backends, as the old triton/select.py and triton/ops.py had, must
    be seen."""
    source = "from ..reference import check_values\nfrom .. import native\nfrom . import kernels\n"
    found = _imports_of(source, "pruneext.backends.triton.select", is_package=False)
    assert {_backend_of(m) for m in found} == {None, "reference", "native", "triton"}


def test_mask_formats_follow_the_protocol():
    """Every mask format MagnitudePruner offers has the members of
    lean_masks.MaskFormat (the protocol a new format is written against)."""
    import torch
    from pruneext import lean_masks

    weights = [torch.ones(3, 5)]
    for name in lean_masks.FORMATS:
        masks = lean_masks.new_masks(name, weights)
        assert isinstance(masks, lean_masks.MaskFormat) and masks.name == name
