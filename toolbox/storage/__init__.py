"""Storage: atomic file writes, checkpoints (saved and loaded safely) and structure records.

May import: ``toolbox.errors``, ``runtime``, ``models`` (a checkpoint rebuilds its model).
"""
