"""gatekit.torch's contenders: ``gatekit.torch.LSTM`` of a variant, with the parameters of
gatekit's cell of that variant, timed as PyTorch's contenders are (``torch_callable``: the loss
``sum(y * dy)`` and ``torch.autograd.grad`` of it), in the ``torch`` family's process. Against
``gatekit-{variant}`` the ratio is what the module costs over gatekit alone; against
``torch-loop-{variant}`` and ``torch.nn.LSTM``, what a PyTorch user gains."""
from harness.cases import inputs
from harness.contenders import Contender, Prepared, gatekit_cell, variant_applies
from harness.torch_contenders import import_torch, torch_callable

__all__ = ["MODULE_VARIANTS", "gatekit_torch_model", "torch_module_contenders"]

#: The variants timed as ``gatekit.torch.LSTM``: issue 15's targets name these two.
MODULE_VARIANTS = ("standard", "peephole")


def gatekit_torch_model(cell):
    """``gatekit.torch.LSTM`` of ``cell``'s variant, sizes and dtype, with ``cell``'s
    parameters."""
    import_torch()
    import gatekit
    model = gatekit.torch.LSTM(cell.input_size, cell.hidden_size, variant=cell.variant,
                               dtype=cell.dtype, threads=cell.threads)
    for name, array in cell.params.items():
        model.gatekit.params[f"l0.{name}"] = array
    return model


def _builder(variant):
    def build(case, settings):
        torch = import_torch()
        model = gatekit_torch_model(gatekit_cell(case, variant))
        x, dy = inputs(case)
        fn = torch_callable(model, torch.from_numpy(x), torch.from_numpy(dy), case.mode)
        return Prepared(fn, {"torch_threads": torch.get_num_threads(),
                             "torch": torch.__version__, "params_from": variant})
    return build


def torch_module_contenders():
    """The ``gatekit.torch.LSTM`` contenders, in the report's order."""
    return [Contender(f"gatekit-torch-{variant}", f"gatekit.torch.LSTM {variant}", "torch",
                      _builder(variant), variant_applies(variant))
            for variant in MODULE_VARIANTS]
