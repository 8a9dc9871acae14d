"""The Tamiyo service: the decision loop over Oona and the control API, in one process.

``python -m esper.tamiyo.service`` runs it; :mod:`.loop` decides, :mod:`.control`
carries out operator actions, :mod:`.wiring` builds run policies,
:mod:`.metrics` holds the Prometheus metrics.
"""
