"""``slimming``: plain Network Slimming (Liu et al., ICCV 2017) as a sparsity plugin.

L1 on **every** prunable BN scale, with no selection: ``R(gamma) = sum |gamma|``, subgradient
``s * sign(gamma)`` added to the gradients after backward (option ``--s``, shared with ``sst``).
The masks are the fraction ``--ratio`` r of filters with the smallest mean |gamma| at the end of
the phase. Modes (``--slimming-mode``):

* ``subgradient``: the paper's rule, fixed ``--s`` on every gamma;
* ``proximal``: soft-threshold of every gamma with a fixed ``tau = lr * s``;
* ``target`` (default): every gamma outside the r smallest keeps the fixed ``s * sign(gamma)``,
  while the r smallest are driven to 0 by the adaptive proximal schedule of
  :class:`toolbox.sparsity.training.SparsityTraining`, so the ratio is reached by the phase end.

It adds the same ``sparsify`` phase, masks and metrics as ``sst`` (epoch metrics
``slimming_s`` and ``slimming_ratio``), so ``aod``, ``msl`` and pruning work unchanged.
"""

from __future__ import annotations

from toolbox.sparsity.training import SparsityTraining


class Slimming(SparsityTraining):
    """Network Slimming: L1 on all prunable BN scales; masks = the r smallest |gamma| at phase end."""

    name = "slimming"
    label = "Network Slimming"
    prefix = "slimming"
    strength = "s"
    default_strength = 1e-4
    strength_help = ("L1 strength on the BN scales (subgradient/proximal modes, and the unselected "
                     "filters in target mode)")
    mode_help = ("target: reach --ratio by --sparsity-target-at of the phase, then hold it; "
                 "subgradient/proximal: fixed --s on every gamma")
    selective = False
