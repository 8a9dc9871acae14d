"""Tezzeret: the compiler. A blueprint and a shape in, a validated, measured kernel artifact in Urza out.

:func:`esper.tezzeret.compiler.compile_kernel` does the work (build, compile,
check against eager, measure) without a bus; :class:`esper.tezzeret.worker.Tezzeret`
consumes ``esper.compile.requests`` and publishes ``esper.compile.results``;
``python -m esper.tezzeret.service`` runs it.
"""
