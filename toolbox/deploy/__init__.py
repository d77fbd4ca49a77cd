"""Putting each step's model to work: the predictor that carries its preprocessing
(``toolbox.load_predictor``, ``toolbox predict``), export for a runtime with a parity check
(``toolbox export``) and the HTTP endpoint that follows the promoted model (``toolbox serve``).

May import: everything but ``tune``, ``compare`` and ``cli``.
"""
