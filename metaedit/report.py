"""The one report writer: rows as CSV, a Markdown report with tables, and line plots.

Used by the quickstart and by every experiment family. A :class:`Report` collects paragraphs,
tables (rows of dicts shown through :class:`Column` formatters) and figures (:class:`Panel` line
plots, drawn with matplotlib's Agg backend), then :meth:`Report.write` puts ``report.md``, its
figures and the named CSV files into one folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence


class Column(NamedTuple):
    """A table column: its header and how a row shows in it."""

    header: str
    show: Callable[[dict], str]


def column(header: str, key: str, spec: str = "{}", scale: float = 1.0, missing: str = "-") -> Column:
    """A column showing ``row[key] * scale`` through the format ``spec`` (``missing`` where absent)."""
    def show(row: dict) -> str:
        value = row.get(key)
        if value is None or value == "":
            return missing
        return spec.format(value * scale if isinstance(value, (int, float)) and scale != 1.0 else value)
    return Column(header, show)


class Series(NamedTuple):
    """One line of a panel: its label, x and y values, and a matplotlib format (e.g. ``"o-"``)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str = "o-"


class Panel(NamedTuple):
    """One set of axes: its title, axis labels, lines, and horizontal / vertical reference lines
    as ``(value, label)``."""

    title: str
    xlabel: str
    ylabel: str
    series: Sequence[Series]
    hlines: Sequence[tuple[float, str]] = ()
    vlines: Sequence[tuple[float, str]] = ()


def write_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """Rows as CSV; the columns are every key in first-seen order; lists and dicts as JSON."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})


def read_csv(path: str | Path) -> list[dict]:
    """Rows written by :func:`write_csv`: numbers, booleans and JSON lists back to Python values."""
    def parse(text: str) -> Any:
        if text == "":
            return None
        if text in ("True", "False"):
            return text == "True"
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    with open(path) as handle:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def markdown_table(rows: Sequence[dict], columns: Sequence[Column]) -> list[str]:
    """A Markdown table, one line per row."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.show(row) for c in columns) + " |" for row in rows]
    return lines


def plot(path: str | Path, panels: Sequence[Panel], width: float = 6.0, height: float = 4.0) -> None:
    """Draws the panels side by side into a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for line in panel.series:
            ax.plot(list(line.x), list(line.y), line.style, label=line.label)
        for value, label in panel.hlines:
            ax.axhline(value, color="grey", linestyle=":", label=label)
        for value, label in panel.vlines:
            ax.axvline(value, color="grey", linestyle=":", label=label)
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.series:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class Report:
    """A Markdown report under construction: call the adders in order, then :meth:`write`."""

    def __init__(self, title: str):
        self.lines: list[str] = [f"# {title}", ""]
        self.figures: dict[str, tuple[Sequence[Panel], float, float]] = {}

    def paragraph(self, *text: str) -> "Report":
        self.lines += [" ".join(text), ""]
        return self

    def heading(self, text: str) -> "Report":
        self.lines += [f"## {text}", ""]
        return self

    def bullets(self, items: Sequence[str]) -> "Report":
        self.lines += [f"- {item}" for item in items] + [""]
        return self

    def table(self, rows: Sequence[dict], columns: Sequence[Column]) -> "Report":
        self.lines += markdown_table(rows, columns) + [""]
        return self

    def figure(self, filename: str, panels: Sequence[Panel], width: float = 6.0, height: float = 4.0) -> "Report":
        self.figures[filename] = (panels, width, height)
        self.lines += [f"![{Path(filename).stem}]({filename})", ""]
        return self

    def markdown(self) -> str:
        return "\n".join(self.lines)

    def write(self, out: str | Path, tables: dict[str, Sequence[dict]] | None = None) -> Path:
        """Writes ``report.md``, every figure and each ``tables[name]`` as ``name`` (CSV) into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for filename, rows in (tables or {}).items():
            write_csv(out / filename, rows)
        for filename, (panels, width, height) in self.figures.items():
            plot(out / filename, panels, width, height)
        (out / "report.md").write_text(self.markdown())
        return out / "report.md"
