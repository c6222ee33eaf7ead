"""The Dockerfile, checked without a Docker engine: known instructions, a pinned Triton -py3 base,
pins that agree with requirements.lock and scripts/setup.sh, COPY sources that exist, and a build
context that leaves the local environment out. A broken copy must be flagged."""
import json
import re
import shlex

import pytest

from tests.deploy.deploy_tools import REPO

DOCKERFILE = REPO / "Dockerfile"
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # comments inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, args = full.strip().partition(" ")
        result.append((word, args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def problems_of(text: str) -> list[str]:
    found = []
    steps = instructions(text)
    args = {}
    for word, rest in steps:
        if word.upper() not in INSTRUCTIONS:
            found.append(f"unknown instruction {word}")
        elif word != word.upper():
            found.append(f"instruction {word} not upper case")
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    base = next((rest for word, rest in steps if word == "FROM"), "")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), base)
    m = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d)\.(\d\d)-py3", base)
    if not m:
        found.append(f"base image {base!r} is not a pinned nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tag")
    elif (int(m[1]), int(m[2])) < (24, 12):
        found.append(f"base image {base} is older than 24.12")
    for word, rest in steps:
        if word in ("COPY", "ADD"):
            sources = [s for s in shlex.split(rest) if not s.startswith("--")][:-1]
            found += [f"{word} source {s} does not exist" for s in sources if s != "." and not (REPO / s).exists()]
    cmd = next((rest for word, rest in steps if word == "CMD"), None)
    if cmd is None or not cmd.startswith("["):
        found.append("CMD must be the exec (JSON) form, so tritonserver gets SIGTERM directly")
    return found


def test_dockerfile_has_no_problems():
    assert problems_of(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize("old, new, problem", [
    ("FROM ${TRITON_IMAGE}", "FORM ${TRITON_IMAGE}", "unknown instruction FORM"),
    ("tritonserver:24.12-py3", "tritonserver:latest", "not a pinned"),
    ("tritonserver:24.12-py3", "tritonserver:24.05-py3", "older than 24.12"),
    ("COPY requirements.lock ./", "COPY requirements.txt ./", "requirements.txt does not exist"),
    ('CMD ["python3", "-m", "deploy.triton_entrypoint"', "CMD python3 -m deploy.triton_entrypoint #", "exec (JSON)"),
])
def test_the_checker_flags_a_broken_dockerfile(old, new, problem):
    text = DOCKERFILE.read_text()
    assert old in text
    assert any(problem in p for p in problems_of(text.replace(old, new, 1)))


def test_pins_agree_with_the_lock_and_setup():
    text = DOCKERFILE.read_text()
    lock = dict(line.split("==") for line in (REPO / "requirements.lock").read_text().split() if "==" in line)
    torch_version = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)[1]
    assert torch_version == lock["torch"], "the image must run the torch version the tests ran"
    setup = (REPO / "scripts" / "setup.sh").read_text()
    no_deps = re.search(r"^NO_DEPS_PINS=\(([^)]*)\)", setup, re.M)[1].split()
    assert f"--no-deps {' '.join(no_deps)}" in text, f"{no_deps} must be installed as scripts/setup.sh does"
    assert "-r /tmp/requirements-without-torch.txt" in text and "-c /tmp/requirements-without-torch.txt" in text


def test_cmd_runs_the_entrypoint_and_the_context_leaves_local_state_out():
    steps = instructions(DOCKERFILE.read_text())
    cmd = json.loads(next(rest for word, rest in steps if word == "CMD"))
    assert cmd[:3] == ["python3", "-m", "deploy.triton_entrypoint"]
    assert (REPO / "deploy" / "triton_entrypoint.py").is_file()
    ignored = (REPO / "Dockerfile.dockerignore").read_text().split()
    for path in (".venv", ".cache", ".tools", ".git"):
        assert path in ignored, f"{path} would be sent to the build context"
