"""Simic: training Tamiyo's policies.

PPO over any Gymnasium vector env (:mod:`esper.simic.ppo`), per-update
diagnostics (:mod:`esper.simic.diagnostics`), the Gymnasium environment over
Tolaria+Kasmina (:mod:`esper.simic.env`), task variants
(:mod:`esper.simic.variants`), offline training from recorded runs
(:mod:`esper.simic.offline`), the training job behind ``esper simic train``
(:mod:`esper.simic.train`) and policy comparisons (:mod:`esper.simic.compare`).
"""
