"""`report.html`: one self-contained page (images embedded as data URIs) that opens offline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from .summary import _fmt


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(path: Path, summaries: list[dict], figures: list[Path], ranking_rows: list[dict] | None) -> Path:
    rows = []
    for s in summaries:
        monitored = s.get("monitored") or {}
        final = (s.get("reward") or s["loss"]).get("final") if s["rl"] else s["loss"].get("final")
        rows.append([s["label"], s["global_step"], s["epochs"], s["runtime_seconds"], monitored.get("key"), final,
                     s["eval_loss"].get("final"), s["diagnosis"]["verdict"], s["diagnosis"]["reason"]])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>hf_trainkit monitor report</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}",
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}",
        "img{max-width:100%;border:1px solid #eee;margin:0.5em 0}.advice{color:#555}",
        "</style></head><body><h1>Training report</h1>",
        # Two different numbers, named apart: the run table shows the last logged value, the ranking the final level
        # (the mean of the last 10 % of logs, at least 5: one lucky or unlucky last batch does not decide it).
        _table(["run", "steps", "epochs", "runtime s", "monitored", "last logged (reward for RL, else loss)",
                "last eval_loss", "verdict", "why"], rows),
    ]
    for s in summaries:
        parts.append(f"<p class='advice'><b>{html.escape(s['label'])}</b>: "
                     f"{html.escape(s['diagnosis']['advice'])}</p>")
    if ranking_rows:
        parts.append("<h2>Ranking</h2>")
        parts.append("<p class='advice'>Ranked by each run's final level: the mean of its last 10 % of logs (at "
                     "least 5), not its last logged value.</p>")
        parts.append(_table(["rank", "run", "metric", "final level (mean of last 10 % of logs)", "verdict"],
                            [[r["rank"], r["label"], r["metric"], r["final"], r["verdict"]] for r in ranking_rows]))
    for figure in figures:
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(figure.stem)}</h3><img alt='{html.escape(figure.name)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8", errors="backslashreplace")
    return path
