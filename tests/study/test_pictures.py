"""gatekit.study.pictures and the nature show (gatekit.study.nature_show and its worked
example); what `gatekit trace` draws is tested in tests/test_cli.py.

Images are checked from the files written: pixel sizes read back with PIL, SVG sizes and
panel counts read from the SVG's XML (every panel is a group with id ``panel-<k>``), and
pixels that are not all one colour. Numbers are checked against hand computations.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import gatekit
from gatekit.core import reference
from gatekit.study import nature_show
from gatekit.study import pictures as visual

from support import REPO, child_env, needs, no_temporary_files, png_size, svg_panels_and_size

needs("matplotlib")


@pytest.fixture(scope="module")
def course_trace():
    cell = gatekit.Cell(3, 6, "course", seed=0)
    x = np.random.default_rng(0).standard_normal((12, 2, 3))
    return cell.trace(x)


def test_heatmaps_write_png_and_svg_of_the_requested_size_and_panels(course_trace, tmp_path):
    png, svg = tmp_path / "h.png", tmp_path / "h.svg"
    visual.heatmaps(course_trace, size=(8, 6), dpi=50, path=[png, svg])
    assert png_size(png) == (400, 300)
    panels, size = svg_panels_and_size(svg)
    # The input, then every quantity the reference computes (and s_t, which it also does).
    cell = gatekit.Cell(3, 6, "course", seed=0)
    names = set(reference.step(cell, np.zeros((1, 3)), np.zeros((1, 6)), np.zeros((1, 6))))
    names -= set(cell.params) | {"E_t", "STM_prev", "LTM_prev"}
    assert len(panels) == 1 + len(names) == 9
    assert size == (8 * 72, 6 * 72)
    assert no_temporary_files(tmp_path)


def test_heatmaps_of_chosen_quantities_units_and_labels(course_trace, tmp_path):
    path = tmp_path / "h.svg"
    visual.heatmaps(course_trace, ["f_t", "LTM_t"], batch=1, units=[4, 0, 2],
                    unit_labels=["a", "b", "c"], events=[f"e{t}" for t in range(12)],
                    event_names=["x", "y", "z"], marks=[3, 7], title="t", path=path)
    panels, _ = svg_panels_and_size(path)
    assert panels == ["panel-0", "panel-1", "panel-2"]
    text = path.read_text()
    for label in ("e11", "f_t: forget factor", "LTM_t: long-term memory"):
        assert label in text
    png = tmp_path / "default.png"
    visual.heatmaps(course_trace, "V_t", path=png)
    width, height = png_size(png)
    assert width > height > 0


def test_lines_of_chosen_units(course_trace, tmp_path):
    png, svg = tmp_path / "l.png", tmp_path / "l.svg"
    visual.lines(course_trace, [1, 3], ("LTM_t", "f_t", "i_t"), size=(6, 5), dpi=40,
                 path=[png, svg])
    assert png_size(png) == (240, 200)
    panels, size = svg_panels_and_size(svg)
    assert len(panels) == 4 and size == (6 * 72, 5 * 72)
    visual.lines(course_trace, 2, ["STM_t"], path=svg)
    assert len(svg_panels_and_size(svg)[0]) == 2


def test_saturation_side_by_side(tmp_path):
    x = np.random.default_rng(1).standard_normal((30, 4, 3))
    traces = {name: gatekit.Cell(3, 5, name, seed=0).trace(x)
              for name in ("course", "standard", "nfg")}
    png, svg = tmp_path / "s.png", tmp_path / "s.svg"
    visual.saturation(dict(list(traces.items())[:2]), size=(7, 3.5), dpi=60, path=[png, svg])
    assert png_size(png) == (420, 210)
    assert len(svg_panels_and_size(svg)[0]) == 2
    visual.saturation(traces, path=svg)
    assert len(svg_panels_and_size(svg)[0]) == 3


def test_saturation_fractions_by_hand():
    f = np.full((10, 2, 2), 0.5)
    f[:3, 0, 0] = 0.05          # unit 0: 3 of 20 steps below 0.1, 5 above 0.9
    f[3:8, 0, 0] = 0.95
    f[:, 1, 1] = 0.99           # unit 1: 10 of 20 above 0.9, none below
    left, right = visual.saturation_fractions({"f_t": f}, "f_t")
    np.testing.assert_allclose(left, [3 / 20, 0])
    np.testing.assert_allclose(right, [5 / 20, 10 / 20])
    f[5:, 1] = np.nan           # padded steps are not counted
    left, right = visual.saturation_fractions({"f_t": f}, "f_t", low=0.2, high=0.96)
    np.testing.assert_allclose(left, [3 / 15, 0])
    np.testing.assert_allclose(right, [0, 5 / 15])


def test_bad_requests_are_refused(course_trace, tmp_path):
    with pytest.raises(KeyError, match="no 'z_t'"):
        visual.heatmaps(course_trace, ["z_t"])
    with pytest.raises(IndexError, match="units"):
        visual.heatmaps(course_trace, units=[6])
    with pytest.raises(IndexError, match="batch"):
        visual.lines(course_trace, [0], batch=2)
    with pytest.raises(ValueError, match="events has 3 labels for 12 steps"):
        visual.heatmaps(course_trace, events=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        visual.heatmaps(course_trace, path=tmp_path / "h.jpg")
    with pytest.raises(TypeError, match="mapping"):
        visual.saturation([course_trace])
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_old_file(course_trace, tmp_path, monkeypatch):
    path = tmp_path / "h.png"
    path.write_bytes(b"old")
    figure = visual.heatmaps(course_trace, ["f_t"])

    def broken(stream, **kwargs):
        stream.write(b"half a picture")
        raise OSError("disk full")

    monkeypatch.setattr(figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        visual.save(figure, path)
    assert path.read_bytes() == b"old"
    assert no_temporary_files(tmp_path)


def test_without_matplotlib_the_error_says_what_to_install(course_trace, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install gatekit\[plot\]"):
        visual.heatmaps(course_trace)


def test_drawing_is_headless(tmp_path):
    """No display, no pyplot: the figures live on the Agg canvas."""
    script = ("import sys, numpy as np, gatekit\n"
              "from gatekit.study import pictures as visual\n"
              "t = gatekit.Cell(2, 3, 'standard', seed=0).trace(np.ones((4, 1, 2)))\n"
              f"visual.heatmaps(t, path={str(tmp_path / 'h.png')!r})\n"
              f"visual.saturation({{'a': t}}, path={str(tmp_path / 's.svg')!r})\n"
              "assert 'matplotlib.pyplot' not in sys.modules\n")
    env = child_env(DISPLAY=None, MPLBACKEND=None, WAYLAND_DISPLAY=None)
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=120,
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert png_size(tmp_path / "h.png")[0] > 0


# --- The nature show -----------------------------------------------------------------------------

def test_the_episode_targets_by_hand():
    target = nature_show.targets(list(nature_show.EPISODE))[:, 0]
    first = {name: int(np.argmax(target[:, k])) if target[:, k].any() else None
             for k, name in enumerate(nature_show.ANIMALS)}
    # squirrel at 0; the dog/wolf at 8 comes after a cut and before any plant: neither; the
    # rose at 11 makes the dog/wolf at 12 a dog; elephant at 15; tree at 18 then dog/wolf at 20.
    assert first == {"squirrel": 0, "elephant": 15, "dog": 12, "wolf": 20}
    assert (np.diff(target, axis=0) >= 0).all()
    assert nature_show.cuts(list(nature_show.EPISODE)) == [6, 14, 22]


def test_nature_show_streams():
    task = nature_show.NatureShow(60)
    tokens = task.tokens(200, np.random.default_rng(0))
    x, target = task.sample(3, np.random.default_rng(1))
    assert x.shape == (60, 3, 9) and target.shape == (60, 3, 4)
    assert (x.sum(axis=-1) == 1).all()
    names = np.array(nature_show.VOCABULARY)[tokens]
    forest, garden = {"tree", "fern"}, {"rose", "hedge"}
    for b in range(tokens.shape[1]):
        scene = []
        for name in list(names[:, b]) + ["cut"]:
            if name == "cut":
                assert 0 <= len(scene) <= 13
                plants = set(scene) & (forest | garden)
                assert plants <= forest or plants <= garden, scene
                scene = []
            else:
                scene.append(name)
    # Solved: every flag on the right side of 0.5 at every step; one flag wrong at one step of
    # the second stream (a 1 read as 0.5, which is not above it) fails that stream alone.
    outputs = np.where(target > 0.5, 0.9, 0.1)
    assert task.solved(outputs, target).tolist() == [True, True, True]
    step, animal = np.argwhere(target[:, 1] == 1)[0]
    outputs[step, 1, animal] = 0.5
    assert task.solved(outputs, target).tolist() == [True, False, True]


def test_forget_held_open():
    cell = gatekit.Cell(9, 4, "course", dtype=np.float64, seed=0)
    x = nature_show.encode(list(nature_show.EPISODE))
    free = nature_show.forget_held_open(cell, x, np.zeros(len(x), bool))
    np.testing.assert_allclose(free["STM_t"], reference.forward(cell, x)[0], rtol=0, atol=1e-12)
    held = nature_show.forget_held_open(cell, x, np.ones(len(x), bool))
    assert (held["f_t"] == 1).all()
    np.testing.assert_allclose(np.diff(held["LTM_t"], axis=0),
                               (held["N_t"] * held["i_t"])[1:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("arguments", [["--formats", "jpg"], ["--steps", "-1"],
                                       ["--hidden-size", "0"]])
def test_the_worked_example_refuses_bad_options_before_training(tmp_path, arguments):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "nature_show.py"),
                           "--out", str(tmp_path), *arguments],
                          env=child_env(), timeout=300, capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "training" not in done.stdout
    assert f"argument {arguments[0]}" in done.stderr
    assert os.listdir(tmp_path) == []


def test_the_worked_example_writes_its_pictures(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "nature_show.py"),
                           "--out", str(tmp_path), "--steps", "20", "--formats", "png", "svg"],
                          env=child_env(), timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "streams with every flag right" in done.stdout
    expected = {"heatmaps": 6, "units": 4, "forget_held_open": 4, "saturation": 2}
    for stem, count in expected.items():
        assert png_size(tmp_path / f"nature_show_{stem}.png")[0] > 0
        assert len(svg_panels_and_size(tmp_path / f"nature_show_{stem}.svg")[0]) == count
