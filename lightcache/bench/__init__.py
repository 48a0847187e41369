"""The benchmark: every method on the same prompts and seeds, speed, quality and memory side by side.

Modules: :mod:`~lightcache.bench.methods` (what is compared and how each is switched on and off),
:mod:`~lightcache.bench.meter` (what a run really computed, peak memory per stage),
:mod:`~lightcache.bench.harness` (the runs, interleaved in one process), :mod:`~lightcache.bench.results`
(schema, aggregates, Pareto fronts, targets), :mod:`~lightcache.bench.report` and :mod:`~lightcache.bench.chart`
(Markdown and Plotly), :mod:`~lightcache.bench.cli` (``python -m lightcache bench``).

Example:
    >>> from lightcache.bench import BenchConfig
    >>> BenchConfig(quick=True).resolved_seeds()
    (0,)
"""

__all__ = ["BenchConfig", "run_benchmark"]


def __getattr__(name):
    # Lazy: building the CLI's parser imports lightcache.bench.cli, which must not pull in torch and diffusers.
    if name in __all__:
        from . import harness

        return getattr(harness, name)
    raise AttributeError(f"module 'lightcache.bench' has no attribute {name!r}")
