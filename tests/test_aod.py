"""AOD: exact re-initialization, strategies, distillation loss, adaptive weights, teachers."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolbox.context import Context
from toolbox.errors import UsageError
from toolbox.methods.distillation import adaptive_weight, kd_loss
from toolbox.methods.reinit import draw_filters
from toolbox.methods.teachers import ema_update
from toolbox.options import RunOptions
from toolbox.plugin_host.manager import load_plugins
from toolbox.sparsity import channels as ch
from toolbox_plugins.aod import AOD


class Net(nn.Module):
    """Stem conv-BN-ReLU, a residual block with a projection shortcut, a depthwise stage, classifier."""

    default_cfg = {"input_size": (3, 8, 8)}

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b_conv1, self.b_bn1 = nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b_conv2, self.b_bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.shortcut = nn.Sequential(nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.dw, self.bn_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.b_bn1(self.b_conv1(x)))
        y = torch.relu(self.b_bn2(self.b_conv2(y)) + self.shortcut(x))
        y = torch.relu(self.bn_dw(self.dw(y)))
        return self.fc(y.mean((2, 3)))


def make(step: int = 2, phase: str = "learn", **extra: Any) -> tuple[AOD, Context]:
    plugin = AOD()
    values = {o.name: o.default for o in plugin.toolbox_options()} | extra
    options = RunOptions(plugins=["sst", "aod"], plugin=values, lr=0.1)
    plugin.toolbox_configure(options=options)
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():  # trained-looking BN state
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    ctx = Context(options=options, model=model, device=torch.device("cpu"), step=step, num_steps=3,
                  phase=phase, epochs=1, teacher=teacher)
    return plugin, ctx


MASKS = {  # residual+depthwise group: units 1, 5 (b_bn2, shortcut.1, bn_dw together); block-internal: 0, 3
    "b_bn2": torch.tensor([0, 1, 0, 0, 0, 1, 0, 0], dtype=torch.bool),
    "shortcut.1": torch.tensor([0, 1, 0, 0, 0, 1, 0, 0], dtype=torch.bool),
    "bn_dw": torch.tensor([0, 1, 0, 0, 0, 1, 0, 0], dtype=torch.bool),
    "b_bn1": torch.tensor([1, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool),
}
# where each masked filter lives: (module, tensor, dim) -> channels
RES, INNER = [1, 5], [0, 3]
EXPECTED = {("b_conv2.weight", 0): RES, ("shortcut.0.weight", 0): RES, ("dw.weight", 0): RES,
            ("b_conv1.weight", 0): INNER}
BN_EXPECTED = {"b_bn2": RES, "shortcut.1": RES, "bn_dw": RES, "b_bn1": INNER}


def changed_channels(before: torch.Tensor, after: torch.Tensor, dim: int) -> list[int]:
    diff = (before != after).movedim(dim, 0).reshape(before.shape[dim], -1).any(1)
    return diff.nonzero().flatten().tolist()


@pytest.mark.parametrize("strategy", ["kaiming", "orthogonal", "diverse"])
def test_reinit_changes_exactly_the_masked_filters(strategy: str) -> None:
    plugin, ctx = make(reinit=strategy)
    ctx.masks = {k: v.clone() for k, v in MASKS.items()}
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    plugin.toolbox_phase_start(ctx=ctx)
    assert plugin.toolbox_model_surgery(ctx=ctx, model=ctx.model) is None
    after = ctx.model.state_dict()
    touched = {f"{bn}.{t}" for bn in BN_EXPECTED for t in ("weight", "bias", "running_mean", "running_var")}
    touched |= {name for name, _ in EXPECTED}
    for key, value in after.items():
        if key not in touched:
            assert torch.equal(before[key], value), key  # bit-identical
    for (key, dim), chans in EXPECTED.items():
        assert changed_channels(before[key], after[key], dim) == chans, key
    for bn, chans in BN_EXPECTED.items():
        rest = [i for i in range(8) if i not in chans]
        assert torch.all(after[f"{bn}.weight"][chans] == 0.01) and torch.all(after[f"{bn}.bias"][chans] == 0.0)
        assert torch.all(after[f"{bn}.running_mean"][chans] == 0) and torch.all(after[f"{bn}.running_var"][chans] == 1)
        for t in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(after[f"{bn}.{t}"][rest], before[f"{bn}.{t}"][rest])
    assert ctx.records["aod"]["step2"]["reinitialized_filters"] == 4


def test_reinit_none_keeps_every_weight() -> None:
    plugin, ctx = make(reinit="none")
    ctx.masks = {k: v.clone() for k, v in MASKS.items()}
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    plugin.toolbox_phase_start(ctx=ctx)
    plugin.toolbox_model_surgery(ctx=ctx, model=ctx.model)
    for key, value in ctx.model.state_dict().items():
        assert torch.equal(before[key], value), key
    assert ctx.records["aod"]["step2"]["reinitialized_filters"] == 0


def test_reinit_gamma_and_next_layer_options() -> None:
    plugin, ctx = make(reinit_gamma=1.0, reinit_next="zero")
    ctx.masks = {k: v.clone() for k, v in MASKS.items()}
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    plugin.toolbox_phase_start(ctx=ctx)
    plugin.toolbox_model_surgery(ctx=ctx, model=ctx.model)
    after = ctx.model.state_dict()
    assert torch.all(after["b_bn2.weight"][RES] == 1.0) and torch.all(after["b_bn1.weight"][INNER] == 1.0)
    assert torch.all(after["b_conv2.weight"][:, INNER] == 0)  # consumer of the block-internal filters
    keep_rows = [i for i in range(8) if i not in RES]  # b_conv2's rows RES are redrawn (residual group)
    assert changed_channels(before["b_conv2.weight"][keep_rows], after["b_conv2.weight"][keep_rows], 1) == INNER
    assert torch.all(after["fc.weight"][:, RES] == 0)  # fc consumes the residual/depthwise group
    assert changed_channels(before["fc.weight"], after["fc.weight"], 1) == RES
    assert torch.equal(before["conv1.weight"], after["conv1.weight"])


def test_orthogonal_and_diverse_filters() -> None:
    torch.manual_seed(0)
    kept = torch.randn(5, 27)
    std = math.sqrt(2 / 27)
    for strategy in ("orthogonal", "diverse"):
        new = draw_filters(kept, 4, strategy, std).double()
        assert (new @ kept.double().T).abs().max() < 1e-5
        if strategy == "orthogonal":
            assert torch.allclose(new.norm(dim=1), torch.full((4,), std * math.sqrt(27), dtype=torch.float64), rtol=1e-5)
        else:
            gram = new @ new.T
            assert (gram - torch.diag(torch.diag(gram))).abs().max() < 1e-5
    full = torch.randn(30, 27)  # the kept filters span everything: Kaiming fallback, right scale
    new = draw_filters(full, 200, "orthogonal", std)
    assert new.shape == (200, 27) and abs(new.std().item() - std) < 0.02


def test_orthogonal_reinit_in_a_layer() -> None:
    plugin, ctx = make(reinit="orthogonal")
    ctx.masks = {k: v.clone() for k, v in MASKS.items()}
    plugin.toolbox_phase_start(ctx=ctx)
    plugin.toolbox_model_surgery(ctx=ctx, model=ctx.model)
    w = ctx.model.b_conv1.weight.detach().reshape(8, -1)
    new, kept = w[INNER], w[[i for i in range(8) if i not in INNER]]
    assert (new @ kept.T).abs().max() < 1e-4


def test_without_masks_aod_selects_by_gamma() -> None:
    plugin, ctx = make(ratio=0.25)
    plugin.toolbox_phase_start(ctx=ctx)
    plugin.toolbox_model_surgery(ctx=ctx, model=ctx.model)
    graph = ch.channel_groups(ctx.model)
    selection = ch.masks_to_selection(graph, ctx.masks)
    assert sum(int(s.sum()) for s in selection) == round(0.25 * graph.num_units)
    for name, mask in ctx.masks.items():
        assert torch.all(ch.module(ctx.model, name).weight.detach()[mask] == 0.01)


def test_kd_loss_matches_hand_computed_kl() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])

    def hand(T: float, w: list[float]) -> float:
        total = 0.0
        for row in range(2):
            ps = [math.exp(v / T) for v in s[row].tolist()]
            pt = [math.exp(v / T) for v in t[row].tolist()]
            ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
            total += w[row] * sum(b * math.log(b / a) for a, b in zip(ps, pt))
        return T * T * total / 2

    for T in (1.0, 4.0):
        assert kd_loss(s, t, T).item() == pytest.approx(hand(T, [1, 1]), rel=1e-5)
        assert kd_loss(s, t, T, torch.tensor([0.2, 1.0])).item() == pytest.approx(hand(T, [0.2, 1]), rel=1e-5)
    assert kd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_adaptive_weight_rules() -> None:
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    targets = torch.tensor([0, 1, 0, 1])
    p = F.softmax(teacher, dim=1)
    expected = torch.tensor([p[0, 0], p[1, 1], p[2, 0], p[3, 1]])
    assert torch.allclose(adaptive_weight(teacher, targets, "confidence"), expected)
    assert torch.allclose(adaptive_weight(teacher, targets, "accuracy"), torch.full((4,), 0.25))  # argmax ties -> 0
    assert torch.equal(adaptive_weight(teacher, targets, "constant"), torch.ones(4))


def test_loss_only_in_learn_phases_after_step_one() -> None:
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    for step, phase, present in ((1, "learn", False), (2, "sparsify", False), (2, "learn", True)):
        plugin, ctx = make(step=step, phase=phase, alpha=0.5)
        plugin.toolbox_phase_start(ctx=ctx)
        logits = ctx.model(x)
        terms = plugin.toolbox_loss(ctx=ctx, batch=(x, y), logits=logits)
        assert (terms is not None) == present
        if present:
            teacher = ctx.teacher(x)
            w = F.softmax(teacher, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
            assert terms["aod_kd"].item() == pytest.approx(0.5 * kd_loss(logits, teacher, 4.0, w).item(), rel=1e-5)
            metrics: dict[str, float] = {}
            plugin.toolbox_epoch_end(ctx=ctx, metrics=metrics)
            assert metrics["aod_weight"] == pytest.approx(w.mean().item(), rel=1e-5)


def test_ema_teacher_update_rule() -> None:
    ema, student = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        ema.weight.fill_(1.0), student.weight.fill_(3.0)
        ema.running_mean.fill_(0.0), student.running_mean.fill_(1.0)
    student.num_batches_tracked.fill_(7)
    ema_update(ema, student, 0.9)
    assert torch.allclose(ema.weight, torch.full((3,), 1.2))
    assert torch.allclose(ema.running_mean, torch.full((3,), 0.1))
    assert ema.num_batches_tracked.item() == 7

    plugin, ctx = make(teacher="ema", ema_decay=0.5)
    plugin.toolbox_phase_start(ctx=ctx)
    with torch.no_grad():
        ctx.model.fc.weight.add_(1.0)
    plugin.toolbox_batch_end(ctx=ctx, model=ctx.model)
    assert torch.allclose(plugin.net.fc.weight, ctx.teacher.fc.weight + 0.5)


def test_mutual_peer_trains_alongside() -> None:
    plugin, ctx = make(teacher="mutual")
    plugin.toolbox_phase_start(ctx=ctx)
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    before = copy.deepcopy(plugin.net.state_dict())
    terms = plugin.toolbox_loss(ctx=ctx, batch=(x, y), logits=ctx.model(x))
    assert terms["aod_kd"].requires_grad
    assert not torch.equal(before["fc.weight"], plugin.net.state_dict()["fc.weight"])
    assert all(not p.requires_grad for p in ctx.teacher.parameters())  # ctx.teacher untouched


def test_option_validation() -> None:
    with pytest.raises(UsageError, match="double-counts"):
        load_plugins(["aod", "lwf"])  # the combination is refused when the plugins load
    for bad in ({"T": 0.0}, {"ratio": 1.0}, {"reinit": "xavier"}, {"ema_decay": 1.0}):
        with pytest.raises(UsageError):
            AOD().toolbox_configure(options=RunOptions(plugins=["aod"], plugin=bad))


@pytest.mark.parametrize("gamma, alive", [(0.0, False), (0.01, True)])
def test_reinit_gamma_zero_leaves_filters_without_gradient(gamma: float, alive: bool) -> None:
    plugin, ctx = make(reinit_gamma=gamma)
    ctx.masks = {k: v.clone() for k, v in MASKS.items()}
    plugin.toolbox_phase_start(ctx=ctx)
    plugin.toolbox_model_surgery(ctx=ctx, model=ctx.model)
    ctx.model.train()
    F.cross_entropy(ctx.model(torch.randn(8, 3, 8, 8)), torch.arange(8) % 4).backward()
    for bn, chans in BN_EXPECTED.items():
        grad = ch.module(ctx.model, bn).weight.grad[chans]
        assert bool((grad != 0).any()) == alive, bn
    assert AOD().toolbox_options()[2].default == 0.01


def test_without_sst_selection_is_redone_each_step() -> None:
    plugin, ctx = make(ratio=0.25)
    plugin.toolbox_phase_start(ctx=ctx)
    plugin.toolbox_model_surgery(ctx=ctx, model=ctx.model)
    first = {k: v.clone() for k, v in ctx.masks.items()}
    with torch.no_grad():  # the re-initialized filters grew, others shrank: a new ranking
        for name, mask in first.items():
            w = ch.module(ctx.model, name).weight
            w[mask] = 5.0
            w[~mask] *= 0.1
    ctx.step = 3
    plugin.toolbox_phase_start(ctx=ctx)
    plugin.toolbox_model_surgery(ctx=ctx, model=ctx.model)
    assert all(not (first[k] & ctx.masks[k]).any() for k in first)
