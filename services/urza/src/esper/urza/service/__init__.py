"""Urza as a service: ``python -m esper.urza.service``."""
