"""The built-in gates' equation-gate twins (gatekit.core.equation_twins): each twin, its
built-in gate's definition compiled by the generator, against the hand-written kernels, forward
and backward, in every built-in variant it fits; and which definitions the tracer refuses."""
import numpy as np
import pytest

import gatekit
from gatekit.core import equation_twins
from gatekit.core.builtin_variants import VARIANTS

from support import input_size_for, rel_error

#: Built-in gates in no built-in variant, and a composition that holds them.
COMPOSITIONS = [(variant, {}) for variant in VARIANTS] + [
    ("standard", {"learn": "linear", "use": "linear"})]

#: The built-in gates whose definitions the tracer refuses, and what it names.
REFUSED = {
    ("forget", "peephole"): "an s_t other than the pre-activation",
    ("learn", "mgu"): "parameter W_hn of shape ('H', 'H')",
    ("learn", "mut1"): "parameter W_hh of shape ('H', 'H')",
    ("use", "course"): "parameter W_u of shape ('H', 'H')",
    ("forget", "layernorm"): "parameter g_x of shape (4, 'H')",
    ("learn", "layernorm"): "a definition without ['N_t', 'i_t']",
    ("use", "layernorm"): "a definition without ['V_t']",
}


@pytest.fixture(scope="module")
def traced():
    twins = equation_twins.register_twins()
    yield twins
    gatekit.unregister_plugin(equation_twins.TWIN_PLUGIN)


def test_which_definitions_trace():
    traced, refused = equation_twins.twins()
    assert set(refused) == set(REFUSED)
    for key, words in REFUSED.items():
        assert words in refused[key], key
    assert len(traced) == 24 and ("remember", "standard") in traced


def test_every_twin_is_compared(traced):
    compared = set()
    for variant, overrides in COMPOSITIONS:
        names = {**gatekit.Cell(4, 4, variant, **overrides).gate_names}
        compared |= {key for key in names.items() if key in traced}
    assert compared == set(traced)


def make_pair(traced, variant, overrides, dtype):
    D = input_size_for(variant, 5, 6, **overrides)
    builtin = gatekit.Cell(D, 6, variant, **overrides, dtype=dtype, seed=0, threads=2)
    twin = gatekit.Cell(D, 6, variant, dtype=dtype, seed=0, threads=2,
                        **{**overrides, **equation_twins.twin_overrides(builtin.gate_names,
                                                                        traced)})
    rng = np.random.default_rng(1)
    for name, array in builtin.params.items():
        array[...] += 0.3 * rng.standard_normal(array.shape).astype(dtype)
        twin.params[name][...] = array
    return builtin, twin, rng.standard_normal((7, 3, D)).astype(dtype)


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("variant, overrides", COMPOSITIONS,
                         ids=[variant + "".join(f"-{r}:{g}" for r, g in overrides.items())
                              for variant, overrides in COMPOSITIONS])
def test_twin_matches_its_handwritten_gate(traced, variant, overrides, dtype, tolerance):
    builtin, twin, x = make_pair(traced, variant, overrides, dtype)
    if twin.gate_names == builtin.gate_names:
        pytest.skip(f"no gate of {variant} has a twin")
    dy = np.random.default_rng(2).standard_normal((7, 3, 6)).astype(dtype)
    (y, _, tape), (y_twin, _, tape_twin) = builtin.forward(x, keep=True), twin.forward(x, keep=True)
    assert rel_error(y_twin, y) < tolerance
    got, want = twin.backward(tape_twin, dy), builtin.backward(tape, dy)
    assert set(got) == set(want)
    for name in want:
        # Relative to the gradient, or to 1 where it is smaller: some gradients are zero in
        # exact arithmetic and rounding alone (slstm's b_i: its normaliser cancels the scale
        # of the input gate), where a relative error measures nothing.
        scale = max(np.linalg.norm(want[name]), 1.0)
        assert np.linalg.norm(got[name] - want[name]) < 10 * tolerance * scale, name


def test_write_source_of_a_builtin_gate(tmp_path, traced):
    """The build-time path: a built-in gate's definition written out as C, the very source
    its twin's library in the build cache was compiled from."""
    from gatekit.core import compiler
    from gatekit.core.equation_gate import write_source
    builtin = gatekit.Cell(4, 4, "standard").gates[0]
    path = tmp_path / "forget_standard.c"
    source = write_source(type(builtin), path)
    assert path.read_text() == source.text and "gk_backward_double" in source.text
    cached = list(compiler.cache_dir().glob("forget-standard_twin-*.c"))
    assert cached and all(c.read_text() == source.text for c in cached)
    assert [p.name for p in tmp_path.iterdir()] == ["forget_standard.c"]
