"""The learned Tamiyo: a GNN policy over the model graph (needs torch and torch_geometric: the ``gnn`` extra).

:mod:`~esper.tamiyo.gnn.observation` (what a decision sees, which actions are
legal; torch-free), :mod:`~esper.tamiyo.gnn.features` (Leyline messages to a
PyG graph), :mod:`~esper.tamiyo.gnn.network` (GATv2 + attentional readout +
factored heads), :mod:`~esper.tamiyo.gnn.policy` (the ``Policy`` Tolaria and
the Tamiyo service call). Trained by Simic (``esper simic train``).
"""
