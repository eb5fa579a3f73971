"""gatekit's benchmark suite, from the repository's root (``make bench`` runs it so):

    python benchmarks/run.py run --shapes S1,fixed --load idle --out .benchmarks/report.md
    python benchmarks/run.py report .benchmarks/run-<time> --out report.md

``run`` runs the correctness guards, then each family in its own ``pytest benchmarks`` process,
and writes the merged markdown report; ``report`` renders a run's report again from its JSON
files. ``--help`` lists the options; the harness is the package ``benchmarks/harness``."""
import sys

from harness.command import main

if __name__ == "__main__":
    sys.exit(main())
