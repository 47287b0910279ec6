"""Every --arch builds for grey and colour inputs of any size and normalizes pixels itself."""
import pytest
import torch

import models


@pytest.mark.slow
@pytest.mark.parametrize('arch', models.ARCHS)
def test_every_arch_gives_logits_for_grey_and_colour_images(arch):
    torch.manual_seed(0)
    for channels, size in ((1, 28), (3, 32)):
        net = models.build_model(arch, 7, channels, (0.5,) * channels, (0.25,) * channels, bn_momentum=0.01).eval()
        with torch.no_grad():
            out = net(torch.randint(0, 256, (2, channels, size, size), dtype=torch.uint8))
        assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_bn_momentum_reaches_every_batchnorm():
    for arch in ('wrn28_2', 'resnet18'):
        net = models.build_model(arch, 3, 3, (0.5,) * 3, (0.25,) * 3, bn_momentum=0.03)
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and {m.momentum for m in bns} == {0.03}


def test_wrn28_2_has_mixmatch_size():
    net = models.build_model('wrn28_2', 10, 3, (0.5,) * 3, (0.25,) * 3, 0.01)
    assert 1.45e6 < sum(p.numel() for p in net.parameters()) < 1.5e6   # MixMatch's WRN-28-2: 1.47M


def test_normalization_uses_the_given_statistics():
    net = models.build_model('wrn28_2', 2, 1, (0.2,), (0.1,), 0.01)
    assert net.mean.item() == pytest.approx(0.2 * 255) and net.std.item() == pytest.approx(0.1 * 255)
