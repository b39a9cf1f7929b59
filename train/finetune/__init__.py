"""Fine-tuning one tenant's classifier: ``config`` (the options), ``driver`` (``attune finetune`` on the
driver: validate, launch Ray Train, collect the export, register), ``loop`` (what every Ray Train
worker runs), ``model``, ``export`` and ``predict`` (the exported directory), ``register`` (the
registry hand-off and the gate's score) and ``cli``. Other packages use ``train``'s ``__init__``.
"""
