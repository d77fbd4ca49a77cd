"""``toolbox compare``: which method for my data, with paired seeds, equal compute and equal
tuning, and its tables, plots and sentences.

May import: everything but ``deploy`` and ``cli``.
"""
