"""``sweep.html`` and ``trials.csv``: what a sweep tried, what won, and what mattered.

The page is self-contained like ``report.html`` (inline CSS, plots as base64 PNG);
its one script sorts the trials table when a column header is clicked.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from cnnlab import _html
from cnnlab._io import write_text
from cnnlab.config import dump_yaml
from cnnlab.experiments.space import SweepSpec

log = logging.getLogger("cnnlab")

SECTION_IDS = ("summary", "trials", "progress", "importance", "slices", "curves")
TOP_CURVES = 5
STATE_COLOURS = {"COMPLETE": "#0969da", "PRUNED": "#9a6700", "FAIL": "#cf222e"}

SORT_JS = """<script>
document.querySelectorAll('table.sortable th').forEach((th, col) => {
  th.style.cursor = 'pointer'; th.title = 'Sort by this column';
  th.addEventListener('click', () => {
    const body = th.closest('table').tBodies[0];
    const asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    const key = r => { const t = r.cells[col].textContent.trim(); const n = parseFloat(t);
      return t !== '' && !isNaN(n) && /^[-+.\\d]/.test(t) ? n : t.toLowerCase(); };
    const rows = Array.from(body.rows).sort((a, b) => { const x = key(a), y = key(b);
      if (typeof x !== typeof y) return typeof x === 'number' ? -1 : 1;
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
    rows.forEach(r => body.appendChild(r));
  });
});
</script>"""


def _rows(study, spec: SweepSpec) -> list[dict[str, Any]]:
    """One mapping per trial (WAITING trials of a queue left out)."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        value = (
            t.value
            if t.value is not None
            else (
                t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
            )
        )
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": value,
                "test_accuracy": t.user_attrs.get("test_accuracy"),
                "epochs": len(t.intermediate_values),
                "params": {p.name: t.params.get(p.name) for p in spec.params},
                "run_dir": t.user_attrs.get("run_dir", ""),
                "curve": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
                "retry_of": t.system_attrs.get("failed_trial"),
            }
        )
    return rows


def write_trials_csv(study, spec: SweepSpec, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    names = [p.name for p in spec.params]
    w.writerow(["trial", "state", spec.metric, "test_accuracy", "epochs", *names, "run_dir"])
    for r in _rows(study, spec):
        w.writerow(
            [
                r["trial"],
                r["state"],
                _num(r["value"]),
                _num(r["test_accuracy"]),
                r["epochs"],
                *[r["params"][n] for n in names],
                r["run_dir"],
            ]
        )
    write_text(path, buf.getvalue())


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _trials_table(rows, spec: SweepSpec, best: int | None) -> str:
    names = [p.name for p in spec.params]
    headers = ["trial", "state", spec.metric, "test accuracy", "epochs", *names, "run folder"]
    body, classes = [], []
    for r in rows:
        state = r["state"].lower()
        if r["retry_of"] is not None:
            state += f" (retry of {r['retry_of']})"
        body.append(
            [
                r["trial"],
                state,
                _num(r["value"]),
                _num(r["test_accuracy"]),
                r["epochs"],
                *[_fmt(r["params"][n]) for n in names],
                Path(r["run_dir"]).name,
            ]
        )
        classes.append("total" if r["trial"] == best else "")
    table = _html.table(headers, body, numeric=(0, 2, 3, 4), row_classes=classes)
    table = table.replace("<table>", '<table class="sortable">', 1)
    return (
        _html.note(
            "Click a column header to sort (again to reverse). The best trial is "
            "in bold; pruned trials stopped early, failed ones were interrupted or "
            "raised an error."
        )
        + f'<div class="scroll">{table}</div>'
        + SORT_JS
    )


def _figure(width=7.0, height=3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _progress_png(rows, spec: SweepSpec) -> bytes:
    fig, ax = _figure()
    best_so_far, running = [], None
    better = (lambda a, b: a < b) if spec.direction == "minimize" else (lambda a, b: a > b)
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x"), ("FAIL", "v")):
        pts = [
            (r["trial"], r["value"])
            for r in rows
            if r["state"] == state and r["value"] is not None and not math.isnan(r["value"])
        ]
        if pts:
            ax.scatter(
                *zip(*pts), marker=marker, color=STATE_COLOURS[state], label=state.lower(), zorder=3
            )
    for r in rows:
        if r["state"] == "COMPLETE" and r["value"] is not None:
            if running is None or better(r["value"], running):
                running = r["value"]
            best_so_far.append((r["trial"], running))
    if best_so_far:
        ax.step(*zip(*best_so_far), where="post", color="#1a7f37", label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel(spec.metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _html.fig_png(fig)


def _importances(study) -> dict[str, float] | None:
    """Optuna's default evaluator (PED-ANOVA) over the complete trials; None with too few."""
    import warnings

    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # "too small to compute": say so instead
            return optuna.importance.get_param_importances(study)
    except Exception as e:  # noqa: BLE001 - e.g. every complete trial tried the same values
        log.info("Parameter importances unavailable: %s", e)
        return None


def _importance_html(study) -> str:
    imp = _importances(study)
    if not imp:
        return _html.note(
            "Parameter importances need at least three complete trials whose parameters differ."
        )
    fig, ax = _figure(7.0, 0.5 + 0.4 * len(imp))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="#0969da")
    ax.set_xlabel("importance (PED-ANOVA, normalised to sum to 1)")
    fig.tight_layout()
    rows = [[n, f"{v:.3f}"] for n, v in imp.items()]
    return (
        _html.note(
            "How much each parameter decides whether a trial is among the best: "
            "Optuna's PED-ANOVA evaluator compares each parameter's values in the "
            "top trials with those of all complete trials."
        )
        + _html.img(_html.fig_png(fig), "parameter importances")
        + _html.table(["parameter", "importance"], rows, numeric=(1,))
    )


def _slice_png(rows, param) -> bytes:
    fig, ax = _figure(4.2, 3.0)
    categorical = param.kind == "categorical"
    order = [str(c) for c in param.encoded_choices()] if categorical else []
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        pts = [
            (r["params"][param.name], r["value"])
            for r in rows
            if r["state"] == state
            and r["value"] is not None
            and r["params"].get(param.name) is not None
        ]
        if not pts:
            continue
        xs = [order.index(str(x)) if categorical and str(x) in order else x for x, _ in pts]
        ax.scatter(
            xs,
            [y for _, y in pts],
            marker=marker,
            color=STATE_COLOURS[state],
            label=state.lower(),
            alpha=0.8,
        )
    if categorical:
        ax.set_xticks(range(len(order)), [o[:14] for o in order], rotation=20, fontsize=8)
    elif param.log:
        ax.set_xscale("log")
    ax.set_title(param.name, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _html.fig_png(fig)


def _curves_png(rows, spec: SweepSpec) -> bytes:
    fig, ax = _figure()
    reverse = spec.direction == "maximize"
    done = sorted(
        [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None],
        key=lambda r: r["value"],
        reverse=reverse,
    )
    for r in [r for r in rows if r["state"] == "PRUNED" and r["curve"]]:
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], color="#bbbbbb", lw=1, ls="--")
    for r in done[:TOP_CURVES]:
        ax.plot(
            range(1, len(r["curve"]) + 1),
            r["curve"],
            marker="o",
            ms=3,
            label=f"trial {r['trial']} ({r['value']:.4f})",
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(spec.metric)
    ax.grid(alpha=0.3)
    if done:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _html.fig_png(fig)


def render(study, spec: SweepSpec, folder) -> str:
    """The whole page."""
    from cnnlab.experiments.study import best_config

    rows = _rows(study, spec)
    counts = {
        s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
    }
    found = best_config(study, spec)
    best = found[0] if found else None
    tiles = [
        ("complete", str(counts["COMPLETE"])),
        ("pruned", str(counts["PRUNED"])),
        ("failed", str(counts["FAIL"])),
    ]
    if counts["RUNNING"]:
        tiles.append(("running", str(counts["RUNNING"])))
    if best is not None:
        tiles = [(f"best {spec.metric} (trial {best.number})", f"{best.value:.4f}")] + tiles
    space = _html.table(
        ["parameter", "searched over"], [[p.name, p.describe()] for p in spec.params]
    )
    summary = (
        _html.tiles(tiles)
        + _html.note(
            f"{spec.sampler.upper()} sampler, {spec.pruner['type']} pruning on {spec.metric} per "
            f"epoch, {spec.epochs or spec.base.get('epochs', 'default')} epochs per trial."
        )
        + space
    )
    if found is not None:
        cmd = "finetune" if spec.command == "finetune" else "train"
        chosen = [[p.name, _fmt(best.params.get(p.name))] for p in spec.params]
        summary += (
            f"<h3>Best config</h3>{_html.note(f'Repeat it: cnnlab {cmd} -c {folder.best}')}"
            + _html.table(["parameter", f"trial {best.number}"], chosen)
            + "<details><summary>The whole resolved config (best.yaml)</summary>"
            f"<pre><code>{_html.esc(dump_yaml(found[1]))}</code></pre></details>"
        )
    slices = "".join(_html.img(_slice_png(rows, p), f"slice {p.name}") for p in spec.params)
    sections = [
        ("summary", "Summary", summary),
        ("trials", "Trials", _trials_table(rows, spec, best.number if best else None)),
        (
            "progress",
            f"{spec.metric} by trial",
            _html.note(
                "Each trial's best epoch (pruned: its last epoch); the line is the best "
                "complete trial so far."
            )
            + _html.img(_progress_png(rows, spec), "progress"),
        ),
        ("importance", "Parameter importances", _importance_html(study)),
        (
            "slices",
            "Parameters against the metric",
            _html.note(
                "One slice per parameter: every trial's metric against the value it "
                "tried (o complete, x pruned)."
            )
            + f'<div class="figs">{slices}</div>',
        ),
        (
            "curves",
            "Learning curves",
            _html.note(
                f"{spec.metric} per epoch of the {TOP_CURVES} best complete trials; "
                "pruned trials dashed in grey."
            )
            + _html.img(_curves_png(rows, spec), "curves"),
        ),
    ]
    return _html.page(
        f"Sweep {spec.name}", str(folder.path), sections, footer="Written by cnnlab sweep"
    )


def try_write_report(study, spec: SweepSpec, folder) -> Path | None:
    """Write ``sweep.html``; a failure only warns (the study is what matters)."""
    try:
        return write_text(folder.report, render(study, spec, folder))
    except Exception as e:  # noqa: BLE001
        log.warning("sweep.html could not be written (%s: %s)", type(e).__name__, e)
        return None
