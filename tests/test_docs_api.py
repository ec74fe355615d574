"""docs/api.md is executable documentation: every ```python block runs, in order, in one namespace."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_api_doc_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "api_doc"}
    for i, code in enumerate(blocks, 1):
        exec(compile(code, f"{DOC.name} block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "train_steps: -3 is not a whole number >= 0" in out and "custom:Sequential" in out
    assert (tmp_path / "protected" / "manifest.json").exists() and (tmp_path / "protected.noise.npy").exists()
    assert namespace["grid"]["trained"] == 4 and (tmp_path / "grid-out" / "tables.md").exists()
