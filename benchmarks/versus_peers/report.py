"""Reading the runs: medians per model and framework, paired ratios to cnnspec, the
markdown table, and the table of an earlier run's --json file."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.versus_peers.data import Run


@dataclass
class Row:
    model: str
    framework: str
    params: int
    buffers: int
    epoch_seconds: float  # median
    epoch_seconds_min: float
    epoch_seconds_max: float
    images_per_second: float
    seconds_to_target: float | None  # median over the repeats that reached it
    reached: int  # repeats that reached the target
    final_accuracy: float  # median over repeats
    peak_memory: int  # bytes, max over repeats
    ratio_epoch: float | None = None  # this / cnnspec, seconds per epoch
    ratio_to_target: float | None = None
    notes: list[str] = field(default_factory=list)
    epochs_trained: list[int] = field(default_factory=list)  # per repeat (Keras may stop early)


def summarize(runs: list[Run], counts: dict, target: float, tolerance: float) -> list[Row]:
    rows = []
    for model in dict.fromkeys(run.model for run in runs):
        by_framework = {}
        for run in runs:
            if run.model == model:
                by_framework.setdefault(run.framework, []).append(run)
        for framework, mine in by_framework.items():
            epochs = [s for run in mine for s in run.epoch_seconds]
            reached = [s for run in mine if (s := run.seconds_to(target)) is not None]
            median_epoch = statistics.median(epochs)
            rows.append(Row(model, framework, *counts[model][framework], median_epoch, min(epochs), max(epochs),
                            mine[0].images_per_epoch / median_epoch,
                            statistics.median(reached) if reached else None, len(reached),
                            statistics.median(run.ending_accuracy for run in mine),
                            max(run.peak_memory for run in mine),
                            epochs_trained=[len(run.epoch_ends) for run in mine]))
        mine = [row for row in rows if row.model == model]
        for row in mine:
            if "cnnspec" in by_framework:
                row.ratio_epoch, row.ratio_to_target = paired_ratios(by_framework[row.framework],
                                                                     by_framework["cnnspec"], target)
        accuracies = [row.final_accuracy for row in mine]
        if max(accuracies) - min(accuracies) > tolerance:
            for row in mine:
                row.notes.append(f"final accuracies differ by {100 * (max(accuracies) - min(accuracies)):.1f} "
                                 f"points (> {100 * tolerance:g})")
    return rows


def paired_ratios(runs: list[Run], base_runs: list[Run], target: float) -> tuple[float, float | None]:
    """Median over repeats of this framework's time / cnnspec's time in the same repeat
    (per epoch, over the whole fit; and to the target where both reached it): load that
    drifts between repeats on a shared machine cancels within each pair."""
    base = {run.repeat: run for run in base_runs}
    pairs = [(run, base[run.repeat]) for run in runs if run.repeat in base]
    epochs = statistics.median((run.epoch_ends[-1] / len(run.epoch_ends)) / (other.epoch_ends[-1] / len(other.epoch_ends))
                               for run, other in pairs)
    reached = [run.seconds_to(target) / other.seconds_to(target) for run, other in pairs
               if run.seconds_to(target) is not None and other.seconds_to(target) is not None]
    return epochs, statistics.median(reached) if reached else None


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(rows: list[Row], target: float, repeats: int) -> list[str]:
    lines = ["| model | framework | params (+ buffers) | s/epoch median (min-max) | images/s | "
             f"s to {100 * target:g}% test acc | final test acc | peak memory | s/epoch vs cnnspec | "
             f"to {100 * target:g}% vs cnnspec |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        to_target = ("not reached" if row.seconds_to_target is None else
                     f"{row.seconds_to_target:.1f}" + (f" ({row.reached}/{repeats})" if row.reached < repeats else ""))
        lines.append(f"| {row.model} | {row.framework} | {row.params:,} (+{row.buffers:,}) | "
                     f"{row.epoch_seconds:.2f} ({row.epoch_seconds_min:.2f}-{row.epoch_seconds_max:.2f}) | "
                     f"{row.images_per_second:,.0f} | {to_target} | {100 * row.final_accuracy:.2f}% | "
                     f"{row.peak_memory / 2**20:,.0f} MiB | {_ratio(row.ratio_epoch)} | "
                     f"{_ratio(row.ratio_to_target)} |")
    return lines


def recipe_table(lines: dict[str, str]) -> list[str]:
    """What each framework ran, one row per framework (own_recipes.recipe_lines)."""
    return ["| framework | recipe |", "| --- | --- |", *(f"| {framework} | {line} |" for framework, line in lines.items())]


def reprint(path: Path, target: float | None, tolerance: float) -> list[Row]:
    saved = json.loads(Path(path).read_text())
    runs = [Run(**run) for run in saved["runs"]]
    counts = {}
    for row in saved["rows"]:
        counts.setdefault(row["model"], {})[row["framework"]] = (row["params"], row["buffers"])
    target = target if target is not None else saved["settings"]["target"]
    rows = summarize(runs, counts, target, tolerance)
    print("\n".join(markdown_table(rows, target, saved["settings"]["repeats"])))
    for model, lines in (saved["settings"].get("recipe_lines", {}) if saved["settings"].get("recipes") == "own"
                         else {}).items():
        print(f"\n{model}, recipes: {saved['settings']['recipes']}")
        print("\n".join(recipe_table(lines)))
    return rows
