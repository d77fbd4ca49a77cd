"""Example third-party plugins for ``toolbox`` (registered through the ``toolbox.plugins`` entry point).

* ``replay`` (:class:`toolbox_replay.replay.Replay`): a data schedule with a small replay buffer;
* ``l2bn`` (:class:`toolbox_replay.regularize.L2BN`): an L2 penalty on the BN scales.
"""

__version__ = "0.1.0"
