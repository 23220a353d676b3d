"""The commands the README and docs/ show, checked as written: every ```bash block's lines are read;
`make` targets must exist (dry run), `dvc exp run -S` flags must name params that load, `sqlora`
commands must parse as the CLI parses them, scripts must exist; and the cheap ones are run."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, SQLORA

PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.S | re.M)


def shell_lines(page: Path) -> list[str]:
    """The commands of a page's bash blocks: comments dropped, continued lines joined."""
    lines = []
    for block in _BLOCK.findall(page.read_text(encoding="utf-8")):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


COMMANDS = [(page.relative_to(REPO).as_posix(), line) for page in PAGES for line in shell_lines(page)]


def test_the_docs_show_commands():
    assert any(line.startswith("make repro") for _, line in COMMANDS)
    assert sum(line.startswith("dvc exp run") for _, line in COMMANDS) >= 5


def words(line: str) -> list[str]:
    """The first command of ``line``, without a synopsis's [optional parts], its {a,b} choices as the first."""
    line = re.sub(r"\s\[[^\]]*\]", "", line)
    line = re.sub(r"\{([^,{}\s]+)(?:,[^,{}\s]+)+\}", r"\1", line)
    return shlex.split(line.split("&&")[0].split(" | ")[0].split(";")[0])


@pytest.mark.parametrize("page, line", [c for c in COMMANDS if c[1].startswith("make ")], ids=lambda v: v[:60])
def test_make_targets_exist(page, line):
    target = words(line)[1:]
    result = subprocess.run(["make", "-n", *target], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "No rule to make target" not in result.stderr, f"{page}: {line}: {result.stderr}"


def set_flags(args: list[str]) -> dict[str, str]:
    flags = {}
    for i, arg in enumerate(args):
        if arg in ("-S", "--set-param"):
            key, _, value = args[i + 1].partition("=")
            flags[key] = value
    return flags


@pytest.mark.parametrize("page, line", [c for c in COMMANDS if c[1].startswith("dvc exp run")], ids=lambda v: v[:60])
def test_dvc_exp_run_flags_name_params_that_load(page, line, tmp_path):
    from sqlora.config import load_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in set_flags(words(line)).items():
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            assert isinstance(node.get(part), dict), f"{page}: {line}: no params group {part!r} for {key}"
            node = node[part]
        assert leaf in node, f"{page}: {line}: {key} is not in params.yaml"
        if "$" not in value and "<" not in value:  # a placeholder the reader fills in
            node[leaf] = yaml.safe_load(value) if value else None
        for path in re.findall(r"configs/\S+", value):
            assert (REPO / path).is_file(), f"{page}: {line}: {path} does not exist"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    load_params(tmp_path / "params.yaml")  # types and allowed values, as the stages check them


@pytest.mark.parametrize("page, line", [c for c in COMMANDS if c[1].startswith("sqlora ")], ids=lambda v: v[:60])
def test_sqlora_commands_parse(page, line, capsys):
    """Each documented sqlora command, as written (a synopsis without its [optional parts]), through the
    CLI's own argument parser: unknown subcommands or flags, bad choices, and required flags the docs leave
    out all fail here."""
    from sqlora.cli import build_parser

    try:
        build_parser().parse_args(words(line)[1:])
    except SystemExit as exc:
        assert exc.code == 0, f"{page}: {line}: {capsys.readouterr().err.strip().splitlines()[-1]}"


def test_the_parse_check_fails_on_a_missing_required_flag(capsys):
    from sqlora.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(words("sqlora export --model models/finetuned")[1:])  # --out is required
    assert "the following arguments are required: --out" in capsys.readouterr().err


@pytest.mark.parametrize("page, line", [c for c in COMMANDS if re.match(r"python3? \S+\.py", c[1])], ids=lambda v: v[:60])
def test_scripts_exist(page, line):
    assert (REPO / words(line)[1]).is_file(), f"{page}: {line}"


def test_the_cheap_commands_run(tmp_path):
    """Those that take seconds, run as written (in a scratch folder): the sample and its prepare."""
    for page, line in COMMANDS:
        args = words(line)
        if args[:2] == ["sqlora", "sample"]:
            result = subprocess.run(SQLORA + args[1:], cwd=tmp_path, capture_output=True, text=True)
            assert result.returncode == 0, f"{page}: {line}: {result.stderr}"
    assert any(line.startswith("sqlora sample") for _, line in COMMANDS)
    assert list(tmp_path.rglob("*.sqlite")) and (tmp_path / "data/sample/tables.json").is_file()
