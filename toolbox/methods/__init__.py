"""Method maths shared by plugins: distillation, teachers, re-initialization of filters, BatchNorm
statistics, EWC, shrink-and-perturb. Plain functions on tensors and modules.

May import: the plugin-facing API, ``plugin_host``, ``runtime``, ``storage``, ``models``, ``data``,
``sparsity``. Never imports ``run``, ``tune``, ``cli`` or ``preflight``.
"""
