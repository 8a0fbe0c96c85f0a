"""``fedcifar bench``: fedcifar against the paper's pipeline, Flower and the hardware limit.

``run`` orchestrates; ``impl`` holds fedcifar's measured parts; ``probes`` the FLOP counting
and the peak matmul; ``memory`` the process-tree sampler; ``report`` the ratios and table.
The reference pipelines live in ``peers/`` (``paper_style.py`` and the Flower app
``flower_app/``), shipped with the package; ``fedcifar bench`` runs them as scripts.
"""
