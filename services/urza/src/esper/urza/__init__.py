"""Urza: the blueprint and kernel store.

Blueprints (versioned recipes with a family, a config schema and a
description) and kernels (one blueprint compiled for one config, shape, dtype
and target, with its status and measurements) live in SQL through SQLAlchemy
(:mod:`esper.urza.db`, migrations under ``esper/urza/migrations``); compiled
artifacts are content-addressed blobs behind :class:`esper.urza.blobs.BlobStore`.
:func:`esper.urza.app.create_app` is the HTTP API; ``python -m esper.urza.service``
runs it.
"""
