"""Per-run summary and diagnosis (`summary.json`, `summary.txt`) and the ranking table of a comparison."""

from __future__ import annotations

from ..diagnostics import diagnose, is_finite
from ..metric_rules import default_mode, eval_counterpart
from .load import RunHistory, Series


def _stats(series: Series | None) -> dict:
    import numpy as np

    if series is None:
        return {}
    values = np.asarray(series.values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return {"points": len(series)}
    return {"first": float(values[0]), "final": float(values[-1]), "min": float(values.min()),
            "max": float(values.max()), "points": len(series)}


def monitored_metric(run: RunHistory) -> tuple[str, str] | None:
    """(key, mode) of the curve the verdict is based on: the reward for RL runs (the GRPO loss is ~0 by
    construction), else the train loss, else the eval loss."""
    if run.is_rl:
        key = "reward" if "reward" in run.train else next(
            k for k in run.train if k.startswith("rewards/") and k.endswith("/mean"))
        return key, default_mode(key)
    for key, table in (("loss", run.train), ("eval_loss", run.eval)):
        if key in table:
            return key, default_mode(key)
    return None


def summarize(run: RunHistory, smoothing: float = 0.6) -> dict:
    import numpy as np

    loss = _stats(run.train.get("loss"))
    summary = {
        "label": run.label,
        "source": str(run.source),
        "global_step": run.global_step,
        "max_steps": run.state.get("max_steps"),
        "epochs": run.last_epoch(),
        # A resumed run's train_runtime is its last segment's; hf_trainkit records the sum of all of them.
        "runtime_seconds": run.summary.get("total_train_runtime", run.summary.get("train_runtime")),
        "segments": int(run.summary.get("train_segments") or 1),
        "rl": run.is_rl,
        "loss": loss,
        "final_learning_rate": _stats(run.train.get("learning_rate")).get("final"),
        "eval_loss": _stats(run.eval.get("eval_loss")),
        "train_loss_reported": run.summary.get("train_loss"),
        "best_metric": run.state.get("best_metric"),
        "best_model_checkpoint": run.state.get("best_model_checkpoint"),
    }
    # An RL loss is not a quantity that should fall (GRPO's is ~0 by construction, PSR/NSR's follow the kept
    # samples): a "reduction" of it means nothing, so only supervised runs get one.
    if not run.is_rl and loss.get("first") not in (None, 0) and "final" in loss:
        summary["loss_reduction_percent"] = 100.0 * (loss["first"] - loss["final"]) / abs(loss["first"])
    if run.is_rl:
        key, _ = monitored_metric(run)
        summary["reward_key"] = key
        summary["reward"] = _stats(run.train.get(key))
    monitored = monitored_metric(run)
    if monitored is None:
        summary["diagnosis"] = {"verdict": "too short", "reason": "no loss, eval_loss or reward was logged",
                                "advice": "Nothing to judge: log a loss (--logging-steps).", "numbers": {}}
        return summary
    key, mode = monitored
    series = run.train.get(key) or run.eval.get(key)
    eval_key = eval_counterpart(run.eval, key) if key in run.train else None
    eval_series = run.eval.get(eval_key) if eval_key else None
    diagnosis = diagnose(
        series.steps, series.values, mode=mode, name=key,
        eval_steps=eval_series.steps if eval_series else (), eval_values=eval_series.values if eval_series else (),
        eval_name=eval_key or "eval_loss",
    )
    # What a comparison ranks by: the mean of the last 10% of logs (at least 5), not the last batch, which in RL is
    # one batch's luck.
    values = np.asarray(series.values, dtype=float)
    finite = values[np.isfinite(values)]
    tail = finite[-max(5, len(finite) // 10):].tolist()
    summary["monitored"] = {"key": key, "mode": mode, "final_mean": sum(tail) / len(tail) if tail else None,
                            "final_mean_of": len(tail)}
    summary["diagnosis"] = {
        "verdict": diagnosis.verdict, "reason": diagnosis.reason, "advice": diagnosis.advice,
        "numbers": diagnosis.numbers, "eval_metric": eval_key,
        "findings": [finding.message for finding in diagnosis.findings[:10]],
    }
    return summary


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if is_finite(value) else str(value)
    return str(value)


def format_summary(summary: dict) -> str:
    lines = [f"== {summary['label']} ({summary['source']})"]
    steps = f"{summary['global_step']}" + (f"/{summary['max_steps']}" if summary.get("max_steps") else "")
    segments = summary.get("segments") or 1
    lines.append(f"steps: {steps}   epochs: {_fmt(summary['epochs'], 3)}   runtime: "
                 f"{_fmt(summary['runtime_seconds'], 5)} s" + (f" ({segments} segments)" if segments > 1 else ""))
    loss = summary["loss"]
    if "final" in loss:
        reduction = summary.get("loss_reduction_percent")
        lines.append(f"loss: first {_fmt(loss['first'])}  final {_fmt(loss['final'])}  min {_fmt(loss['min'])}"
                     + (f"  reduction {reduction:.1f}%" if reduction is not None else ""))
    if summary["eval_loss"].get("final") is not None:
        ev = summary["eval_loss"]
        lines.append(f"eval_loss: first {_fmt(ev['first'])}  final {_fmt(ev['final'])}  best {_fmt(ev['min'])}")
    if summary.get("reward"):
        rw = summary["reward"]
        lines.append(f"reward ({summary['reward_key']}): first {_fmt(rw.get('first'))}  final {_fmt(rw.get('final'))}"
                     f"  best {_fmt(rw.get('max'))}")
    lines.append(f"final learning rate: {_fmt(summary['final_learning_rate'])}")
    diagnosis = summary["diagnosis"]
    lines.append(f"diagnosis: {diagnosis['verdict'].upper()} - {diagnosis['reason']}")
    lines.append(f"advice: {diagnosis['advice']}")
    for finding in diagnosis.get("findings", [])[:5]:
        lines.append(f"  - {finding}")
    return "\n".join(lines)


def monitored_final(summary: dict) -> float | None:
    """The final level of the run's monitored metric (reward, loss or eval loss): the mean of its last 10% of logs
    (at least 5), so that one lucky or unlucky last batch does not decide a ranking. None when there is none."""
    final = (summary.get("monitored") or {}).get("final_mean")
    return final if is_finite(final) else None


def ranking(summaries: list[dict]) -> list[dict]:
    """Runs ranked by their monitored metric's final value (reward: highest first, loss: lowest first)."""

    def sort_key(summary):
        final = monitored_final(summary)
        if final is None:
            return (1, 0.0)
        return (0, -final if summary["monitored"]["mode"] == "max" else final)

    ordered = sorted(summaries, key=sort_key)
    return [{"rank": index + 1, "label": s["label"], "metric": (s.get("monitored") or {}).get("key"),
             "final": monitored_final(s), "verdict": s["diagnosis"]["verdict"]} for index, s in enumerate(ordered)]


def format_ranking(rows: list[dict]) -> str:
    lines = ["rank  run                              metric            final (mean of last 10%)  verdict"]
    for row in rows:
        lines.append(f"{row['rank']:>4}  {row['label'][:32]:<32} {str(row['metric'])[:16]:<16} "
                     f"{_fmt(row['final']):>24}  {row['verdict']}")
    return "\n".join(lines)
