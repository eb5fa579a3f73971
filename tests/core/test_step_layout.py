"""The step the compiled loops fill untyped (StepAny, gatekit/core/_step.pxd) and hand to the
gates as a StepFloat or StepDouble (gatekit/core/_gate.pxd): the three structs must agree field
by field, in every loop and in every build of it this CPU loads."""
import re
from importlib import resources

import pytest

from gatekit.core import instruction_sets

LOOPS = ["_loop", "_scan", "_projection"]


def declared_fields(source, struct):
    """The field names of ``ctypedef struct <struct>:`` or ``cdef struct <struct>:`` in a .pxd,
    read from its text (the oracle: the declarations, not the compiled check)."""
    text = resources.files("gatekit.core").joinpath(source).read_text()
    body = re.search(rf"^(?:ctypedef|cdef) struct {struct}:\n((?:    .*\n|\s*\n)+)", text,
                     re.MULTILINE).group(1)
    names = []
    for line in body.splitlines():
        code = line.split("#")[0].strip()
        if code:
            names.append(re.search(r"(\w+)$", code).group(1))
    return names


def test_the_untyped_step_declares_the_fields_of_both_typed_ones_in_their_order():
    fields = declared_fields("_gate.pxd", "StepFloat")
    assert fields[:3] == ["e", "z", "s_t"] and fields[-1] == "post_product"
    assert declared_fields("_gate.pxd", "StepDouble") == fields
    assert declared_fields("_step.pxd", "StepAny") == fields


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("build", ["baseline", "loaded"])
def test_every_field_lies_at_the_same_offset_in_the_three_structs(loop, build):
    if build == "baseline":
        module = __import__(f"gatekit.core.{loop}", fromlist=["_check_layout"])
    else:
        module = instruction_sets.load(loop)
    layout = module._check_layout()
    names = [name for name, *_ in layout]
    assert names == declared_fields("_gate.pxd", "StepFloat") + ["sizeof"]
    for name, offset_any, offset_float, offset_double in layout:
        assert offset_any == offset_float == offset_double, name
    offsets = [offset for _, offset, _, _ in layout]
    assert offsets[0] == 0
    assert offsets == sorted(set(offsets)), "fields overlap or are out of order"
    # Every field is a pointer but e (the Extent) and error (an int, padded to a pointer).
    assert layout[-1][1] >= offsets[-2] + 8
