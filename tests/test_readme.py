"""The README's commands stay true: CI runs its test command, and every CLI example parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lm.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def bash_lines() -> list[str]:
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        joined = block.replace("\\\n", " ")
        lines.extend(ln.split(" # ")[0].strip() for ln in joined.splitlines() if ln.strip())
    return lines


def test_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert len(commands) == 2
    serve, tests = commands
    assert serve.endswith("lmforge serve")
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci.splitlines()
    # true on a machine that sees only the public index: torch from PyTorch's CPU wheel index,
    # first, so `pip install -e .` finds it and does not resolve the CUDA build
    cpu_torch = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && "
    assert serve.startswith(cpu_torch) and tests.startswith(cpu_torch)


def lmforge_commands() -> list[str]:
    out = []
    for line in bash_lines():
        if not re.match(r"^([A-Z_]+=\S+ )*lmforge |.*-m lm\.cli ", line):
            continue
        words = shlex.split(line)
        while words and re.match(r"^[A-Z_]+=", words[0]):  # environment assignments
            words = words[1:]
        if words and words[0] == "lmforge":
            out.append(shlex.join(words[1:]))
        elif "-m lm.cli" in line:
            out.append(line.split("-m lm.cli", 1)[1].strip())
    return out


@pytest.fixture(scope="module")
def parser():  # noqa: ANN201
    return build_parser()


@pytest.mark.parametrize("command", lmforge_commands())
def test_cli_example_parses(command: str, parser) -> None:  # noqa: ANN001
    args = parser.parse_args(shlex.split(command))
    assert callable(args.func)


def test_every_subcommand_is_documented() -> None:
    documented = {c.split()[0] for c in lmforge_commands()}
    assert {"tokenizer", "train", "export", "generate", "score", "serve"} <= documented
