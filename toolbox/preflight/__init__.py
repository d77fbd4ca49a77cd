"""Preflight: can a backbone be sparsified, re-initialized and pruned: the static analysis and the
dry run on a dummy batch.

May import: everything below ``run`` (the API, ``plugin_host``, ``runtime``, ``storage``,
``models``, ``data``, ``sparsity``, ``methods``, ``pruning``).
"""
