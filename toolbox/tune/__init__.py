"""``toolbox tune``: the Optuna study and its trials, the search space, storages, the trials report
and local worker processes.

May import: everything but ``cli``.
"""
