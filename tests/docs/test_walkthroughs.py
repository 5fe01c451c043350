"""The documentation's shell walkthroughs run as written, so the docs cannot drift.

A block marked `<!-- walkthrough: NAME -->` in the README or `docs/` is run by bash with
`set -e` in a scratch folder (with `projections/` of the repository beside it, as in a
checkout), on the embedded default: no broker, no registry. The blocks of the docs share one
folder, in reading order, after a small `crm-ledger demo`, the way a reader would run them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- walkthrough: ([\w-]+) -->\n```sh\n(.*?)```", re.S)
#: The docs' walkthroughs in the order a reader follows them.
DOC_ORDER = ("change-a-metric", "reward-periods", "auditors")

pytestmark = pytest.mark.slow


def _blocks() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name, body in BLOCK.findall(path.read_text(encoding="utf-8")):
            assert name not in found, f"walkthrough {name!r} appears twice"
            found[name] = body
    return found


def _run(script: str, folder: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_LEDGER_")}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    # `. .venv/bin/activate` lines are for a reader's shell; the test runs in the venv already.
    body = "\n".join(line for line in script.splitlines() if not line.startswith(". .venv/"))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"{body}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


def test_every_walkthrough_is_known() -> None:
    assert set(_blocks()) == {"everyday", *DOC_ORDER}


def test_the_readme_everyday_walkthrough(tmp_path: Path) -> None:
    _run(_blocks()["everyday"], tmp_path)


def test_the_docs_walkthroughs_in_reading_order(tmp_path: Path) -> None:
    (tmp_path / "projections").symlink_to(ROOT / "projections")
    blocks = _blocks()
    demo = "crm-ledger demo --customers 300 --employees 16 --months 3 --seed 42 > /dev/null\n"
    _run(demo + "\n".join(blocks[name] for name in DOC_ORDER), tmp_path)
