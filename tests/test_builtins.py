"""Built-in models and datasets: real tiny models on real tiny data, on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lrbs.contract.builtins import Digits, Iris, SyntheticImages, SyntheticTokens
from lrbs.worker import builtin_data, networks


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_lm(vocab_size: int = 16, context: int = 8, **kwargs) -> networks.TransformerLM:
    args = {"layers": 2, "d_model": 32, "heads": 4, "mlp_ratio": 2, "dropout": 0.0} | kwargs
    return networks.transformer_lm(vocab_size, context, **args)


# ResNet


@pytest.mark.parametrize(("shape", "stages"), [((2, 3, 16, 16), 3), ((2, 1, 8, 8), 4), ((2, 1, 8, 8), 1)])
def test_resnet_maps_images_to_logits(shape, stages):
    net = networks.resnet(shape[1], 5, depth=1, width=4, stages=stages)
    assert net(torch.randn(shape)).shape == (2, 5)


def test_resnet_depth_and_width_grow_the_model():
    base = n_params(networks.resnet(3, 10, depth=1, width=8, stages=3))
    assert n_params(networks.resnet(3, 10, depth=3, width=8, stages=3)) > base
    assert n_params(networks.resnet(3, 10, depth=1, width=16, stages=3)) > 3 * base  # convs grow as width²
    assert n_params(networks.resnet(3, 10, depth=1, width=8, stages=4)) > base


def test_resnet_learns_synthetic_images():
    torch.manual_seed(0)
    spec = SyntheticImages(
        name="synthetic_images", params={"n_samples": 64, "channels": 3, "height": 8, "width": 8, "n_classes": 4}
    )
    data = builtin_data.builtin(spec)
    net = networks.resnet(3, 4, depth=1, width=8, stages=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(net(data.x), data.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# Transformer LM


@pytest.mark.slow
def test_transformer_lm_gives_logits_per_position():
    lm = tiny_lm(vocab_size=16, context=8)
    assert lm(torch.randint(16, (3, 8))).shape == (3, 8, 16)
    assert lm(torch.randint(16, (3, 5))).shape == (3, 5, 16)  # shorter than context is fine


@pytest.mark.slow
def test_transformer_lm_is_causal():
    lm = tiny_lm().eval()
    tokens = torch.randint(16, (2, 8))
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 16
    before, after = lm(tokens), lm(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.slow
def test_transformer_lm_ties_head_to_embedding():
    lm = tiny_lm()
    assert lm.head.weight is lm.tok_emb.weight
    # Counted once: the embedding is the only (vocab, d_model) matrix among the parameters.
    assert sum(p.shape == (16, 32) for p in lm.parameters()) == 1


@pytest.mark.slow
def test_transformer_lm_rejects_sequences_longer_than_context():
    with pytest.raises(ValueError, match="exceeds the model's context 8"):
        tiny_lm(context=8)(torch.randint(16, (1, 9)))


@pytest.mark.slow
def test_transformer_lm_learns_synthetic_tokens():
    torch.manual_seed(0)
    vocab = 32
    data = builtin_data.builtin(
        SyntheticTokens(name="synthetic_tokens", params={"n_samples": 256, "context": 16, "vocab_size": vocab})
    )
    lm = tiny_lm(vocab_size=vocab, context=16)
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    for _ in range(60):
        loss = F.cross_entropy(lm(data.x).flatten(0, 1), data.y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        val_loss = F.cross_entropy(lm(data.x_val).flatten(0, 1), data.y_val.flatten()).item()
    assert val_loss < 0.6 * math.log(vocab)


# Synthetic tokens


def test_synthetic_tokens_match_their_shape_and_shift_by_one():
    spec = SyntheticTokens(
        name="synthetic_tokens", params={"n_samples": 50, "context": 12, "vocab_size": 20}, validation_fraction=0.2
    )
    data, shape = builtin_data.builtin(spec), spec.shape()
    assert shape.input_shape == (12,) and shape.num_outputs == 20
    for x, y, n in [(data.x, data.y, 40), (data.x_val, data.y_val, 10)]:
        assert x.shape == y.shape == (n, 12)
        assert x.dtype == y.dtype == torch.int64
        assert int(x.min()) >= 0 and int(torch.cat([x, y]).max()) < 20
        assert torch.equal(y[:, :-1], x[:, 1:])


def test_synthetic_tokens_are_seeded_and_predictable():
    def tokens(seed: int) -> torch.Tensor:
        return builtin_data.builtin(SyntheticTokens(name="synthetic_tokens", params={"seed": seed})).x

    assert torch.equal(tokens(1), tokens(1))
    assert not torch.equal(tokens(1), tokens(2))
    # Sparse chain: every token is followed by at most 4 distinct tokens.
    x = tokens(0)
    pairs = torch.unique(torch.stack([x[:, :-1].flatten(), x[:, 1:].flatten()], dim=1), dim=0)
    assert torch.bincount(pairs[:, 0]).max() <= 4


# scikit-learn datasets


@pytest.mark.parametrize(("name", "n", "features", "classes"), [("digits", 1797, 64, 10), ("iris", 150, 4, 3)])
def test_sklearn_datasets(name, n, features, classes):
    pytest.importorskip("sklearn")
    spec = Digits(name="digits") if name == "digits" else Iris(name="iris")
    data = builtin_data.builtin(spec)
    x, y = torch.cat([data.x, data.x_val]), torch.cat([data.y, data.y_val])
    assert x.shape == (n, features) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert spec.shape().input_shape == (features,) and spec.shape().num_outputs == classes
    assert set(y.tolist()) == set(range(classes))
    assert len(data.x_val) == round(n * 0.2) and len(data.x) == n - round(n * 0.2)
    # Standardised per feature; digits' always-blank pixels stay at zero instead of dividing by zero.
    torch.testing.assert_close(x.mean(dim=0), torch.zeros(features), atol=1e-4, rtol=0)
    std = x.std(dim=0)
    assert torch.all(((std - 1).abs() < 1e-3) | (std == 0))
    # The seed shuffles the order (sklearn's files are sorted by class) but not the contents.
    other = builtin_data.builtin(type(spec)(name=name, params={"seed": 1}))
    assert not torch.equal(data.y, other.y)
    assert torch.equal(torch.cat([other.y, other.y_val]).sort().values, y.sort().values)
    assert torch.equal(builtin_data.builtin(spec).x, data.x)
