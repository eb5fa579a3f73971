"""The benchmark suite's harness: what is timed, how, and the command that runs the suite and
writes its report. It depends on gatekit; gatekit knows nothing of it (it is not in the wheel).

A *case* is one shape (T, B, D, H), one dtype and one mode (``forward``, or ``fwdbwd``: forward
then backward of the loss ``sum(y * dy)`` for a fixed ``dy``, down to every parameter and the
input ``x``). A *contender* is one implementation; :meth:`Contender.build` turns a case into a
:class:`Prepared` zero-argument callable, with the inputs, parameters and (for JAX) the compiled
program built beforehand, outside the timed call. The pytest-benchmark suite in ``benchmarks/``
times these callables.

Families (each runs in its own process under ``run``, so that one library's idle BLAS or OpenMP
threads spinning after a call do not slow the next library's threads):

- ``gatekit``: every built-in variant; ``standard`` again with ``threads=1``; the NumPy
  reference (forward only, where one call takes less than ``Settings.reference_limit``
  seconds); the example plugins' Cython forget gate (variant ``floored``) and Python Use gate
  (``standard`` with ``use="softsign"``).
- ``gatekit-avx2``, ``gatekit-baseline``: ``standard`` on the kernels ``GATEKIT_KERNELS=avx2``
  and ``=baseline`` choose (read when gatekit is imported, so one process each).
- ``torch``: ``torch.nn.LSTM`` (the fused kernel; forward under ``torch.no_grad()``, forward and
  backward with autograd), ``torch.nn.GRU`` (ATen's per-step loop: PyTorch has no fused GRU on
  CPU), and ``course``, ``peephole`` and ``cifg`` written the way a PyTorch user writes a custom
  cell: a Python loop over time steps of torch ops, one ``Linear`` on ``cat([h, x])`` for all
  gate blocks; issue 13's cells (``contenders.NEW_CELLS``) likewise.
- ``jax``: the same variants and cells as ``jax.jit`` of a ``jax.lax.scan`` loop; the compile
  time is measured apart (``Prepared.info["compile_s"]``) and never timed with the call.

Parameters are copied from a gatekit cell of the same variant, so every contender of a group
computes on the same numbers; ``benchmarks/test_correctness.py`` checks that they compute the
same outputs and gradients as gatekit.

The modules, by what each does:

- :mod:`harness.cases`: shapes, dtypes, modes, families and loads; the cases and their inputs.
- :mod:`gatekit.benchmarking` (in gatekit, shared with its pytest plugin for gate authors):
  the shapes, the case and its inputs, how long each benchmark is timed (settings, rounds),
  the calls of a gatekit cell, of the NumPy reference and of ``torch.nn.LSTM``.
- :mod:`harness.contenders`: what a contender is, and gatekit's contenders;
  :mod:`harness.torch_contenders`, :mod:`harness.jax_contenders`: PyTorch's and JAX's;
  :mod:`harness.lineup`: all of them, in the report's order.
- :mod:`harness.machine`: what a process ran on (CPU, versions, thread pools), the CPU time
  other processes took, and the CPU-bound process of the busy load.
- :mod:`harness.report`: the issue's target ratios and the markdown report.
- :mod:`harness.runner`: the guards, then one ``pytest benchmarks`` process per family and load.
- :mod:`harness.command`: the command line, ``python benchmarks/run.py run|report``.
"""
