"""Stop an image build whose torch_npu is not built for the installed torch (they must match exactly)."""

from importlib.metadata import PackageNotFoundError, version


def base(v: str) -> str:
    """2.5.1+cpu -> 2.5.1; torch_npu's 2.5.1.post1 -> 2.5.1."""
    return v.split("+")[0].split(".post")[0]


torch = base(version("torch"))
try:
    npu = base(version("torch-npu"))
except PackageNotFoundError:
    npu = None
if npu is not None and npu != torch:
    raise SystemExit(f"torch_npu {npu} is not built for torch {torch}: their versions must match exactly")
print(f"torch {torch}, torch_npu {npu or 'not installed'}")
