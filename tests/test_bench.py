"""The benchmark runs at a tiny size, so it cannot rot; its figures are not checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_and_writes_only_where_told(tmp_path: Path) -> None:
    committed = ROOT / "BENCHMARKS.md"
    before = committed.read_bytes() if committed.exists() else None
    output = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = output.read_text(encoding="utf-8")
    for heading in ("## Machine", "### Render", "### Scrape", "### Poll", "### Memory",
                    "### Start-up", "## Targets"):  # fmt: skip
        assert heading in text, heading
    assert "Python: " in text and "prometheus-client" in text
    assert "Traceback" not in result.stderr
    # The committed table stays the one from the last full run.
    assert (committed.read_bytes() if committed.exists() else None) == before


def test_bench_command_offers_the_quick_mode() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--quick" in result.stdout
