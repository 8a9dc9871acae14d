"""The Tamiyo service: the decision loop over Oona and the control API, in one process.

``python -m esper.tamiyo.service`` runs it; :mod:`.loop` decides (through
:func:`esper.tamiyo.decide.decide`, the step ``esper train`` runs in process),
:mod:`.control` carries out operator actions, :mod:`.metrics` holds the
Prometheus metrics. Run policies come from :mod:`esper.tamiyo.policies`.
"""
