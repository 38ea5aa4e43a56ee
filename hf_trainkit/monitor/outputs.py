"""What `monitor` writes for a set of runs: the figures, summary.txt, summary.json (strict JSON) and report.html."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .load import MonitorInputError, RunHistory
from .progress import Progress


def render(runs: list[RunHistory], args, output_dir: Path, show_progress: bool,
           summaries: list[dict] | None = None) -> list[Path]:
    from .grouping import group_runs
    from .plots import write_figures
    from .report import write_report
    from .summary import format_ranking, format_summary, ranking, summarize

    output_dir.mkdir(parents=True, exist_ok=True)
    plotted = group_runs(runs, args.group_by) if args.group_by else runs
    entries = sum(len(s) for run in runs for s in run.train.values())
    progress = Progress(8 + len(args.metrics), show_progress and (len(runs) >= 4 or entries > 200_000), "plotting")
    figures = write_figures(plotted, output_dir, x=args.x, smooth=args.smooth, log_y=args.log_y,
                            metrics=args.metrics, progress=progress)
    progress.close()
    if summaries is None:
        summaries = [summarize(run) for run in runs]
    ranking_rows = ranking(summaries) if len(runs) > 1 else None
    text = "\n\n".join(format_summary(summary) for summary in summaries)
    if ranking_rows:
        metrics = ", ".join(sorted({str(row["metric"]) for row in ranking_rows}))
        text += f"\n\n== ranking (by the mean of the last 10% of logs of {metrics})\n"
        text += format_ranking(ranking_rows)
    written = list(figures)
    summary_txt = output_dir / "summary.txt"
    summary_txt.write_text(text + "\n", encoding="utf-8", errors="backslashreplace")
    summary_json = output_dir / "summary.json"
    summary_json.write_text(json.dumps(_strict_json({"runs": summaries, "ranking": ranking_rows}), indent=2,
                                       default=str, allow_nan=False), encoding="utf-8", errors="backslashreplace")
    written += [summary_txt, summary_json, write_report(output_dir / "report.html", summaries, figures, ranking_rows)]
    return written


def _strict_json(value):
    """NaN/Infinity -> None, so that summary.json parses in every JSON reader (not only Python's)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def prepare_output_dir(output_dir: Path):
    """Create --output-dir and make sure files can be written there, before any run is read."""
    if output_dir.exists() and not output_dir.is_dir():
        raise MonitorInputError(f"--output-dir {output_dir}: a file is there, not a directory.")
    probe = output_dir / f".hf-trainkit-write-test-{os.getpid()}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise MonitorInputError(f"--output-dir {output_dir}: cannot write there ({error.strerror or error}).") from None
