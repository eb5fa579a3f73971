"""``gatekit compare``: train variants and gate compositions on the tasks of
:mod:`gatekit.tasks`, several seeds each, and report per variant the final loss, the share of
seeds that solved the task, the training sequences it took, the time per training step and
the parameter count — as a table, CSV and JSON files, and plots.

What is compared is a variant, optionally with gates swapped: ``standard``,
``standard+forget=peephole``, ``course+learn=coupled+use=peephole`` (roles: forget, learn,
remember, use). A task is ``NAME``, ``NAME:LENGTH`` or ``NAME:key=value,...`` where the keys are
``length``, the task's own options and any run setting to use on that task only
(``adding:length=100,steps=4000``).

The runs go through :func:`gatekit.study.sweep.run_sweep`: a local process pool or a Dask cluster,
each finished run appended to ``OUT/runs.jsonl`` at once, and a rerun of the same comparison
skipping the runs already there.
"""
import csv
import json
import numbers
import os
import sys
import warnings

import numpy as np

from gatekit.io.files import atomic_write
from gatekit.study import search as search_module, statistics, sweep, tasks

__all__ = ["add_arguments", "compare", "Comparison", "curve_matrix", "DEFAULT_BASELINE",
           "EPILOG", "folder_records", "format_table", "format_variance", "group_records",
           "HYPERPARAMETERS", "main", "make_specs", "parse_task", "plot", "SHORT", "summarize",
           "task_label", "variance_explained", "write_csv", "write_json"]

HYPERPARAMETERS = tuple(search_module.SEARCHED)
SHORT = {"lr": "lr", "hidden_size": "H", "batch_size": "B", "momentum": "momentum",
         "input_noise": "noise"}
#: Greff et al.'s vanilla LSTM, against which the other variants are tested by default.
DEFAULT_BASELINE = "peephole"
SEARCHES = ("grid", "random")


# --- Parsing ---------------------------------------------------------------------------------

def _value(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    return text


def parse_task(text):
    """``"NAME[:LENGTH][,key=value...]"`` or ``"NAME:key=value,..."`` -> ``(task, settings)``:
    the task's constructor arguments (a dict with ``name``) and the run settings given for it
    (keys of :data:`gatekit.study.sweep.SPEC_DEFAULTS`)."""
    if isinstance(text, dict):
        options = dict(text)
        settings = {k: options.pop(k) for k in list(options) if k in sweep.SPEC_DEFAULTS}
        return options, settings
    name, _, rest = text.partition(":")
    task, settings = {"name": name.strip()}, {}
    for position, part in enumerate(p.strip() for p in rest.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep:
            if position == 0:
                key, value = "length", part
            else:
                raise ValueError(f"in task {text!r}: {part!r} is not key=value")
        key = key.strip()
        target = settings if key in sweep.SPEC_DEFAULTS else task
        if key in target:
            raise ValueError(f"in task {text!r}: {key!r} is given twice")
        target[key] = _value(value.strip())
    try:
        tasks.make(**task)          # a value of the wrong kind is the user's, as any other here
    except (TypeError, ImportError) as error:
        raise ValueError(f"in task {text!r}: {error}") from None
    return task, settings


def task_label(options):
    """``adding:100``, with any other option that differs from the task's default."""
    built = tasks.make(**options)
    defaults = tasks.make(options["name"], length=built.length).options()
    extra = [f"{k}={v}" for k, v in built.options().items()
             if k not in ("name", "length") and defaults.get(k) != v]
    return f"{built.name}:{built.length}" + "".join("," + e for e in extra)


def make_specs(variants, task_list, seeds=None, *, search="grid", trials=None, search_seed=0,
               **settings):
    """Every run of a comparison.

    With ``search="grid"`` (the default): each variant on each task with each seed and each
    combination of the hyperparameters given as lists (those of :data:`HYPERPARAMETERS`).
    ``seeds`` is a count (seeds 0 .. n-1, 3 by default) or a list of seeds.

    With ``search="random"``: ``trials`` trials, trial k with seed k and the values drawn for
    it (:func:`gatekit.study.search.draw_trial` with ``search_seed``) from the hyperparameters
    given as distributions (``lr="loguniform:1e-4,1e-1"``, or a
    :class:`gatekit.study.search.Distribution`), the same for every variant and task. A
    hyperparameter's value is a number, a list of numbers (a grid) or a distribution, in the
    grammar of :mod:`gatekit.study.search`."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {', '.join(map(repr, SEARCHES))}; got "
                         f"{search!r}")
    if not variants:
        raise ValueError("variants: no variants to compare; give at least one variant name")
    for variant in variants:
        sweep.parse_variant(variant)
    if not task_list:
        raise ValueError("tasks: no tasks to train on; give at least one task name")
    grids, space = [{}], {}
    for name in HYPERPARAMETERS:
        value = settings.pop(name, None)
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ValueError(f"{name}: an empty list; give a value or a list of values")
        values = [search_module.parse(name, v) for v in values]
        drawn = [v for v in values if isinstance(v, search_module.Distribution)]
        if drawn and search != "random":
            raise ValueError(f"{name}: {drawn[0].text!r} is a distribution, which only a "
                             f"random search draws from; give search 'random' (--search "
                             f"random --trials N) or a value")
        if search == "random" and len(values) > 1:
            raise ValueError(f"{name}: a random search takes one value or one distribution "
                             f"(choice:A,B,... for several values); got {value!r}")
        if drawn:
            space[name] = drawn[0]
        else:
            grids = [{**grid, name: v} for grid in grids for v in values]
    if search == "random":
        trials = _random_search_trials(trials, seeds, space)
        if isinstance(search_seed, bool) or not isinstance(search_seed, numbers.Integral) \
                or search_seed < 0:
            raise ValueError(f"search_seed must be an integer >= 0; got {search_seed!r}")
        texts = {name: distribution.text for name, distribution in space.items()}
        # Trial by trial, every variant of a trial before the next: a search cut short is
        # still paired.
        runs = [({**grids[0], **search_module.draw_trial(space, search_seed, trial),
                  "search": {"seed": search_seed, "trial": trial, "space": texts}},
                 variant, trial) for trial in range(trials) for variant in variants]
    else:
        if trials is not None:
            raise ValueError(f"trials: a grid runs every combination; give search 'random' "
                             f"(--search random) for {trials!r} trials")
        seeds = _seed_list(3 if seeds is None else seeds)
        runs = [(grid, variant, seed) for grid in grids for variant in variants
                for seed in seeds]
    specs = []
    for task in task_list:
        options, task_settings = parse_task(task)
        for values, variant, seed in runs:
            specs.append(sweep.make_spec(variant, options, seed,
                                         **{**settings, **values, **task_settings}))
    return specs


def _random_search_trials(trials, seeds, space):
    if seeds is not None:
        raise ValueError(f"seeds: a random search trains trial k from seed k; give trials, not "
                         f"seeds (got seeds={seeds!r})")
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1:
        raise ValueError(f"trials: a random search needs a count of trials >= 1 (--trials N); "
                         f"got {trials!r}")
    if not space:
        raise ValueError(f"a random search needs a distribution for at least one of "
                         f"{', '.join(HYPERPARAMETERS)} (e.g. lr='loguniform:1e-4,1e-1'); got "
                         f"values only")
    return int(trials)


def _seed_list(seeds):
    """``seeds`` as a list: a count n >= 1 means seeds 0 .. n-1."""
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be a count >= 1 or a list of seeds; got {seeds!r}")
        return list(range(int(seeds)))
    if isinstance(seeds, (str, bytes, dict)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be a count >= 1 or a list of seeds; got {seeds!r}")
    seeds = list(seeds)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, numbers.Integral)
           or s < 0]
    if not seeds or bad:
        raise ValueError(f"seeds must be a count >= 1 or a non-empty list of integers >= 0; "
                         f"got {seeds!r}")
    return [int(s) for s in seeds]


# --- Summaries -------------------------------------------------------------------------------

def _varying(records):
    """The hyperparameters that take more than one value among ``records``."""
    return [name for name in HYPERPARAMETERS
            if len({sweep.setting(r["spec"], name) for r in records}) > 1]


def _settings_label(spec, varying):
    return " ".join(f"{SHORT[name]}={_number(sweep.setting(spec, name))}" for name in varying)


def _number(value):
    return "default" if value is None else f"{value:g}"


def _search_identity(spec):
    found = spec.get("search")
    return None if found is None else (found["seed"], tuple(sorted(found["space"].items())))


def _search_labels(records):
    """``{search identity: label}`` for the random searches among ``records``: ``random
    search``, or with several, ``random search seed S`` (and ``#n`` for searches of one seed
    over other distributions)."""
    identities = list(dict.fromkeys(filter(None, (_search_identity(r["spec"])
                                                  for r in records))))
    if len(identities) == 1:
        return {identities[0]: "random search"}
    labels = {}
    for identity in identities:
        same_seed = [other for other in identities if other[0] == identity[0]]
        suffix = f"#{same_seed.index(identity) + 1}" if len(same_seed) > 1 else ""
        labels[identity] = f"random search seed {identity[0]}{suffix}"
    return labels


def group_records(records):
    """``{(task label, variant, settings label): [records]}``, in the order first seen. The
    trials of a random search are one group per task and variant, whatever values they drew;
    the other runs are grouped by the hyperparameters that vary among them."""
    varying = _varying([r for r in records if _search_identity(r["spec"]) is None])
    searches = _search_labels(records)
    groups = {}
    for record in records:
        spec = record["spec"]
        identity = _search_identity(spec)
        settings = (_settings_label(spec, varying) if identity is None else searches[identity])
        key = (task_label(spec["task"]), spec["variant"], settings)
        groups.setdefault(key, []).append(record)
    return groups


def _median(values):
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def _failed(record):
    return record.get("status", "ok") != "ok"


def summarize(records, baseline=DEFAULT_BASELINE):
    """One row per (task, variant, settings): the summary ``gatekit compare`` reports.

    ``seeds`` counts the group's runs and ``failed`` those that failed (raised, or their worker
    died); the other numbers are over the runs that finished. ``final_loss_*`` are over seeds,
    of the loss on the held-out batch at the end of training; ``solved`` counts the seeds that
    solved the task and ``sequences_to_solve`` is the median over those seeds of the training
    sequences it took (None when no seed solved it); ``ms_per_step`` is the median time of one
    training step (forward, backward and update, without evaluation; None when no run took a
    step); ``params`` counts the cell's parameters (the readout is left out: it is the same
    for every variant).

    ``final_loss_q25`` is the best quartile (the 25th percentile) of the final losses. Each
    variant is tested against the ``baseline`` variant's row of the same task and settings
    (:func:`_test_against_baseline`)."""
    rows, finals_of = [], {}
    for (task, variant, settings), group in group_records(records).items():
        finished = [r for r in group if not _failed(r)]
        finals = [r["final_loss"] for r in finished]
        finite = [f for f in finals if f is not None]
        solved = [r for r in finished if r["solved"]]
        to_solve = sorted(r["sequences_to_solve"] for r in solved)
        step_ms = _median([r["step_seconds"] for r in finished])
        spec = group[0]["spec"]
        rows.append({
            "task": task,
            "variant": variant,
            "settings": settings,
            "seeds": len(group),
            "failed": len(group) - len(finished),
            "final_loss_median": _median(finals),
            "final_loss_min": min(finite) if finite else None,
            "final_loss_max": max(finite) if finite else None,
            "final_loss_mean": float(np.mean(finite)) if finite else None,
            "final_loss_q25": statistics.best_quartile(finite),
            "diverged": len(finals) - len(finite),
            "baseline_loss": float(tasks.make(**spec["task"]).baseline_loss),
            "solved": len(solved),
            "solved_share": len(solved) / len(group),
            "sequences_to_solve": _median(to_solve),
            "sequences_to_solve_min": to_solve[0] if to_solve else None,
            "sequences_to_solve_max": to_solve[-1] if to_solve else None,
            "ms_per_step": None if step_ms is None else 1e3 * step_ms,
            "params": finished[0]["params"] if finished else None,
            "steps": spec["steps"],
            "batch_size": spec["batch_size"],
        })
        finals_of[len(rows) - 1] = finite
    _test_against_baseline(rows, finals_of, baseline)
    return rows


def _test_against_baseline(rows, finals_of, baseline):
    """Add to each row ``baseline`` and Welch's t-test of its final losses against those of
    the baseline variant's row of the same task and settings (``welch_t``: negative when its
    mean is lower; ``p_value``), and ``p_holm``: the p-values of a task's and settings' rows,
    one family, adjusted by Holm's method. None where there is no baseline row, for the
    baseline itself, and where a side has fewer than two finite losses."""
    families = {}
    for index, row in enumerate(rows):
        families.setdefault((row["task"], row["settings"]), []).append(index)
    for members in families.values():
        reference = next((i for i in members if rows[i]["variant"] == baseline), None)
        p_values = []
        for index in members:
            t = p = None
            if reference is not None and index != reference:
                t, p = statistics.welch(finals_of[index], finals_of[reference])
            rows[index].update({"baseline": baseline, "welch_t": t, "p_value": p})
            p_values.append(p)
        for index, adjusted in zip(members, statistics.holm(p_values)):
            rows[index]["p_holm"] = adjusted


def variance_explained(records):
    """For each task and random search among ``records``, how much of the variance of the
    final loss each searched hyperparameter explains, and the variant (when there are
    several), by :func:`gatekit.study.statistics.variance_shares` over the finished runs. A
    hyperparameter's share (and its chance level) is the mean of its shares over the variants,
    each over that variant's trials: the trials of one variant are independent draws, while
    the runs of all variants of a trial share every value drawn, so pooling them would credit
    each hyperparameter with all that differs between trials. The variant's share is over the
    runs of all variants together. A list of ``{"task", "settings", "runs", "trials", "shares":
    {factor: share}, "chance": {factor: share by chance}}``."""
    searches = _search_labels(records)
    pooled = {}
    for record in records:
        identity = _search_identity(record["spec"])
        if identity is None or _failed(record):
            continue
        spec = record["spec"]
        key = (task_label(spec["task"]), searches[identity])
        pooled.setdefault(key, []).append(
            {"loss": record["final_loss"], "variant": spec["variant"],
             **{name: sweep.setting(spec, name) for name in spec["search"]["space"]}})
    entries = []
    for (task, settings), rows in pooled.items():
        drawn = [name for name in HYPERPARAMETERS if name in rows[0]]
        by_variant = {}
        for row in rows:
            by_variant.setdefault(row["variant"], []).append(row)
        per_variant = [statistics.variance_shares(group, drawn) for group in by_variant.values()]
        shares = {name: _mean([found[0][name] for found in per_variant]) for name in drawn}
        chances = {name: _mean([found[1][name] for found in per_variant]) for name in drawn}
        if len(by_variant) > 1:
            share, chance = statistics.variance_shares(rows, ["variant"])
            shares["variant"], chances["variant"] = share["variant"], chance["variant"]
        entries.append({"task": task, "settings": settings, "runs": len(rows),
                        "trials": max(len(group) for group in by_variant.values()),
                        "shares": shares, "chance": chances})
    return entries


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def format_variance(entries):
    """:func:`variance_explained` as text, a line per task and search."""
    lines = []
    for entry in entries:
        parts = [f"{SHORT.get(f, f)} {_share(entry['shares'][f])} "
                 f"(chance {_share(entry['chance'][f])})"
                 for f in sorted(entry["shares"], key=lambda f: -(entry["shares"][f] or 0))]
        lines.append(f"variance of the final loss explained, {entry['task']} "
                     f"({entry['settings']}, {entry['trials']} trials, {entry['runs']} runs): "
                     + ", ".join(parts))
    return "\n".join(lines)


def _share(value):
    return "-" if value is None else f"{value:.0%}"


def _g(value, digits=3):
    return "-" if value is None else f"{value:.{digits}g}"


def _p(row):
    if row["p_value"] is None:
        return "-"
    sign = "<" if row["welch_t"] < 0 else ">"
    return f"{sign} {row['p_value']:.2g} ({row['p_holm']:.2g})"


def format_table(rows):
    """The summary as a text table. The ``vs BASELINE`` column gives, against the baseline
    variant of the same task and settings, whether the mean final loss is lower (``<``) or
    higher, Welch's p-value and (in brackets) Holm's adjusted p-value."""
    baseline = rows[0]["baseline"] if rows else DEFAULT_BASELINE
    header = ["task", "variant", "params", "final loss: median [min, max]", "best quartile",
              "/ baseline", "solved", f"vs {baseline}: p (Holm)", "sequences to solve",
              "ms/step"]
    lines = []
    for row in rows:
        variant = row["variant"] + (f" ({row['settings']})" if row["settings"] else "")
        median = row["final_loss_median"]
        ratio = "-" if median is None else f"{median / row['baseline_loss']:.1%}"
        to_solve = ("-" if row["sequences_to_solve"] is None
                    else f"{row['sequences_to_solve']:,.0f}")
        if row["solved"] > 1:
            to_solve += (f" [{row['sequences_to_solve_min']:,}, "
                         f"{row['sequences_to_solve_max']:,}]")
        params = "-" if row["params"] is None else f"{row['params']:,}"
        failed = f" ({row['failed']} FAILED)" if row["failed"] else ""
        ms_per_step = "-" if row["ms_per_step"] is None else f"{row['ms_per_step']:.2f}"
        lines.append([row["task"], variant, params,
                      f"{_g(median)} [{_g(row['final_loss_min'])}, {_g(row['final_loss_max'])}]"
                      + (f" ({row['diverged']} diverged)" if row["diverged"] else ""),
                      _g(row["final_loss_q25"]), ratio,
                      f"{row['solved']}/{row['seeds']}{failed}", _p(row), to_solve,
                      ms_per_step])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    right = {2, 4, 5, 6, 7, 8, 9}

    def render(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [render(header), render(["-" * w for w in widths])]
    previous = None
    for row, line in zip(rows, lines):
        if previous is not None and row["task"] != previous:
            out.append("")
        previous = row["task"]
        out.append(render(line))
    return "\n".join(out)


# --- Files -----------------------------------------------------------------------------------

def _atomic_write(path, write, binary=False):
    """Write ``path`` through ``write(stream)`` atomically, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, write, text=not binary)


def write_csv(rows, path):
    def write(stream):
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else ["task"])
        writer.writeheader()
        writer.writerows(rows)
    _atomic_write(path, write)


def write_json(rows, path, settings=None, variance=()):
    """``{"settings", "rows", "variance_explained"}`` (the last from
    :func:`variance_explained`) to ``path``."""
    def write(stream):
        json.dump({"settings": settings or {}, "rows": rows,
                   "variance_explained": list(variance)}, stream, indent=1)
        stream.write("\n")
    _atomic_write(path, write)


# --- Plots -----------------------------------------------------------------------------------

def _file_part(text):
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")


def curve_matrix(group):
    """The held-out loss of each run of a group on a common grid of training sequences:
    ``(sequences, losses (runs, points))``. A run that stopped early (solved, or a non-finite
    loss) keeps its last value to the end of the grid."""
    longest = max(group, key=lambda r: len(r["curve"]["sequences"]))
    grid = np.asarray(longest["curve"]["sequences"], dtype=float)
    losses = np.full((len(group), len(grid)), np.nan)
    for i, record in enumerate(group):
        values = np.array([np.nan if v is None else v for v in record["curve"]["eval_loss"]])
        losses[i, :len(values)] = values
        if len(values):
            last = values[np.isfinite(values)][-1:] if np.isfinite(values).any() else [np.nan]
            losses[i, len(values):] = last[0]
    return grid, losses


def plot(records, folder):
    """Per task, two PNGs in ``folder`` (written atomically): ``curves-TASK.png``, the
    held-out loss against training sequences, per variant the median over seeds with a band
    from the best to the worst seed; ``final-loss-TASK.png``, a box plot of the final losses.
    Both on a log scale with the task's baseline dashed. Where the learning rate varies (a
    search or a grid over it), a third, ``loss-vs-lr-TASK.png``: each run's final loss against
    its learning rate, a panel per variant (Greff et al.'s Fig. 4 kind). Returns the paths.
    Needs matplotlib (``pip install gatekit[plot]``); uses the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    by_task = {}
    finished = [r for r in records if not _failed(r)]
    for (task, variant, settings), group in group_records(finished).items():
        label = variant + (f" ({settings})" if settings else "")
        by_task.setdefault(task, []).append((label, group))
    paths = []
    for task, groups in by_task.items():
        baseline = groups[0][1][0]["baseline_loss"]
        colours = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")

        figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
        for index, (label, group) in enumerate(groups):
            grid, losses = curve_matrix(group)
            with np.errstate(all="ignore"):
                middle = np.nanmedian(losses, axis=0)
                low, high = np.nanmin(losses, axis=0), np.nanmax(losses, axis=0)
            colour = colours(index % colours.N)
            axes.plot(grid, middle, color=colour, label=f"{label} ({len(group)} seeds)",
                      linewidth=1.6)
            axes.fill_between(grid, low, high, color=colour, alpha=0.18, linewidth=0)
        axes.axhline(baseline, color="black", linestyle="--", linewidth=1,
                     label=f"trivial baseline {baseline:.3g}")
        axes.set(xscale="linear", yscale="log", xlabel="training sequences",
                 ylabel="loss on held-out sequences",
                 title=f"{task}: median over seeds, band from best to worst seed")
        axes.grid(True, which="both", alpha=0.25)
        axes.legend(fontsize=8, loc="best")
        figure.tight_layout()
        paths.append(_save_png(figure, os.path.join(folder, f"curves-{_file_part(task)}.png")))
        plt.close(figure)

        figure, axes = plt.subplots(figsize=(max(6, 0.9 * len(groups) + 2), 5), dpi=110)
        finals = []
        for label, group in groups:
            values = [r["final_loss"] for r in group if r["final_loss"] is not None]
            finals.append(values if values else [np.nan])
        axes.boxplot(finals, showfliers=True)
        for index, values in enumerate(finals, start=1):     # every seed, as a dot
            axes.scatter(np.full(len(values), index), values, s=12, color="black", zorder=3)
        axes.set_xticks(range(1, len(groups) + 1), [label for label, _ in groups],
                        rotation=30, ha="right", fontsize=8)
        axes.axhline(baseline, color="black", linestyle="--", linewidth=1,
                     label=f"trivial baseline {baseline:.3g}")
        axes.set(yscale="log", ylabel="final loss on held-out sequences",
                 title=f"{task}: final loss per seed")
        axes.grid(True, axis="y", which="both", alpha=0.25)
        axes.legend(fontsize=8)
        figure.tight_layout()
        paths.append(_save_png(figure, os.path.join(folder,
                                                    f"final-loss-{_file_part(task)}.png")))
        plt.close(figure)
        if len({r["spec"]["lr"] for _, group in groups for r in group}) > 1:
            paths.append(_plot_loss_against_lr(plt, task, groups, baseline, folder))
    return paths


def _plot_loss_against_lr(plt, task, groups, baseline, folder):
    """One panel per variant: final loss against learning rate, log-log, with the
    median of the runs in each fifth of the learning rates as a line."""
    from matplotlib.ticker import NullFormatter

    by_variant = {}
    for _, group in groups:
        by_variant.setdefault(group[0]["spec"]["variant"], []).extend(group)
    columns = min(4, len(by_variant))
    rows = -(-len(by_variant) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns + 0.6, 2.8 * rows + 0.6),
                                dpi=110, sharex=True, sharey=True, squeeze=False)
    for panel, (label, group) in zip(axes.flat, by_variant.items()):
        points = sorted((r["spec"]["lr"], r["final_loss"]) for r in group
                        if r["final_loss"] is not None)
        if points:
            lr, loss = np.array(points).T
            panel.scatter(lr, loss, s=10, color="tab:blue", alpha=0.7)
            bins = np.array_split(np.arange(len(lr)), min(5, len(lr)))
            panel.plot([np.median(lr[b]) for b in bins], [np.median(loss[b]) for b in bins],
                       color="tab:red", linewidth=1.4)
        panel.axhline(baseline, color="black", linestyle="--", linewidth=1)
        panel.set(xscale="log", yscale="log", title=f"{label} ({len(group)} runs)")
        panel.xaxis.set_minor_formatter(NullFormatter())     # a label at every tick overlaps
        panel.title.set_fontsize(9)
        panel.grid(True, which="both", alpha=0.25)
    for panel in axes.flat[len(by_variant):]:
        panel.set_visible(False)
    for panel in axes[-1]:
        panel.set_xlabel("learning rate")
    for panel in axes[:, 0]:
        panel.set_ylabel("final held-out loss")
    figure.suptitle(f"{task}: final loss against learning rate (red: median of each fifth; "
                    f"dashed: trivial baseline)", fontsize=10)
    figure.tight_layout()
    path = _save_png(figure, os.path.join(folder, f"loss-vs-lr-{_file_part(task)}.png"))
    plt.close(figure)
    return path


def _save_png(figure, path):
    def write(stream):
        figure.savefig(stream, format="png")
    _atomic_write(path, write, binary=True)
    return path


# --- The comparison --------------------------------------------------------------------------

class Comparison:
    """What :func:`compare` produced: ``records`` (the last record of every run in the results
    folder, from this and earlier commands: those of this command first, in its order; failed
    runs have ``status`` ``"failed"``), ``rows`` (their summary, tested against ``baseline``),
    ``variance`` (:func:`variance_explained`), ``failed`` (``(spec, exception)`` of this
    command's runs that failed), ``ran`` and ``skipped`` (runs executed now, and found in the
    results file), and ``files`` (paths written)."""

    def __init__(self, records, failed=(), ran=0, skipped=0, files=None,
                 baseline=DEFAULT_BASELINE):
        self.records = list(records)
        self.rows = summarize(self.records, baseline)
        self.variance = variance_explained(self.records)
        self.failed = list(failed)
        self.ran, self.skipped = ran, skipped
        self.files = dict(files or {})

    def table(self):
        """The rows as a text table, then the variance explained, if there was a search."""
        variance = format_variance(self.variance)
        return format_table(self.rows) + ("\n\n" + variance if variance else "")

    def __repr__(self):
        return (f"Comparison({len(self.rows)} rows from {len(self.records)} runs, "
                f"{len(self.failed)} failed)")


def compare(variants, tasks=("adding",), *, seeds=None, search="grid", trials=None,
            search_seed=0, baseline=DEFAULT_BASELINE, out="compare-results", client=None,
            scheduler=None, workers=None, plots=True, progress=True, **settings):
    """Train each of ``variants`` on each of ``tasks`` with ``seeds`` seeds (a count or a list;
    3 by default), or in ``trials`` trials of a random search (``search="random"``; see
    :func:`make_specs`), and summarize; return a :class:`Comparison`.

    ``settings`` are the run settings of :data:`gatekit.study.sweep.SPEC_DEFAULTS` (``steps``,
    ``batch_size``, ``hidden_size``, ``lr``, ``momentum``, ``input_noise``, ``optimizer``,
    ``clip``, ``forget_bias``, ``dtype``, ``eval_every``, ``eval_size``, ``solve_rate``,
    ``stop_when_solved``); the hyperparameters of :data:`HYPERPARAMETERS` may be lists, swept
    over, or distributions a random search draws from. Each variant is tested against
    ``baseline`` (see :func:`summarize`). Runs go to a local pool of ``workers`` processes, to
    the Dask ``client`` or to the cluster at ``scheduler``.

    In ``out``: ``runs.jsonl`` (every run's record, appended as it finishes: run the same
    comparison again and the runs already there, with the same code, are skipped),
    ``summary.csv``, ``summary.json`` and, with ``plots`` and matplotlib installed, the PNGs of
    :func:`plot`. The summary and the plots are of every run in ``runs.jsonl`` (the last
    record of each), this command's and earlier ones'; failed runs are counted as such.
    """
    task_list = [tasks] if isinstance(tasks, (str, dict)) else list(tasks)
    specs = make_specs(list(variants), task_list, seeds, search=search, trials=trials,
                       search_seed=search_seed, **settings)
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "runs.jsonl")
    outcome = sweep.run_sweep(specs, results, executor=client, workers=workers,
                              scheduler=scheduler, progress=progress)
    records = folder_records(results, first=specs)
    comparison = Comparison(records, outcome.failed, outcome.ran, outcome.skipped,
                            {"runs": results}, baseline)
    if comparison.records:
        summary_settings = {"variants": list(variants), "tasks": [str(t) for t in task_list],
                            "seeds": 3 if seeds is None and search == "grid" else seeds,
                            "search": search, "trials": trials,
                            "search_seed": search_seed, "baseline": baseline,
                            **{k: _jsonable(k, v) for k, v in settings.items()}}
        comparison.files["csv"] = os.path.join(out, "summary.csv")
        write_csv(comparison.rows, comparison.files["csv"])
        comparison.files["json"] = os.path.join(out, "summary.json")
        write_json(comparison.rows, comparison.files["json"], summary_settings,
                   comparison.variance)
        if plots:
            comparison.files["plots"] = plot(comparison.records, out)
    return comparison


def _jsonable(name, value):
    """A setting as JSON: a hyperparameter's distribution as its text."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(name, v) for v in value]
    if name in HYPERPARAMETERS and value is not None:
        value = search_module.parse(name, value)
    return value.text if isinstance(value, search_module.Distribution) else value


def folder_records(results, first=()):
    """The last record of each run (each spec) in the results file ``results``: those of the
    specs ``first`` in their order, then the others in the order the file first has them.
    Records of a task that cannot be built here (its plugin is gone) are skipped with a
    warning."""
    latest = {}
    for record in sweep.read_records(results):
        latest[sweep.spec_key(record["spec"])] = record      # the last one wins
    usable = {}
    for key, record in latest.items():
        try:
            task_label(record["spec"]["task"])
        except (TypeError, ValueError, ImportError) as error:
            warnings.warn(f"{results}: a record of {sweep.describe_run(record['spec'])} is "
                          f"left out of the summary: its task cannot be built ({error})",
                          sweep.ResultsWarning, stacklevel=2)
            continue
        usable[key] = record
    order = [sweep.spec_key(spec) for spec in first]
    order += [key for key in usable if key not in set(order)]
    return [usable[key] for key in dict.fromkeys(order) if key in usable]


# --- The command line ------------------------------------------------------------------------

EPILOG = """\
variants: a variant (gatekit.variants(): standard, course, literal, peephole, nig, nfg, nog,
  niaf, noaf, cifg, janet, gru, mingru, minlstm, mgu, mut1 (whose input_size must equal
  hidden_size), slstm, layernorm, and those of plugins), optionally with gates swapped:
  standard+forget=peephole, course+learn=coupled+use=peephole (roles: forget, learn,
  remember, use; gate names: gatekit.gates()).
tasks: NAME, NAME:LENGTH, or NAME:key=value,... with length, the task's options and any run
  setting for that task alone: adding:100, copy:length=50,steps=3000. Built in: adding,
  reber, temporal_order, copy, nature_show, digits (real data: pip install 'gatekit[data]')
  (gatekit.tasks.names() lists plugins' tasks too).
values of --lr, --hidden-size, --batch-size, --momentum, --input-noise: numbers (several
  are a grid), or with --search random one distribution: uniform:LOW,HIGH,
  loguniform:LOW,HIGH, uniform-int:LOW,HIGH, loguniform-int:LOW,HIGH, choice:A,B,...
Rerun the same command to resume: runs already in OUT/runs.jsonl are skipped.

examples:
  gatekit compare standard nfg cifg --task adding:100 --task copy:20 --seeds 3 --out results
  gatekit compare peephole nfg noaf cifg --task reber --search random --trials 20 \
    --lr loguniform:1e-4,1e-1 --hidden-size loguniform-int:16,128 --out search
"""


def add_arguments(parser):
    """The ``gatekit compare`` options, on an argparse parser."""
    defaults = sweep.SPEC_DEFAULTS
    parser.add_argument("variants", nargs="+", metavar="VARIANT",
                        help="variants or compositions to compare (see below)")
    parser.add_argument("--task", dest="tasks", action="append", metavar="TASK",
                        help="a task to train on (repeat for several; default adding:100)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per variant (default 3; a random search has --trials)")
    parser.add_argument("--search", choices=SEARCHES, default="grid",
                        help="grid: every combination of the values given (default); random: "
                             "--trials trials drawn from the distributions given")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials of a random search: trial k trains from seed k with "
                             "the values drawn for it, the same for every variant")
    parser.add_argument("--search-seed", type=int, default=0,
                        help="the seed of a random search's draws (default 0)")
    parser.add_argument("--steps", type=int, default=defaults["steps"],
                        help=f"training steps per run (default {defaults['steps']})")
    hyperparameters = {
        "batch_size": f"sequences per step (default {defaults['batch_size']})",
        "hidden_size": f"H (default {defaults['hidden_size']})",
        "lr": f"the learning rate (default {defaults['lr']})",
        "momentum": "the SGD optimizers' momentum (default 0.9)",
        "input_noise": "std of Gaussian noise added to the training inputs (default 0)",
    }
    for name, what in hyperparameters.items():
        parser.add_argument("--" + name.replace("_", "-"), nargs="+", metavar="VALUE",
                            help=f"{what}: values (a grid) or one distribution "
                                 f"(see below)")
    parser.add_argument("--optimizer", choices=sweep.OPTIMIZERS, default=defaults["optimizer"],
                        help="adam (default), sgd (heavy-ball momentum) or nesterov (Nesterov "
                             "momentum, Greff et al.'s)")
    parser.add_argument("--zoneout", type=float, nargs=2, metavar=("Z_C", "Z_H"),
                        help="zoneout of every cell in training: the probabilities that a unit "
                             "keeps its LTM and its STM (default none)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, metavar="VARIANT",
                        help=f"the variant each other is tested against (Welch's t-test, "
                             f"Holm-corrected; default {DEFAULT_BASELINE}, Greff's vanilla)")
    parser.add_argument("--clip", type=float, default=defaults["clip"],
                        help=f"gradient-norm clip (default {defaults['clip']}; 0 for none)")
    parser.add_argument("--forget-bias", type=float, default=defaults["forget_bias"],
                        help=f"initial b_f where the cell has one (default "
                             f"{defaults['forget_bias']})")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=defaults["dtype"])
    parser.add_argument("--eval-every", type=int, default=defaults["eval_every"],
                        help=f"steps between evaluations on held-out sequences (default "
                             f"{defaults['eval_every']})")
    parser.add_argument("--eval-size", type=int, default=defaults["eval_size"],
                        help=f"held-out sequences (default {defaults['eval_size']})")
    parser.add_argument("--solve-rate", type=float, default=defaults["solve_rate"],
                        help="share of the held-out sequences that must be solved for a run "
                             f"to count as solving the task (default {defaults['solve_rate']})")
    parser.add_argument("--stop-when-solved", action="store_true",
                        help="end a run as soon as it solves the task")
    parser.add_argument("--out", default="compare-results", metavar="DIR",
                        help="folder for runs.jsonl, summary.csv/json and the plots "
                             "(default compare-results)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local worker processes (default: one per core; 0 runs in this "
                             "process)")
    parser.add_argument("--scheduler", metavar="ADDRESS", default=None,
                        help="run on the Dask cluster at ADDRESS (tcp://host:8786) instead")
    parser.add_argument("--no-plots", dest="plots", action="store_false",
                        help="write no PNGs")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")


def main(args, stream=None):
    """Run ``gatekit compare`` from parsed arguments; returns the exit code (1 if a run
    failed)."""
    stream = sys.stdout if stream is None else stream
    plots = args.plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed, so no plots (pip install 'gatekit[plot]')",
                  file=sys.stderr)
            plots = False
    with warnings.catch_warnings():
        # Failed runs are listed below, as FAILED lines, rather than as a warning.
        warnings.simplefilter("ignore", sweep.RunsFailedWarning)
        comparison = _compare_from(args, plots)
    print(comparison.table(), file=stream)
    print(f"\n{comparison.ran} runs now, {comparison.skipped} from before; "
          f"written: {', '.join(_files(comparison.files))}", file=stream)
    for spec, error in comparison.failed:
        print(f"FAILED: {sweep.describe_run(spec)}: {type(error).__name__}: {error}",
              file=sys.stderr)
    return 1 if comparison.failed else 0


def _compare_from(args, plots):
    # Parsed here to name the command line's options in any error.
    values = {name: [search_module.parse(name, text, label="--" + name.replace("_", "-"))
                     for text in getattr(args, name)]
              for name in HYPERPARAMETERS if getattr(args, name) is not None}
    return compare(
        args.variants, args.tasks or ["adding:100"], seeds=args.seeds, search=args.search,
        trials=args.trials, search_seed=args.search_seed, baseline=args.baseline,
        out=args.out, scheduler=args.scheduler, workers=args.workers, plots=plots,
        progress=args.progress, steps=args.steps, optimizer=args.optimizer, **values,
        zoneout=args.zoneout,
        clip=args.clip or None, forget_bias=args.forget_bias, dtype=args.dtype,
        eval_every=args.eval_every, eval_size=args.eval_size, solve_rate=args.solve_rate,
        stop_when_solved=args.stop_when_solved)


def _files(files):
    for value in files.values():
        if isinstance(value, list):
            yield from value
        else:
            yield value
