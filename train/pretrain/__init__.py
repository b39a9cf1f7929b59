"""Masked-LM pretraining of a base encoder: ``config``, ``driver`` (``attune pretrain`` on the driver),
``loop`` (every Ray Train worker), the corpus (``corpus``, ``scan``, ``vocab``, ``mlm``), the MLM head
(``mlm_head``, ``warmup``), ``export``, ``track`` (MLflow, through the registry) and ``cli``.
Other packages use ``train``'s ``__init__``.
"""
