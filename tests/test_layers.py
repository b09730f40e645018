"""The import layers of DESIGN.md, enforced by import-linter (contracts in setup.cfg)."""

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_one_way(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "setup.cfg"), no_cache=True) == 0
