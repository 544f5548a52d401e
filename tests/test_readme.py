"""The README's two set-up commands: CI runs the second one verbatim, the first one's sample exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)[1]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_ci_runs_the_readme_test_command():
    install_and_run, test = _readme_commands()[:2]
    assert "pytest" in test
    ci = (REPO / ".ci" / "run").read_text()
    assert test in ci.splitlines()


def test_first_command_upscales_a_shipped_sample():
    first = _readme_commands()[0]
    m = re.search(r"vsr run (\S+) (\S+)", first)
    assert m and (REPO / m[1]).is_file()
