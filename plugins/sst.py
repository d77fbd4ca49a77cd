"""``sst``: selective sparsity training (adds a ``sparsify`` phase to every step but the last).

Only the *selected* BN scales are regularized: the fraction ``--ratio`` r of prunable filters
(BN channel groups from :mod:`toolbox.sparsity.channels`) with the smallest mean |gamma|, ranked globally
(or per layer) and re-ranked at every epoch start. Modes (``--sst-mode``):

* ``target`` (default): a proximal L1 step after every optimizer step,
  ``gamma <- sign(gamma) * max(|gamma| - tau, 0)`` on the selected gammas, with ``tau = m / R``:
  ``m`` the largest selected |gamma| left and ``R`` the optimizer steps left until
  ``--sparsity-target-at`` of the phase (default 0.5). The largest selected gamma thus falls
  linearly to 0 by then whatever the phase length; the selection is then frozen and held at 0
  while the rest of the network recovers for the remaining steps, so the ratio r is reached by
  construction. The phase end zeroes anything left and warns when that removed gammas still above
  ``--sparsity-threshold`` (:mod:`toolbox.sparsity.target_schedule`).
* ``subgradient``: Network Slimming's ``grad += s * sign(gamma)`` with fixed ``--s``.
* ``proximal``: the same soft-threshold with a fixed ``tau = lr * s``.

At the phase end the selected filters become ``ctx.masks`` and the achieved sparsity is reported.
The machinery is :class:`toolbox.sparsity.training.SparsityTraining`; SST is its selective L1 case.
"""

from __future__ import annotations

from toolbox.sparsity.training import SparsityTraining

MODES = ("target", "subgradient", "proximal")


class SST(SparsityTraining):
    """Selective sparsity training: L1 on the selected BN scales only; state lives on the object."""

    name = "sst"
    search_space = {"ratio": [0.3, 0.5, 0.7]}  #: what `toolbox compare --trials` tunes
    label = "SST"
    prefix = "sst"
    strength = "s"
    default_strength = 1e-4
    strength_help = "L1 strength on the selected BN scales (subgradient/proximal modes; target mode adapts it)"
    mode_help = "how the selected gammas are driven to 0"
    selective = True
    modes = MODES

