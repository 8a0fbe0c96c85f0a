"""Differential privacy: the mechanism's maths (``mechanism``), the noise source (``noise``) and
the privacy accounting (``accountant``). The server side is the ``DPFedAvg`` strategy wrapper
(:mod:`fedcifar.strategy.dp`); the client side clips in the local update
(:func:`fedcifar.privacy.mechanism.privatize_update`). What is protected: docs/privacy.md.
"""
