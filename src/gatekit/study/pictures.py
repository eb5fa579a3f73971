"""Pictures of what a cell's gates do: heatmaps of every traced quantity over time, line plots
of chosen units, and the gate-saturation scatter of Karpathy, Johnson & Fei-Fei (2015).

Each function takes what :meth:`gatekit.Cell.trace` returns (a dict of arrays (T, B, ...) named
after the symbols of the equations), draws one sequence of the batch, and returns a
``matplotlib.figure.Figure`` on the Agg canvas (no display needed). With ``path=`` (one path
or several) it also writes the figure, as PNG or SVG after each path's suffix, atomically: a
temporary file in the same folder, then a rename.

Every panel a function draws carries the gid ``panel-<k>``, so an SVG says how many panels it
has; colour bars and other decorations are not panels.

Needs matplotlib: ``pip install gatekit[plot]``.
"""
import os
from collections.abc import Mapping

import numpy as np

from gatekit.io.files import atomic_write

__all__ = ["DESCRIPTIONS", "FORMATS", "heatmaps", "lines", "ORDER", "quantities", "saturation",
           "saturation_fractions", "SATURATION_GATES", "save", "trace_layer"]

#: The order quantities are drawn in; quantities a gate adds come after these.
ORDER = ("f_t", "i_t", "N_t", "LTM_t", "U_t", "V_t", "STM_t", "s_t")
#: What each quantity is, for the panels' titles.
DESCRIPTIONS = {
    "E_t": "event (input)",
    "f_t": "forget factor",
    "i_t": "ignore factor (input gate)",
    "N_t": "new information (combine)",
    "LTM_t": "long-term memory",
    "U_t": "use gate: U",
    "V_t": "use gate: V",
    "STM_t": "short-term memory (output)",
    "s_t": "forget pre-activation",
}
#: The gates of the saturation plot by default: forget, ignore (input) and the Use gate's σ.
SATURATION_GATES = ("f_t", "i_t", "V_t")
FORMATS = {".png": "png", ".svg": "svg"}
_GATE_COLOURS = {"f_t": "tab:red", "i_t": "tab:blue", "V_t": "tab:green"}


def _matplotlib():
    """matplotlib's Figure and Agg canvas, imported on first use."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("gatekit.study.pictures draws with matplotlib, which is not installed: "
                          "pip install gatekit[plot]") from None
    return Figure, FigureCanvasAgg


def _figure(size, dpi):
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


# --- Tracing a layer --------------------------------------------------------------------------

def trace_layer(layer, x, state=None, lengths=None):
    """The traces of every cell of a :class:`gatekit.LSTM`: :meth:`gatekit.LSTM.trace`."""
    return layer.trace(x, state, lengths)


# --- Numbers the pictures show ---------------------------------------------------------------

def saturation_fractions(trace, gate, low=0.1, high=0.9):
    """For each unit of ``gate`` (a name in ``trace``, values (T, B, H)): the fraction of its
    steps where the gate is below ``low`` (left-saturated) and the fraction where it is above
    ``high`` (right-saturated), over every step of every sequence; padded (NaN) steps do not
    count. Returns two arrays (H,)."""
    values = _quantity(trace, gate)
    values = values.reshape(-1, values.shape[-1])
    counted = ~np.isnan(values)
    steps = np.maximum(counted.sum(axis=0), 1)
    with np.errstate(invalid="ignore"):
        left = ((values < low) & counted).sum(axis=0) / steps
        right = ((values > high) & counted).sum(axis=0) / steps
    return left, right


def quantities(trace):
    """The names of ``trace`` in drawing order: the core's symbols first (:data:`ORDER`), then
    what gates added; ``E_t`` is the input and not among them."""
    names = [name for name in ORDER if name in trace]
    return names + [name for name in trace if name not in ORDER and name != "E_t"]


# --- Pictures ---------------------------------------------------------------------------------

def heatmaps(trace, quantities=None, *, batch=0, units=None, unit_labels=None, events=None,
             event_names=None, marks=(), title=None, size=None, dpi=100, path=None):
    """One heatmap per traced quantity, time on the x axis and units on the y axis, under a
    panel that draws the input sequence (``E_t``, one row per input feature).

    ``quantities`` (names in ``trace``) defaults to all of them, in :data:`ORDER`; ``batch``
    picks the sequence; ``units`` the units drawn and their order (top to bottom), labelled by
    ``unit_labels``. ``events`` names the input at each step (T labels, written above the input
    panel), ``event_names`` its features (D labels). ``marks`` are steps to mark with a dashed
    line in every panel. ``size`` (width, height) in inches at ``dpi``; by default it grows with
    T, H and the number of panels. Returns the figure; with ``path`` also writes it.
    """
    names, E, values, T, rows, labels = _prepare(trace, quantities, batch, units, unit_labels)
    heights = [_input_height(E)] + [float(np.clip(0.16 * len(rows), 1.0, 3.5))] * len(names)
    figure = _figure(size or _default_size(T, heights), dpi)
    axes = figure.subplots(len(heights), 1, sharex=True, squeeze=False,
                           gridspec_kw={"height_ratios": heights})[:, 0]
    _draw_input(figure, axes[0], E, events, event_names)
    for k, (ax, name) in enumerate(zip(axes[1:], names), start=1):
        data = values[name]
        vmin, vmax, cmap, clipped = _colour_scale(data)
        image = ax.imshow(data.T, aspect="auto", interpolation="nearest", origin="upper",
                          cmap=cmap, vmin=vmin, vmax=vmax, extent=(-0.5, T - 0.5, len(rows) - 0.5,
                                                                   -0.5))
        figure.colorbar(image, ax=ax, pad=0.01, fraction=0.03,
                        extend="both" if clipped else "neither")
        _unit_axis(ax, labels)
        ax.set_title(_panel_title(name), fontsize=9, loc="left")
        ax.set_gid(f"panel-{k}")
    _finish(figure, axes, T, marks, title)
    return _written(figure, path)


def lines(trace, units, quantities=("LTM_t", "f_t"), *, batch=0, unit_labels=None, events=None,
          event_names=None, marks=(), title=None, size=None, dpi=100, path=None):
    """Line plots of chosen ``units``: one panel per quantity (time on the x axis), one line
    per unit, under the input sequence as in :func:`heatmaps`. Returns the figure; with
    ``path`` also writes it."""
    if np.ndim(units) == 0:
        units = [units]
    names, E, values, T, rows, labels = _prepare(trace, quantities, batch, units, unit_labels)
    heights = [_input_height(E)] + [1.6] * len(names)
    figure = _figure(size or _default_size(T, heights), dpi)
    axes = figure.subplots(len(heights), 1, sharex=True, squeeze=False,
                           gridspec_kw={"height_ratios": heights})[:, 0]
    _draw_input(figure, axes[0], E, events, event_names, colorbar=False)
    steps = np.arange(T)
    for k, (ax, name) in enumerate(zip(axes[1:], names), start=1):
        for row, label in enumerate(labels):
            ax.plot(steps, values[name][:, row], marker=".", markersize=4, linewidth=1.2,
                    label=label)
        if _colour_scale(values[name])[:2] == (0.0, 1.0):
            ax.set_ylim(-0.05, 1.05)
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.set_title(_panel_title(name), fontsize=9, loc="left")
        ax.grid(True, axis="y", linewidth=0.3)
        ax.set_gid(f"panel-{k}")
    figure.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", fontsize=8,
                  frameon=False, ncol=min(len(labels), 4))
    _finish(figure, axes, T, marks, title)
    return _written(figure, path)


def saturation(traces, gates=SATURATION_GATES, *, low=0.1, high=0.9, title=None, size=None,
               dpi=100, path=None):
    """The gate-saturation scatter of Karpathy, Johnson & Fei-Fei (2015, "Visualizing and
    Understanding Recurrent Networks", fig. 3): for each unit of each gate, the fraction of
    steps the gate is below ``low`` (x) against the fraction above ``high`` (y).

    ``traces`` maps a label (a variant's name) to a trace; each gets its own panel, side by
    side, on the same axes. A unit near the top left is almost always open (f_t: keeps its
    memory), near the bottom right almost always shut, near the origin rarely saturated; near
    the diagonal x + y = 1 it switches between the two. Gates missing from a trace are left
    out; a gate that never changes (``f_t = 1`` of a cell without a forget gate) sits in a
    corner. Returns the figure; with ``path`` also writes it.
    """
    if not isinstance(traces, Mapping) or not traces:
        raise TypeError("traces must be a non-empty mapping of label to trace, e.g. "
                        "{'course': cell.trace(x)}")
    panels = len(traces)
    figure = _figure(size or (3.4 * panels + 0.6, 4.0), dpi)
    axes = figure.subplots(1, panels, sharex=True, sharey=True, squeeze=False)[0]
    for k, (ax, (label, trace)) in enumerate(zip(axes, traces.items()), start=1):
        shown = [gate for gate in gates if gate in trace]
        for gate in shown:
            left, right = saturation_fractions(trace, gate, low, high)
            ax.scatter(left, right, s=22, alpha=0.75, color=_GATE_COLOURS.get(gate),
                       edgecolors="none", label=f"{gate} ({DESCRIPTIONS.get(gate, gate)})")
        ax.plot([0, 1], [1, 0], color="0.7", linewidth=0.8, linestyle="--")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_aspect("equal")
        ax.set_title(str(label), fontsize=10)
        ax.set_xlabel(f"fraction of steps < {low:g} (left-saturated)", fontsize=8)
        ax.grid(True, linewidth=0.3)
        ax.set_gid(f"panel-{k}")
    axes[0].set_ylabel(f"fraction of steps > {high:g} (right-saturated)", fontsize=8)
    handles = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(text, handle)
    figure.legend(list(handles.values()), list(handles), loc="outside lower center",
                  ncol=max(len(handles), 1), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    return _written(figure, path)


def save(figure, path):
    """Write ``figure`` to ``path`` (PNG or SVG after its suffix), atomically. Returns the
    path."""
    path = os.fspath(path)
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {path!r}: name it .png or .svg")
    from matplotlib import rc_context

    def write(stream):
        # A fixed salt for the SVG's element ids, so that the same picture is the same file.
        with rc_context({"svg.hashsalt": "gatekit"}):
            figure.savefig(stream, format=fmt, metadata=_metadata(fmt))

    atomic_write(path, write)
    return path


# --- Helpers ---------------------------------------------------------------------------------

def _metadata(fmt):
    # No creation date in the files, so that a picture drawn twice is the same file.
    return {"Creator": "gatekit", "Date": None} if fmt == "svg" else {"Software": "gatekit"}


def _written(figure, path):
    if path is not None:
        for one in ([path] if isinstance(path, (str, os.PathLike)) else path):
            save(figure, one)
    return figure


def _quantity(trace, name):
    if name not in trace:
        raise KeyError(f"the trace has no {name!r}; it has {', '.join(trace)}")
    values = np.asarray(trace[name], dtype=float)
    if values.ndim != 3:
        raise ValueError(f"trace[{name!r}] must have shape (T, B, units); got {values.shape}")
    return values


def _prepare(trace, names, batch, units, unit_labels):
    """The quantities to draw for sequence ``batch`` and the units (rows) to draw."""
    if not isinstance(trace, Mapping):
        raise TypeError(f"trace must be the dict Cell.trace returns; got {type(trace).__name__}")
    names = quantities(trace) if names is None else [names] if isinstance(names, str) else \
        list(names)
    if not names:
        raise ValueError("nothing to draw: quantities is empty")
    E = _quantity(trace, "E_t")
    T, B, _ = E.shape
    if not -B <= batch < B:
        raise IndexError(f"batch {batch} is out of range for a trace of {B} sequences")
    values = {}
    H = None
    for name in names:
        value = _quantity(trace, name)
        if value.shape[:2] != (T, B):
            raise ValueError(f"trace[{name!r}] has shape {value.shape}; the input has (T, B) = "
                             f"{(T, B)}")
        H = value.shape[2] if H is None else H
        if value.shape[2] != H:
            raise ValueError(f"quantities of different widths cannot share the unit axis: "
                             f"{name!r} has {value.shape[2]} units, others {H}")
        values[name] = value[:, batch]
    rows = np.arange(H) if units is None else np.asarray(units, dtype=np.intp).reshape(-1)
    if rows.size == 0 or rows.min() < -H or rows.max() >= H:
        raise IndexError(f"units must index the {H} units; got {list(rows)}")
    if unit_labels is None:
        labels = [f"unit {j}" for j in rows]
    else:
        labels = [str(label) for label in unit_labels]
        if len(labels) != len(rows):
            raise ValueError(f"unit_labels has {len(labels)} labels for {len(rows)} units")
    values = {name: value[:, rows] for name, value in values.items()}
    return names, E[:, batch], values, T, rows, labels


def _input_height(E):
    return float(np.clip(0.2 * E.shape[1], 0.9, 2.5))


def _default_size(T, heights):
    width = float(np.clip(0.2 * T + 3.0, 7.0, 18.0))
    return width, 1.0 + 1.05 * sum(heights)


def _colour_scale(values):
    """(vmin, vmax, colour map, clipped): gates in [0, 1] on a sequential scale; signed
    quantities on a diverging one centred on 0: [-1, 1] for what a tanh bounds, else up to the
    95th percentile of the magnitudes (clipped is then True: larger values get the end
    colours)."""
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if low >= 0 and high <= 1:
        return 0.0, 1.0, "viridis", False
    if low >= -1 and high <= 1:
        return -1.0, 1.0, "RdBu_r", False
    bound = float(np.percentile(np.abs(finite), 95)) or max(abs(low), abs(high))
    return -bound, bound, "RdBu_r", bound < max(abs(low), abs(high))


def _panel_title(name):
    description = DESCRIPTIONS.get(name)
    return f"{name}: {description}" if description else name


def _unit_axis(ax, labels):
    if len(labels) <= 32:
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=7 if len(labels) > 12 else 8)
    ax.set_ylabel("unit", fontsize=8)


def _draw_input(figure, ax, E, events, event_names, colorbar=True):
    T, D = E.shape
    vmin, vmax, cmap, clipped = _colour_scale(E)
    image = ax.imshow(E.T, aspect="auto", interpolation="nearest", origin="upper", cmap=(
        "Greys" if (vmin, vmax) == (0.0, 1.0) else cmap), vmin=vmin, vmax=vmax,
        extent=(-0.5, T - 0.5, D - 0.5, -0.5))
    if colorbar:
        figure.colorbar(image, ax=ax, pad=0.01, fraction=0.03,
                        extend="both" if clipped else "neither")
    if event_names is not None:
        if len(event_names) != D:
            raise ValueError(f"event_names has {len(event_names)} names for {D} input features")
        ax.set_yticks(range(D))
        ax.set_yticklabels([str(n) for n in event_names], fontsize=7)
    elif D > 16:
        ax.set_yticks([])
    ax.set_ylabel("input", fontsize=8)
    if events is not None:
        if len(events) != T:
            raise ValueError(f"events has {len(events)} labels for {T} steps")
        top = ax.secondary_xaxis("top")
        top.set_xticks(range(T))
        top.set_xticklabels([str(e) for e in events], rotation=90, fontsize=7)
        top.tick_params(length=0)
    ax.set_title(_panel_title("E_t"), fontsize=9, loc="left")
    ax.set_gid("panel-0")


def _finish(figure, axes, T, marks, title):
    for ax in axes:
        for step in marks:
            ax.axvline(step, color="black", linewidth=0.9, linestyle=(0, (3, 2)), alpha=0.7)
        ax.set_xlim(-0.5, T - 0.5)
    last = axes[-1]
    last.set_xlabel("time step t", fontsize=8)
    if T <= 60:
        last.set_xticks(range(0, T, 5 if T > 20 else 1))
    if title:
        figure.suptitle(title, fontsize=11)
