"""The README's own-Trainer example runs as printed (shrunk to one epoch on a small split)."""

from __future__ import annotations

import re
from pathlib import Path

from ntdh_bench.training import quiet_lightning

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_own_trainer_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Your own Trainer", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    code = code.replace(
        "SyntheticDataModule(gap=0.5)", "SyntheticDataModule(gap=0.5, n_samples=600, n_train=400)"
    )
    code = code.replace("max_epochs=30", "max_epochs=1, logger=False, enable_progress_bar=False")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with quiet_lightning():
        exec(compile(code, str(README), "exec"), namespace)
    assert 0.0 <= float(namespace["module"].trainer.callback_metrics["val/ncjsd"]) <= 0.7
