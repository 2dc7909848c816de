"""The Dockerfile without a container engine: hadolint finds nothing, every COPY source exists, the
targets and entry points the chart and docs/api.md name exist, and the torch_npu version check works."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import ROOT, by_kind, run, venv_tool

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def project_version() -> str:
    return re.search(r'^version = "([^"]+)"', PYPROJECT, re.M)[1]


def console_scripts() -> dict[str, str]:
    section = PYPROJECT[PYPROJECT.index("[project.scripts]") :].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+) = "([^"]+)"', section, re.M))


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [(m[1].upper(), m[2]) for m in re.finditer(r"^([A-Za-z]+)\s+(.*)$", text, flags=re.M)]


def test_hadolint_has_nothing_to_say():
    proc = run(
        venv_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE), check=False
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_every_copy_source_exists():
    copies = [args for op, args in instructions() if op == "COPY" and "--from" not in args]
    assert copies
    for args in copies:
        *sources, _dest = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not re.search(
                rf"^/?{re.escape(source.rstrip('/'))}/?$", (ROOT / ".dockerignore").read_text(), re.M
            )


def test_stages_targets_and_users():
    froms = [args.split() for op, args in instructions() if op == "FROM"]
    stages = {words[-1] for words in froms if len(words) >= 3 and words[-2].upper() == "AS"}
    assert {"wheel", "operator", "trainer"} <= stages
    text = DOCKERFILE.read_text()
    operator = text[text.index("AS operator") : text.index("AS trainer")]
    trainer = text[text.index("AS trainer") :]
    assert "torch" not in operator.replace("solov2-operator[operator]", ""), "the operator image has no torch"
    assert 'ARG TRAINER_EXTRAS="trainer,export"' in trainer, "the trainer image can export to ONNX"
    assert "[${TRAINER_EXTRAS}]" in trainer and "command -v torchrun" in trainer
    for stage in (operator, trainer):
        assert re.search(r"^USER 1000", stage, re.M), "non-root"
    assert "ENV PATH=/opt/solov2/scripts:$PATH" in trainer
    assert not re.search(r"(?i)(password|secret|token)\s*=", text)


def test_defaults_match_the_project():
    text = DOCKERFILE.read_text()
    assert set(re.findall(r"ARG VERSION=(\S+)", text)) == {project_version()}
    torch = re.search(r"ARG TORCH_VERSION=(\S+)", text)[1]
    vision = re.search(r"ARG TORCHVISION_VERSION=(\S+)", text)[1]
    assert f"torch=={torch} torchvision=={vision}" in (ROOT / "Makefile").read_text()


def test_entry_points_named_by_the_chart_and_the_api_doc_exist(render):
    scripts = console_scripts()
    assert "solov2" in scripts
    api = (ROOT / "docs" / "api.md").read_text()
    assert "-m solov2.cli train" in api and (ROOT / "trainer" / "solov2" / "cli.py").exists()
    assert 'ENTRYPOINT ["solov2"]' in DOCKERFILE.read_text()
    assert "torchrun" in api  # comes with torch; the trainer stage checks `command -v torchrun`
    (deployment,) = by_kind(render(), "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"][0]
    assert 'ENTRYPOINT ["solov2-operator"]' in DOCKERFILE.read_text() and command == "solov2-operator"
    assert command in scripts, f"{command}: the operator's console script is not in pyproject.toml"
    module, function = scripts[command].split(":")
    path = ROOT / "operator" / (module.replace(".", "/") + ".py")
    assert path.exists() and re.search(rf"^def {function}\(", path.read_text(), re.M), scripts[command]


def test_both_images_install_the_wheel_built_in_the_image_never_one_from_an_index(tmp_path):
    """Installing the project by name with ``--find-links`` would let pip take a higher version of that
    name from PyPI. Each image installs the wheel stage's file, and that file is what ``pip wheel``
    makes of this project (checked here with pip, offline)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    installs = [line for line in text.splitlines() if "pip install" in line and "solov2-operator" in line]
    assert len(installs) == 2, installs
    references = [
        re.search(r'"(solov2-operator\[[^\]]+\] @ file:///wheels/[^"]+)"', line) for line in installs
    ]
    assert all(references) and not any("--find-links" in line for line in installs), installs
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "--wheel-dir",
        str(tmp_path), str(ROOT))  # fmt: skip
    for reference in references:
        local = reference[1].replace("${VERSION}", project_version()).replace("/wheels/", f"{tmp_path}/")
        local = re.sub(r"\[\$\{TRAINER_EXTRAS\}\]", "[trainer,export]", local)
        proc = run(sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", local)
        assert f"Would install solov2-operator-{project_version()}" in proc.stdout


@pytest.mark.parametrize(
    ("torch_version", "npu_version", "ok"),
    [
        ("2.5.1+cpu", None, True),
        ("2.5.1", "2.5.1.post1", True),
        ("2.5.1", "2.5.1", True),
        ("2.6.0", "2.5.1", False),
    ],
)
def test_torch_npu_version_check(tmp_path, torch_version, npu_version, ok):
    """The build's check against fake installed distributions (torch_npu must match torch exactly)."""
    for name, version in (("torch", torch_version), ("torch_npu", npu_version)):
        if version:
            info = tmp_path / f"{name}-{version}.dist-info"
            info.mkdir()
            info.joinpath("METADATA").write_text(
                f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
            )
    check = ROOT / "docker" / "check_torch_npu.py"
    proc = subprocess.run([sys.executable, "-S", str(check)], env={"PYTHONPATH": str(tmp_path)}, capture_output=True,
                          text=True)  # fmt: skip
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
