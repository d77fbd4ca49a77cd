"""Pruning: removing masked filters with torch-pruning (compaction), folding the constants of
removed filters and BatchNorms into convs, the compact teacher, cost (params, MACs, latency) and
``toolbox prune`` on a checkpoint file.

May import: the plugin-facing API, ``plugin_host``, ``runtime``, ``storage``, ``models``, ``data``,
``sparsity``, ``methods``. Never imports ``run``, ``tune``, ``cli`` or ``preflight``.
"""
