"""List the aten operators a torch_npu wheel implements for the NPU, one per line (``name`` or
``name.overload``), read from the operator tables the wheel ships (``torch_npu/csrc/aten/
npu_native_functions*.yaml``), without installing or importing it (that needs Ascend's CANN).

    pip download --no-deps torch-npu==2.14.0 -d /tmp/wheels
    python tools/npu_kernels.py /tmp/wheels/torch_npu-2.14.0-*.whl > tests/trainer/npu_kernels.txt

``tests/trainer/test_npu_ops.py`` checks every operator of the training step and of inference
against that list: an operator missing from it runs through torch_npu's CPU fallback, a copy to the
host and back on every call.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile

import yaml

TABLES = re.compile(r"^torch_npu/csrc/aten/npu_native_functions[a-z_]*\.yaml$")
SECTIONS = ("supported", "autograd", "symint")  # "custom": torch_npu's own npu:: operators
VERSION = re.compile(r"torch_npu-([^-]+)-")


def kernels(wheel: zipfile.ZipFile) -> set[str]:
    names: set[str] = set()
    for path in wheel.namelist():
        if not TABLES.match(path):
            continue
        table = yaml.safe_load(wheel.read(path))
        for section in SECTIONS:
            for entry in table.get(section) or ():
                signature = entry if isinstance(entry, str) else entry.get("func", "")
                names.add(signature.split("(", 1)[0].strip())
    names.discard("")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("wheel", help="a torch_npu wheel (torch_npu-VERSION-...whl)")
    args = parser.parse_args(argv)
    version = VERSION.search(args.wheel)
    with zipfile.ZipFile(args.wheel) as wheel:
        names = kernels(wheel)
    if not names:
        print(f"{args.wheel}: no operator tables found", file=sys.stderr)
        return 1
    print(f"# aten operators with an NPU kernel in torch_npu {version.group(1) if version else '?'}")
    print(f"# written by tools/npu_kernels.py from the wheel's operator tables ({len(names)} names)")
    print("\n".join(sorted(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
