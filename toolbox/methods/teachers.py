"""Teachers that learn alongside the student: an exponential moving average, or a mutual peer.

Both start as a copy of the frozen previous model. :class:`EMATeacher` follows the student's
weights after every optimizer step; :class:`MutualPeer` is trained on the same batches with its
own optimizer, from the labels and the student's softened outputs (Deep Mutual Learning).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from toolbox.methods.distillation import kd_loss
from toolbox.runtime import distributed
from toolbox.runtime.device import autocast_context
from toolbox.sparsity import channels as ch


@torch.no_grad()
def ema_update(ema: nn.Module, student: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * student`` for float parameters and buffers; others copied."""
    ema_state, student_state = ema.state_dict(), ch.unwrap(student).state_dict()
    for key, value in ema_state.items():
        src = student_state[key].detach()
        if value.dtype.is_floating_point:
            value.mul_(decay).add_(src.to(value), alpha=1.0 - decay)
        else:
            value.copy_(src)


class EMATeacher:
    """An eval-mode copy of ``start`` that moves towards the student after every step."""

    def __init__(self, start: nn.Module, decay: float) -> None:
        self.net = copy.deepcopy(start).eval()
        self.decay = decay

    def update(self, student: nn.Module) -> None:
        """Move towards the student's current weights."""
        ema_update(self.net, student, self.decay)

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights (for ``partial.pt``)."""
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.net.load_state_dict(state["net"])


class MutualPeer:
    """A trainable copy of ``start`` learning the same batches from labels and the student (DML)."""

    def __init__(self, start: nn.Module, T: float) -> None:
        self.net = copy.deepcopy(start).train()
        for p in self.net.parameters():
            p.requires_grad_(True)
        self.T = T
        self.optimizer: torch.optim.Optimizer | None = None

    def make_optimizer(self, template: torch.optim.Optimizer | None, options: Any) -> torch.optim.Optimizer:
        """SGD for the peer with the student optimizer's lr, momentum and weight decay."""
        group = template.param_groups[0] if template is not None else {
            "lr": options.lr, "momentum": options.momentum, "weight_decay": options.weight_decay}
        return torch.optim.SGD(self.net.parameters(), lr=group["lr"], momentum=group.get("momentum", 0.0),
                               weight_decay=group.get("weight_decay", 0.0))

    def step(self, ctx: Any, inputs: torch.Tensor, targets: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        """One training step of the peer on this batch; return its (detached) logits."""
        if self.optimizer is None:
            self.optimizer = self.make_optimizer(ctx.optimizer, ctx.options)
        if ctx.optimizer is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = ctx.optimizer.param_groups[0]["lr"]
        with autocast_context(ctx.device, ctx.options.precision):
            peer = self.net(inputs).float()
        loss = F.cross_entropy(peer, targets) + kd_loss(peer, student.detach(), self.T)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.net)  # multi-process: the peer stays identical on every process
        self.optimizer.step()
        return peer.detach()

    def state_dict(self) -> dict[str, Any]:
        """The peer's weights and optimizer (for ``partial.pt``)."""
        state: dict[str, Any] = {"net": self.net.state_dict()}
        if self.optimizer is not None:
            state["peer_optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], ctx: Any) -> None:
        """Restore :meth:`state_dict`."""
        self.net.load_state_dict(state["net"])
        if "peer_optimizer" in state:
            self.optimizer = self.make_optimizer(ctx.optimizer, ctx.options)
            self.optimizer.load_state_dict(state["peer_optimizer"])
