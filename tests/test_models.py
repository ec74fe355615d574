"""Model registry: every model builds narrow, takes RGB 32x32 and gray 28x28 inputs, normalises inside."""

import pytest
import torch
from torch import nn

from poisonlab import PoisonlabError
from poisonlab.registry import MODELS
from poisonlab.models import CIFAR_MEAN, CIFAR_STD, Normalize, create_model


def test_registry_has_the_standard_victims():
    assert {"smallcnn", "resnet18", "resnet50", "vgg16", "densenet121", "wrn34_10"} <= set(MODELS.names())


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_every_model_gives_logits_per_class(name, channels, size):
    torch.manual_seed(0)
    net = create_model(name, num_classes=7, in_channels=channels, width=0.25)
    x = torch.rand(3, channels, size, size)
    out = net(x)  # train mode: BN over the batch
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    net.eval()
    assert net(x[:1]).shape == (1, 7)  # a single image works in eval mode


def test_normalisation_is_inside_the_model():
    net = create_model("smallcnn", 10, 3, width=0.25).eval()
    norm = net[0]
    assert isinstance(norm, Normalize)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(norm(x), (x - mean) / std)
    assert torch.allclose(norm(mean.expand(1, 3, 32, 32)), torch.zeros(1, 3, 32, 32), atol=1e-6)
    # The whole model is "normalise, then the bare network", so inputs stay in [0, 1] pixel space.
    with torch.no_grad():
        assert torch.allclose(net(x), net[1]((x - mean) / std), atol=1e-5)
    gray = create_model("smallcnn", 2, 1, width=0.25)[0]
    assert gray.mean.shape == (1, 1, 1, 1) and gray.std.flatten().tolist() == [0.25]
    custom = create_model("smallcnn", 2, 3, width=0.25, mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 4.0))[0]
    assert custom.std.flatten().tolist() == [1.0, 2.0, 4.0]
    assert {"0.mean", "0.std"} <= set(net.state_dict())  # saved with checkpoints


def test_width_scales_the_model():
    counts = [sum(p.numel() for p in create_model("resnet18", width=w).parameters()) for w in (0.25, 0.5, 1.0)]
    assert counts[0] < counts[1] < counts[2]
    assert counts[2] > 11_000_000  # the real ResNet-18 at width 1 (11.2M parameters)


def test_bad_names_and_widths():
    with pytest.raises(PoisonlabError, match="unknown model 'resnet9'.*smallcnn"):
        create_model("resnet9")
    with pytest.raises(PoisonlabError, match="width"):
        create_model("smallcnn", width=0)


def test_register_model_adds_to_the_registry():
    @MODELS.register
    def tiny_linear(num_classes=10, in_channels=3, width=1.0):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        assert "tiny_linear" in MODELS.names()
        assert create_model("tiny_linear", 5, 1)(torch.rand(2, 1, 8, 8)).shape == (2, 5)
    finally:
        MODELS.unregister("tiny_linear")  # leave the real registry as it was
    assert "tiny_linear" not in MODELS.names()
