"""Esper inside other training loops.

``esper.integrations.lightning.EsperCallback`` grows a PyTorch Lightning
``LightningModule`` (install the ``lightning`` extra).
"""
