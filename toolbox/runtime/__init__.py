"""Runtime: the device and precision a run computes with, and torchrun's process group.

May import: ``toolbox.errors`` only.
"""
