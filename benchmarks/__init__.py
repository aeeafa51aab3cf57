"""The benchmark suites, one per question, behind one entry point: ``python -m benchmarks --suite NAME``.

Each suite is a module with ``main(argv)``; ``python benchmarks/<module>.py`` runs the same thing. They share the
library's interleaved timing and scoring loop (``searchmorph_lite.scoring.run_methods``), :mod:`benchmarks.common`
(the one ``normalize``, threads, results files) and :mod:`benchmarks.memory` (every memory measurement).
"""
