"""Urza's HTTP API: one router per resource (blueprints, kernels, blobs)."""
