"""The anchor LR finders (pytorch-lr-finder, Lightning) run from their own packages on a tiny MLP.

They are an optional extra: each test skips without its package, and the module imports without either.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
from torch import nn

from benchmarks.lr_quality import anchors
from benchmarks.lr_quality.anchors import AnchorSuggestion, lightning_suggestion, torch_lr_finder_suggestion

CE = nn.functional.cross_entropy


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and far faster than on two on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batches(n_batches: int = 4, batch_size: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Gaussian blobs, 3 classes, 8 features."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=g) * 2
    batches = []
    for _ in range(n_batches):
        y = torch.randint(0, 3, (batch_size,), generator=g)
        batches.append((centers[y] + torch.randn(batch_size, 8, generator=g), y))
    return batches


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def sgd(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def assert_trains(model: nn.Module, optimizer: torch.optim.Optimizer, batches) -> None:
    """One ordinary step still works and moves the weights."""
    before = snapshot(model)
    x, y = batches[0]
    optimizer.zero_grad()
    loss = CE(model(x), y)
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in before.items())


def assert_lr_in_range(result: AnchorSuggestion, min_lr: float, max_lr: float) -> None:
    assert isinstance(result, AnchorSuggestion)
    assert result.lr is not None, result.note
    assert math.isfinite(result.lr) and result.lr > 0
    assert min_lr <= result.lr <= max_lr
    assert result.wall_time_s > 0


def test_torch_lr_finder_suggests_an_lr_in_range_and_restores_the_model():
    pytest.importorskip("torch_lr_finder")
    batches = make_batches()
    model = make_model()
    optimizer = sgd(model.parameters(), 0.05)
    before = snapshot(model)

    result = torch_lr_finder_suggestion(model, CE, optimizer, batches, min_lr=1e-7, max_lr=10.0, num_steps=100)

    assert_lr_in_range(result, 1e-7, 10.0)
    assert "steps" in result.note
    assert_same_weights(model, before)  # reset() loads back the state it saved
    assert optimizer.param_groups[0]["lr"] == 0.05
    assert "initial_lr" not in optimizer.param_groups[0]
    assert not optimizer.state  # no momentum buffers left from the sweep
    assert_trains(model, optimizer, batches)


def test_torch_lr_finder_too_few_points_gives_none_with_the_reason():
    pytest.importorskip("torch_lr_finder")
    model = make_model()
    optimizer = sgd(model.parameters(), 0.05)

    result = torch_lr_finder_suggestion(model, CE, optimizer, make_batches(), num_steps=10)

    assert result.lr is None
    assert "Need at least 17 iterations" in result.note  # skip_start 10 + skip_end 5 + 2
    assert result.wall_time_s > 0


def test_lightning_suggests_an_lr_in_range_and_leaves_no_files(tmp_path, monkeypatch):
    pytest.importorskip("pytorch_lightning")
    monkeypatch.chdir(tmp_path)
    batches = make_batches()
    model = make_model()
    before = snapshot(model)

    result = lightning_suggestion(model, CE, sgd, batches, min_lr=1e-8, max_lr=1.0, num_steps=100)

    assert_lr_in_range(result, 1e-8, 1.0)
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no lightning_logs
    assert_same_weights(model, before)  # restored from Lightning's own checkpoint
    assert_trains(model, sgd(model.parameters(), 0.05), batches)


def test_lightning_too_few_points_gives_none_with_the_reason(tmp_path, monkeypatch):
    pytest.importorskip("pytorch_lightning")
    monkeypatch.chdir(tmp_path)

    result = lightning_suggestion(make_model(), CE, sgd, make_batches(), num_steps=8)

    assert result.lr is None
    assert "no suggestion" in result.note
    assert list(tmp_path.iterdir()) == []


def test_both_draw_the_batches_as_the_range_test_does():
    """Cycled by re-iterating (a fresh pass each time); a one-shot iterator that runs dry is refused."""
    batches = make_batches(n_batches=3)
    drawn = anchors._take(batches, 7)
    assert [id(x) for x, _ in drawn] == [id(batches[i % 3][0]) for i in range(7)]
    with pytest.raises(ValueError, match="re-iterable"):
        anchors._take(iter(batches), 4)
    with pytest.raises(ValueError, match="min_lr"):
        torch_lr_finder_suggestion(make_model(), CE, sgd(make_model().parameters(), 0.1), batches, min_lr=0.0)


def test_the_module_imports_without_the_anchor_packages(monkeypatch):
    for name in ("torch_lr_finder", "pytorch_lightning", "lightning", "matplotlib"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of them now raises ImportError
    spec = importlib.util.spec_from_file_location("_anchors_without_extras", anchors.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert module.AnchorSuggestion(lr=None, wall_time_s=0.0, note="x").lr is None
