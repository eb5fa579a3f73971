"""The seed's nature show as a task: a stream of animals and plants, where the target is what
animals have been seen.

The seed's example: watching a nature show, we see squirrels, trees and a dog/wolf ("we don't
know yet"), then elephants; the show is about wild animals, so the forget gate drops the flora.
Here the flora is what tells the dog from the wolf:

* The show is a sequence of **scenes** separated by a ``cut``. Each scene happens in one
  **habitat**, a forest (its plants: ``tree``, ``fern``) or a garden (``rose``, ``hedge``), and
  shows plants of its habitat, animals (``squirrel``, ``elephant``, ``dog/wolf``) and empty
  frames (``·``).
* The target, at every step, is **which animals have been seen so far** in the show: four
  flags, ``squirrel``, ``elephant``, ``dog``, ``wolf``, each 1 from the step the animal is
  first seen. A ``dog/wolf`` is a wolf when a forest plant has been seen earlier in its scene, a
  dog when a garden plant has, and cannot be told apart (counts as neither) when no plant of
  its scene has been seen yet.

So the cell has to keep two kinds of information: the animals, for the whole show, and the
flora of the current scene, only until the next ``cut``: the flora of an old scene would name
the next scene's dog/wolf wrongly. Everything is generated exactly from a seed.
"""
import numpy as np

from gatekit.nn.losses import MeanSquaredError
from gatekit.study.tasks import Task

__all__ = ["ANIMALS", "cuts", "encode", "EPISODE", "forget_held_open", "habitat", "HABITATS",
           "names", "NatureShow", "targets", "train", "VOCABULARY"]

#: The input tokens, in the order of the input's one-hot columns.
VOCABULARY = ("squirrel", "elephant", "dog/wolf", "tree", "fern", "rose", "hedge", "cut", "·")
#: What the target flags, in the order of its columns.
ANIMALS = ("squirrel", "elephant", "dog", "wolf")
#: The plants of each habitat.
HABITATS = {"forest": ("tree", "fern"), "garden": ("rose", "hedge")}

_INDEX = {token: k for k, token in enumerate(VOCABULARY)}
_FOREST = {_INDEX[p] for p in HABITATS["forest"]}
_GARDEN = {_INDEX[p] for p in HABITATS["garden"]}
_CANINE, _CUT = _INDEX["dog/wolf"], _INDEX["cut"]


class NatureShow(Task):
    """Streams of ``length`` tokens; scenes last ``scene_length`` = (shortest, longest) steps
    (the ``cut`` included). Within a scene each step is a plant of its habitat with probability
    ``p_plant``, a ``dog/wolf`` with ``p_canine``, a squirrel or an elephant with ``p_animal``
    each, an empty frame otherwise.

    ``sample(B, rng)`` gives one-hot inputs ``x`` (T, B, 9) and targets (T, B, 4) of 0 and 1,
    scored at every step by the mean squared error. A stream is solved when every flag, read as
    output > 0.5, is right at every step.
    """

    name = "nature_show"
    description = "the seed's nature show: flag the animals seen so far in a stream of " \
                  "animals, plants and scene cuts"
    default_length = 40
    min_length = 2
    input_size = len(VOCABULARY)
    output_size = len(ANIMALS)
    vocabulary = VOCABULARY
    animals = ANIMALS
    loss = MeanSquaredError()

    def __init__(self, length=None, scene_length=(6, 14), p_plant=0.25, p_canine=0.15,
                 p_animal=0.06):
        super().__init__(length)
        shortest, longest = scene_length
        if not 2 <= shortest <= longest:
            raise ValueError(f"scene_length must be (shortest, longest) with 2 <= shortest <= "
                             f"longest; got {scene_length}")
        if min(p_plant, p_canine, p_animal) < 0 or p_plant + p_canine + 2 * p_animal > 1:
            raise ValueError("the probabilities must be non-negative, with p_plant + p_canine "
                             "+ 2 p_animal at most 1")
        self.scene_length = (int(shortest), int(longest))
        self.p = (float(p_plant), float(p_canine), float(p_animal))

    def options(self):
        p_plant, p_canine, p_animal = self.p
        return {**super().options(), "scene_length": self.scene_length, "p_plant": p_plant,
                "p_canine": p_canine, "p_animal": p_animal}

    def solved(self, outputs, target):
        right = (np.asarray(outputs) > 0.5) == (np.asarray(target) > 0.5)
        return right.all(axis=(0, 2))

    @property
    def baseline_loss(self):
        """The mean squared error of predicting, at each step, the fraction of training streams
        whose flags are set at that step (the best guess that ignores the input), estimated
        from 4096 streams of a fixed seed."""
        _, target = self.sample(4096, np.random.default_rng(12345))
        return float(target.var(axis=1).mean())

    def tokens(self, batch_size, rng):
        """Token indices (T, B) into :data:`VOCABULARY`."""
        T, B = self.length, batch_size
        p_plant, p_canine, p_animal = self.p
        shortest, longest = self.scene_length
        scenes = T // shortest + 1
        # Scene s of stream b ends with a cut at step ends[s, b]; its habitat is forest[s, b].
        ends = np.cumsum(rng.integers(shortest, longest + 1, (scenes, B)), axis=0) - 1
        forest = rng.random((scenes, B)) < 0.5
        steps = np.arange(T)
        scene = np.stack([np.searchsorted(ends[:, b], steps) for b in range(B)], axis=1)
        in_forest = np.take_along_axis(forest, scene, axis=0)
        which = rng.integers(0, 2, (T, B))
        plant = np.where(in_forest, np.array([_INDEX[p] for p in HABITATS["forest"]])[which],
                         np.array([_INDEX[p] for p in HABITATS["garden"]])[which])
        u = rng.random((T, B))
        bounds = np.cumsum([p_plant, p_canine, p_animal, p_animal])
        kinds = np.stack([plant, np.full((T, B), _CANINE), np.full((T, B), _INDEX["squirrel"]),
                          np.full((T, B), _INDEX["elephant"]), np.full((T, B), _INDEX["·"])])
        tokens = np.take_along_axis(kinds, np.searchsorted(bounds, u, side="right")[None], 0)[0]
        is_cut = np.zeros((T, B), bool)
        for b in range(B):
            is_cut[ends[:, b][ends[:, b] < T], b] = True
        tokens[is_cut] = _CUT
        return tokens

    def sample(self, batch_size, rng):
        tokens = self.tokens(batch_size, rng)
        return encode(tokens), targets(tokens)


def encode(tokens):
    """One-hot inputs (T, B, 9) for token indices (T, B), or for a list of token names (then
    (T, 1, 9))."""
    tokens = _indices(tokens)
    return np.eye(len(VOCABULARY))[tokens]


def habitat(tokens):
    """The habitat each step's scene has shown so far: +1 forest, -1 garden, 0 not yet known
    (no plant seen since the last cut, or the cut itself). (T, B) for indices (T, B)."""
    tokens = _indices(tokens)
    known = np.zeros(tokens.shape)
    current = np.zeros(tokens.shape[1:])
    for t in range(tokens.shape[0]):
        current = np.where(np.isin(tokens[t], list(_FOREST)), 1.0,
                           np.where(np.isin(tokens[t], list(_GARDEN)), -1.0,
                                    np.where(tokens[t] == _CUT, 0.0, current)))
        known[t] = current
    return known


def targets(tokens):
    """The animals seen so far (T, B, 4), columns :data:`ANIMALS`, for token indices (T, B)."""
    tokens = _indices(tokens)
    where = habitat(tokens)
    seen_now = np.stack([tokens == _INDEX["squirrel"], tokens == _INDEX["elephant"],
                         (tokens == _CANINE) & (where < 0), (tokens == _CANINE) & (where > 0)],
                        axis=-1)
    return np.maximum.accumulate(seen_now, axis=0).astype(float)


def names(tokens):
    """Token names for indices (T,) or (T, B) (then a list per step of B names)."""
    return np.asarray(VOCABULARY, dtype=object)[np.asarray(tokens)].tolist()


def _indices(tokens):
    if isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str):
        try:
            return np.array([_INDEX[name] for name in tokens], np.intp)[:, None]
        except KeyError as error:
            raise ValueError(f"unknown token {error.args[0]!r}; tokens are "
                             f"{', '.join(VOCABULARY)}") from None
    tokens = np.asarray(tokens)
    if tokens.dtype.kind not in "iu" or tokens.ndim != 2:
        raise ValueError(f"tokens must be integer indices of shape (T, B) or a list of token "
                         f"names; got {tokens.dtype} array of shape {tokens.shape}")
    return tokens


#: A scripted episode for pictures, after the seed's story: squirrels and trees, then a
#: dog/wolf that cannot be told apart yet (the scene has changed and shown no plant), then
#: elephants. Its scenes: a forest; a garden (the first dog/wolf comes before the rose: it
#: counts as neither, and a cell that still remembered the forest would call it a wolf); a
#: forest again; the start of a garden.
EPISODE = ("squirrel", "·", "tree", "·", "fern", "·", "cut",
           "·", "dog/wolf", "·", "·", "rose", "dog/wolf", "·", "cut",
           "elephant", "·", "·", "tree", "·", "dog/wolf", "·", "cut",
           "·", "hedge", "·", "squirrel", "·", "·")


def train(variant="course", steps=2000, hidden_size=8, batch_size=32, lr=1e-2, seed=0,
          task=None, progress=False, **gates):
    """A cell of ``variant`` (gates swapped by ``forget=`` ... as for :class:`gatekit.Cell`)
    with a linear readout, trained with Adam on :class:`NatureShow` streams to flag the
    animals seen (mean squared error at every step). The forget bias starts at 1. Returns the
    :class:`gatekit.training.Model` and the training history."""
    from gatekit.core.cell import Cell
    from gatekit.nn import initialisers, optimisers
    from gatekit.train import training

    task = NatureShow() if task is None else task
    cell = Cell(task.input_size, hidden_size, variant, seed=seed, **gates)
    if "b_f" in cell.params:
        initialisers.forget_bias(cell, 1.0)
    model = training.Model(cell, task.output_size, seed=seed)
    history = training.train(model, lambda rng: task.sample(batch_size, rng), task.loss,
                             optimisers.Adam(model.params, lr=lr), steps, clip=1.0,
                             progress=progress, seed=seed)
    return model, history


def cuts(tokens):
    """Where the scenes end: a boolean mask (T, B) for token indices (T, B), or the list of
    steps for a list of token names."""
    if isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str):
        return [t for t, name in enumerate(tokens) if name == "cut"]
    return _indices(tokens) == _CUT


def forget_held_open(cell, x, hold, state=None):
    """Run ``cell`` over ``x`` (T, B, D) with the reference equations (float64), except that
    its forget factor is forced to ``f_t = 1`` wherever ``hold`` (T, B) or (T,) is true: what
    the cell would do if its forget gate dropped nothing at those steps. Returns every
    quantity of every step like :meth:`gatekit.Cell.trace` (``E_t``, ``f_t``, ..., ``STM_t``).
    """
    from gatekit.core import reference
    x = np.asarray(x, dtype=np.float64)
    T, B, _ = x.shape
    hold = np.broadcast_to(np.asarray(hold, bool).reshape(T, -1), (T, B))
    H = cell.hidden_size
    STM, LTM = (np.zeros((B, H)), np.zeros((B, H))) if state is None else \
        (np.asarray(s, np.float64) for s in state)
    params = {name: np.asarray(value, np.float64) for name, value in cell.params.items()}
    steps = []
    for t in range(T):
        known = dict(params, E_t=x[t], STM_prev=STM, LTM_prev=LTM)
        for gate in cell.gates:                       # forget, learn, remember, use
            produced = reference.call_definition(type(gate).definition, known)
            if type(gate).role == "forget":
                produced["f_t"] = np.where(hold[t][:, None], 1.0, produced["f_t"])
            known.update(produced)
        STM, LTM = known["STM_t"], known["LTM_t"]
        steps.append(known)
    names = ["E_t"] + [n for n in ("f_t", "i_t", "N_t", "LTM_t", "U_t", "V_t", "STM_t")
                       if n in steps[0]]
    return {name: np.stack([np.broadcast_to(s[name], steps[0][name].shape) for s in steps])
            for name in names}
