"""Networks. Shared module: mixmatch/, fixed/ and adaptive/ hold identical copies (tests/test_copies.py).

Every model takes uint8-range pixels (float or uint8, N x C x H x W) and normalizes them itself, so a
checkpoint evaluates without knowing the dataset statistics it was trained with.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError

ARCHS = ('wrn28_2', 'wrn28_8', 'resnet18', 'resnet34', 'resnet50', 'efficientnet_b3', 'efficientnet_b4')
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------------
# WideResNet-28-k as used by MixMatch (pre-activation blocks, LeakyReLU 0.1, no dropout)
# ---------------------------------------------------------------------------------------------------------
class _Block(nn.Module):
    def __init__(self, c_in, c_out, stride, bn_momentum, activate_before_residual=False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x):
        o = F.leaky_relu(self.bn1(x), 0.1)
        residual = o if self.activate_before_residual else x  # MixMatch: the first block shortcuts the activation
        y = self.conv2(F.leaky_relu(self.bn2(self.conv1(o)), 0.1))
        return y + (residual if self.shortcut is None else self.shortcut(residual))


class WideResNet(nn.Module):
    def __init__(self, num_classes, in_channels=3, depth=28, widen=2, bn_momentum=0.01):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for g, stride in enumerate((1, 2, 2)):
            for i in range(n):
                c_in = widths[g] if i == 0 else widths[g + 1]
                blocks.append(_Block(c_in, widths[g + 1], stride if i == 0 else 1, bn_momentum,
                                     activate_before_residual=(g == 0 and i == 0)))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3], momentum=bn_momentum)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='leaky_relu')
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.leaky_relu(self.bn(self.blocks(self.conv(x))), 0.1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------
# torchvision backbones (ImageNet weights only from the local torch cache, unless --download)
# ---------------------------------------------------------------------------------------------------------
def _torchvision_model(arch, num_classes, pretrained, download):
    import torchvision.models as tvm
    build, weights = {
        'resnet18': (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
        'resnet34': (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
        'resnet50': (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
        'efficientnet_b3': (tvm.efficientnet_b3, tvm.EfficientNet_B3_Weights.IMAGENET1K_V1),
        'efficientnet_b4': (tvm.efficientnet_b4, tvm.EfficientNet_B4_Weights.IMAGENET1K_V1),
    }[arch]
    if not pretrained:
        return build(weights=None, num_classes=num_classes)
    cached = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(weights.url))
    if not os.path.exists(cached) and not download:
        raise UserError(f'--init imagenet: ImageNet weights for {arch} are not in the torch cache ({cached}); '
                        f'copy them there or pass --download')
    net = build(weights=weights)
    head_parent, head_name = (net, 'fc') if arch.startswith('resnet') else (net.classifier, '1')
    head = getattr(head_parent, head_name)
    setattr(head_parent, head_name, nn.Linear(head.in_features, num_classes))
    return net


def head_prefix(arch):
    """The state_dict prefix of a model's classifier head (the layer whose size is the class count)."""
    return 'backbone.classifier.1.' if arch.startswith('efficientnet') else 'backbone.fc.'


def without_heads(state):
    """A state_dict without the pretext heads' weights (evaluation and --init do not use them)."""
    return {k: v for k, v in state.items() if not k.startswith('heads.')}


class Classifier(nn.Module):
    """Normalization + backbone. Input: pixels in [0, 255]; grey images are repeated to 3 channels for
    torchvision backbones (they expect RGB). Pretext heads (heads={name: module}: RotNet's rotation classifier,
    SimCLR's projection) read the features the classifier head reads: forward(x, heads=(name, ...)) returns
    (class logits, [each named head's output]) from one pass of the backbone."""

    def __init__(self, backbone, mean, std, repeat_to_rgb, head_path, heads=None):
        super().__init__()
        self.backbone = backbone
        self.repeat_to_rgb = repeat_to_rgb
        self.head_path = head_path  # the classifier head's path in the backbone, whose input the pretext heads read
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.heads = nn.ModuleDict(heads or {})  # empty: no state_dict keys, so every released file still loads

    def forward(self, x, heads=()):
        x = (x.float() - self.mean) / self.std
        if self.repeat_to_rgb:
            x = x.expand(-1, 3, -1, -1)
        if not heads:
            return self.backbone(x)
        features = []
        hook = self.backbone.get_submodule(self.head_path).register_forward_pre_hook(
            lambda module, inputs: features.append(inputs[0]))
        try:
            logits = self.backbone(x)
        finally:
            hook.remove()
        return logits, [self.heads[name](features[0]) for name in heads]

    def feature_dim(self):
        return self.backbone.get_submodule(self.head_path).in_features


def build_model(arch, num_classes, in_channels, mean, std, bn_momentum, pretrained=False, download=False, heads=None):
    """mean/std: per-channel pixel statistics in [0, 1] of the training images (ImageNet's when pretrained).
    heads: {name: make(feature_dim) -> module}, the pretext heads to add."""
    if arch not in ARCHS:
        raise UserError(f'--arch {arch!r} is not one of {", ".join(ARCHS)}')
    if arch.startswith('wrn'):
        if pretrained:
            raise UserError(f'--init imagenet: there are no ImageNet weights for {arch}; use a torchvision --arch')
        net = WideResNet(num_classes, in_channels, 28, int(arch.split('_')[1]), bn_momentum)
        model = Classifier(net, mean, std, False, head_prefix(arch)[len('backbone.'):-1])
    else:
        net = _torchvision_model(arch, num_classes, pretrained, download)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
        if pretrained:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            if in_channels == 1:  # grey input is normalized once, then repeated to RGB
                mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        model = Classifier(net, mean, std, in_channels == 1, head_prefix(arch)[len('backbone.'):-1])
    for name, make in (heads or {}).items():
        model.heads[name] = make(model.feature_dim())
    return model
