"""Tezzeret as a service: ``python -m esper.tezzeret.service``."""

from esper.tezzeret.service.app import TezzeretService

__all__ = ["TezzeretService"]
