"""The built-in gates built from their definitions: one source of truth.

A built-in gate whose NumPy definition (``gatekit.reference``) compiles to kernels as fast as
hand-written ones (issue 14: forward and backward within 5 %, measured gate by gate by
``benchmarks/twins.py --per-gate``) has no hand-written kernels. Its declarations are stated here, in
:data:`GATES`, once; from them:

- at build time, ``setup.py`` (which cannot import gatekit: its ``__init__`` imports the
  compiled modules, so it loads this module and the pure-Python ones it imports by their
  paths) traces each definition (``gatekit.core.equation``), generates its four kernels
  (``gatekit.core.codegen``: float and double, forward and backward) and writes them, all
  gates in one C header (:func:`header`), to the build folder, never to the source tree nor to
  git: what is compiled is what the generator writes today, so there is nothing to keep in
  step. ``_builtin.pyx`` includes that header, so the kernels are compiled into each build of
  ``_builtin`` (portable, AVX2, AVX-512) with its flags and linked statically: no compiler,
  no build cache, no ``dlopen`` at run time. The header also holds each gate's slots (what
  each array of a kernel is), as JSON, and a fingerprint of it all, which the tests compare
  with what the generator writes from the source tree (tests/equation/test_derived.py).
- at run time, ``_builtin`` makes each gate's class from the same declarations
  (:func:`declarations`) on its ``DerivedGate``, the compiled gate of the equation gates
  (``gatekit.core._generated.GeneratedGate``, whose argument struct it fills from the slots)
  with the kernels found in that module rather than in a shared library.

The generated C has no bounds checks, in the ``GATEKIT_DEBUG=1`` build too: it is compiled
there without optimisation, and its reads are held by the suite to the reference's results.

What stays hand-written in ``_builtin.pyx``, and why, is said there, gate by gate.
"""
import hashlib
import json

from gatekit.core import codegen, equation, reference
from gatekit.core.declared import Declarations

__all__ = ["declarations", "fingerprint", "GATES", "header", "HEADER", "prefix", "traced_class"]

#: The file the build writes the kernels to (in its build folder).
HEADER = "_derived.h"

#: The declarations of each built-in gate built from its definition, by class name.
GATES = {
    "ForgetStandard": dict(role="forget", name="standard", blocks=("f",), outputs=("s_t", "f_t"),
                           definition=reference.forget,
                           backward_definition=reference.forget_backward),
    "ForgetNone": dict(role="forget", name="none", definition=reference.forget_none,
                       backward_definition=reference.forget_none_backward),
    "ForgetEvent": dict(role="forget", name="event", blocks=("f",), reads={"f": "event"},
                        outputs=("s_t", "f_t"), definition=reference.forget_event,
                        backward_definition=reference.forget_event_backward,
                        __doc__="f_t = σ(W_f E_t + b_f): the forget factor of minGRU and MUT1 (1 "
                                "- their update gate z)."),
    "ForgetMin": dict(role="forget", name="min", blocks=("f", "i"),
                      reads={"f": "event", "i": "event"}, definition=reference.forget_min,
                      backward_definition=reference.forget_min_backward,
                      __doc__="minLSTM's normalised forget factor f_t = σ(z_f) / (σ(z_f) + "
                              "σ(z_i)), both blocks reading the event only (its learn gate `min` "
                              "takes i_t = 1 - f_t, minLSTM's normalised i)."),
    "LearnStandard": dict(role="learn", name="standard", blocks=("n", "i"),
                          definition=reference.learn,
                          backward_definition=reference.learn_backward),
    "LearnPeephole": dict(role="learn", name="peephole", blocks=("n", "i"),
                          params={"p_i": ("H",)}, definition=reference.learn_peephole,
                          backward_definition=reference.learn_peephole_backward),
    "LearnNoIgnore": dict(role="learn", name="no_ignore", blocks=("n",),
                          definition=reference.learn_no_ignore,
                          backward_definition=reference.learn_no_ignore_backward),
    "LearnLinear": dict(role="learn", name="linear", blocks=("n", "i"),
                        definition=reference.learn_linear,
                        backward_definition=reference.learn_linear_backward),
    "LearnLinearPeephole": dict(role="learn", name="linear_peephole", blocks=("n", "i"),
                                params={"p_i": ("H",)},
                                definition=reference.learn_linear_peephole,
                                backward_definition=reference.learn_linear_peephole_backward),
    "LearnCoupled": dict(role="learn", name="coupled", blocks=("n",),
                         definition=reference.learn_coupled,
                         backward_definition=reference.learn_coupled_backward),
    "LearnJanet": dict(role="learn", name="janet", blocks=("n",),
                       definition=reference.learn_janet,
                       backward_definition=reference.learn_janet_backward),
    "LearnMin": dict(role="learn", name="min", blocks=("n",), reads={"n": "event"},
                     definition=reference.learn_min,
                     backward_definition=reference.learn_min_backward,
                     __doc__="minGRU's and minLSTM's: N_t = W_n E_t + b_n (linear, the event "
                             "only), i_t = 1 - f_t."),
    "LearnReset": dict(role="learn", name="reset", blocks=("r", "n", "hn"),
                       reads={"n": "event", "hn": "STM"}, definition=reference.learn_reset,
                       backward_definition=reference.learn_reset_backward,
                       __doc__="GRU's candidate as torch.nn.GRU computes it: N_t = tanh(z_n + "
                               "σ(z_r) ⊙ z_hn) with z_n reading the event only and z_hn the STM "
                               "only (the reset gate scales the recurrent part, its bias b_hn "
                               "included), i_t = 1 - f_t."),
    "RememberStandard": dict(role="remember", name="standard", definition=reference.remember,
                             backward_definition=reference.remember_backward),
    "UseStandard": dict(role="use", name="standard", blocks=("v",), definition=reference.use,
                        backward_definition=reference.use_backward),
    "UsePeephole": dict(role="use", name="peephole", blocks=("v",), params={"p_v": ("H",)},
                        definition=reference.use_peephole,
                        backward_definition=reference.use_peephole_backward),
    "UseLinear": dict(role="use", name="linear", blocks=("v",), definition=reference.use_linear,
                      backward_definition=reference.use_linear_backward),
    "UseLinearPeephole": dict(role="use", name="linear_peephole", blocks=("v",),
                              params={"p_v": ("H",)}, definition=reference.use_linear_peephole,
                              backward_definition=reference.use_linear_peephole_backward),
    "UseNoOutputGate": dict(role="use", name="no_output_gate",
                            definition=reference.use_no_output_gate,
                            backward_definition=reference.use_no_output_gate_backward),
    "UseMemory": dict(role="use", name="memory", stm_is_ltm=True, definition=reference.use_memory,
                      backward_definition=reference.use_memory_backward),
    "UseLiteral": dict(role="use", name="literal", blocks=("u", "v"),
                       definition=reference.use_literal,
                       backward_definition=reference.use_literal_backward),
    "ForgetSlstm": dict(role="forget", name="slstm", blocks=("f", "i"), memories=("m",),
                        outputs=("f_t", "i_t"), definition=reference.forget_slstm,
                        backward_definition=reference.forget_slstm_backward,
                        __doc__="sLSTM's exponential forget and input gates and their stabiliser "
                                "m, computed together: the learn gate passes i_t on."),
    "LearnSlstm": dict(role="learn", name="slstm", blocks=("n",),
                       definition=reference.learn_slstm,
                       backward_definition=reference.learn_slstm_backward,
                       __doc__="sLSTM's cell input N_t = tanh(z̃); i_t is the forget gate's "
                               "(already in place)."),
    "UseSlstm": dict(role="use", name="slstm", blocks=("v",), memories=("n",),
                     definition=reference.use_slstm,
                     backward_definition=reference.use_slstm_backward,
                     __doc__="sLSTM's output, normalised by the memory n: STM_t = σ(õ) ⊙ LTM_t / "
                             "n_t."),
}

_FUNCTIONS = ("definition", "backward_definition")


def declarations(class_name):
    """The class attributes of the built-in gate ``class_name`` of :data:`GATES`."""
    declared = dict(GATES[class_name])
    declared.update({name: staticmethod(declared[name]) for name in _FUNCTIONS
                     if name in declared})
    return declared


def traced_class(class_name):
    """The declarations of ``class_name`` as a class the tracer reads, without the compiled
    core."""
    return type(class_name, (Declarations,), declarations(class_name))


def prefix(class_name):
    """The prefix of the names of the kernels of ``class_name`` (``codegen.symbols``)."""
    return f"gk_{GATES[class_name]['role']}_{GATES[class_name]['name']}_"


def header():
    """The C header of every gate of :data:`GATES`: its kernels, declared static; the table
    ``GK_DERIVED_KERNELS`` of their names and addresses, ended by a NULL name;
    ``GK_DERIVED_SLOTS``, a JSON object giving each gate's forward and backward slots, by class
    name; and ``GK_DERIVED_FINGERPRINT``, the :func:`fingerprint` of all that, by which a
    build is known to hold what the generator writes today."""
    body = _body()
    return body + f'static const char GK_DERIVED_FINGERPRINT[] = "{fingerprint(body)}";\n'


def fingerprint(body=None):
    """A hash of the header's kernels, table and slots (by default, as generated now)."""
    return hashlib.sha256((_body() if body is None else body).encode()).hexdigest()


def _body():
    parts = ["/* Written by setup.py from gatekit.core.derived: do not edit. */",
             *codegen.HEADERS, ""]
    table, slots = [], {}
    for class_name in GATES:
        source = codegen.generate(equation.trace(traced_class(class_name)),
                                  prefix(class_name), storage="static ", headers=False)
        parts.append(source.text)
        table += [f'    {{"{symbol}", {symbol}}},'
                  for symbol in codegen.symbols(prefix(class_name))]
        slots[class_name] = {"forward": source.forward_slots, "backward": source.backward_slots}
    text = json.dumps(slots, separators=(",", ":")).replace("\\", "\\\\").replace('"', '\\"')
    parts += ["typedef struct { const char* symbol; gk_generated_kernel kernel; } "
              "gk_derived_kernel;",
              "static const gk_derived_kernel GK_DERIVED_KERNELS[] = {", *table,
              "    {NULL, NULL}", "};", f'static const char GK_DERIVED_SLOTS[] = "{text}";', ""]
    return "\n".join(parts)
