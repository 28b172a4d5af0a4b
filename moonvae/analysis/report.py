"""One self-contained HTML report: plotly.js embedded once, every figure, and tables.

It opens offline, from a file or an MLflow artifact. Each figure's JSON sits in its
own `<script type="application/json">` and one loop renders them all, counting the
plots drawn and the script errors met; the counts land on `<body>` as
`data-rendered`, `data-expected` and `data-errors`, and in a status line at the top,
so a reader (or a headless browser) sees at once whether everything rendered.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs


@dataclass(frozen=True)
class Figure:
    title: str
    figure: go.Figure
    caption: str = ""


@dataclass(frozen=True)
class Table:
    title: str
    frame: pd.DataFrame
    caption: str = ""


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.caption { color: #555; max-width: 70em; }
#status { padding: 0.5em 1em; background: #eef; display: inline-block; }
#status.failed { background: #fdd; }
section { margin-bottom: 2.5em; }
"""

# Runs before plotly.js so that an error while loading it is recorded too.
ERROR_HOOK = """
window.moonvaeErrors = [];
window.addEventListener("error", (event) => window.moonvaeErrors.push(String(event.message)));
window.addEventListener("unhandledrejection", (event) => window.moonvaeErrors.push(String(event.reason)));
"""

RENDER = """
(async () => {
  const plots = Array.from(document.querySelectorAll("div.moonvae-plot"));
  let rendered = 0;
  for (const div of plots) {
    try {
      const spec = JSON.parse(document.getElementById(div.id + "-spec").textContent);
      await Plotly.newPlot(div, spec.data, spec.layout, {displaylogo: false});
      if (div.querySelector("svg.main-svg")) rendered += 1;
    } catch (error) {
      window.moonvaeErrors.push(div.id + ": " + error);
    }
  }
  const errors = window.moonvaeErrors;
  document.body.dataset.rendered = rendered;
  document.body.dataset.errors = errors.length;
  const status = document.getElementById("status");
  status.textContent = `${rendered} of ${plots.length} figures rendered` +
    (errors.length ? `; errors: ${errors.join(" | ")}` : "");
  if (errors.length || rendered !== plots.length) status.className = "failed";
})();
"""


def _script_json(figure: go.Figure) -> str:
    # "</" would end the <script> element early; "<\/" is the same string to JSON.
    return figure.to_json().replace("</", "<\\/")


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in table.frame.columns)
    rows = []
    for record in table.frame.itertuples(index=False):
        cells = []
        for value in record:
            if isinstance(value, float):
                cells.append(f'<td class="number">{value:.4g}</td>')
            else:
                cells.append(f"<td>{html.escape(str(value))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    caption = f'<p class="caption">{html.escape(table.caption)}</p>' if table.caption else ""
    return (
        f"<section><h2>{html.escape(table.title)}</h2>{caption}"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _figure_html(index: int, figure: Figure) -> str:
    caption = f'<p class="caption">{html.escape(figure.caption)}</p>' if figure.caption else ""
    return (
        f"<section><h2>{html.escape(figure.title)}</h2>{caption}"
        f'<div class="moonvae-plot" id="figure-{index}"></div>'
        f'<script type="application/json" id="figure-{index}-spec">{_script_json(figure.figure)}</script></section>'
    )


def render(title: str, intro: str, tables: Sequence[Table], figures: Sequence[Figure]) -> str:
    """The whole report as one HTML string (about 5 MB: plotly.js is most of it)."""
    body = "".join(_table_html(table) for table in tables) + "".join(
        _figure_html(index, figure) for index, figure in enumerate(figures)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script>{ERROR_HOOK}</script>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
        f'<body data-expected="{len(figures)}"><h1>{html.escape(title)}</h1>'
        f'<p class="caption">{html.escape(intro)}</p><p id="status">rendering...</p>'
        f"{body}<script>{RENDER}</script></body></html>\n"
    )


def write(path: Path, title: str, intro: str, tables: Sequence[Table], figures: Sequence[Figure]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(title, intro, tables, figures), encoding="utf-8")
    return path
