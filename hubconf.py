"""torch.hub entry points: one per released checkpoint in pretrained/manifest.json. From a clone of this repository
(its root as the first argument; torch.hub.load with the repository's GitHub owner/name and no source='local'
fetches the same file from GitHub):

    model = torch.hub.load('.', 'adaptive_ce_1', source='local')                  # the longest-trained release
    model = torch.hub.load('.', 'adaptive_ce_1_quick_v1', source='local')         # one release by its preset
    print(hubconf.adaptive_ce_1.__doc__)   # (after `import hubconf`) what it is, and its numbers
    logits = model(images)   # images: N x 1 x 28 x 28 (or N x 28 x 28), uint8 or float pixels in [0, 255]

`<entry>_<preset>` (dashes and dots as underscores) loads that release's file; `<entry>` loads the
longest-trained release of the entry (the medium-v2 preset's where there is one). Each returns the WRN-28-2 of that
table entry (the EMA weights, as evaluated) in eval mode, its file checked against the manifest's sha256. The
model takes Fashion-MNIST's pixels as they are: N x 1 x 28 x 28 (N x 28 x 28 is taken as N grey images), uint8 or
float in [0, 255], and normalizes them itself; another shape is refused with the one it expects. `model.classes`
names its outputs, `model.mean` and `model.std` are the normalization it applies (per channel, on the 0-255 scale).
"""
import hashlib
import importlib.util
import json
import os
import sys
import warnings

import torch

dependencies = ['torch']

_HERE = os.path.dirname(os.path.abspath(__file__))
_PRETRAINED = os.path.join(_HERE, 'pretrained')
with open(os.path.join(_PRETRAINED, 'manifest.json')) as _f:
    _MANIFEST = json.load(_f)


def _module(name):
    """adaptive/<name>.py under a private name."""
    spec = importlib.util.spec_from_file_location(f'_adthmix_{name}', os.path.join(_HERE, 'adaptive', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _models():
    """adaptive/models.py under a private name, with the errors module it imports: nothing enters sys.path, and no
    module stays in sys.modules under a common name."""
    before = sys.modules.get('errors')
    sys.modules['errors'] = _module('errors')
    try:
        return _module('models')
    finally:
        if before is None:
            del sys.modules['errors']
        else:
            sys.modules['errors'] = before


def _load(row, pretrained=True):
    path = os.path.join(_PRETRAINED, row['file'])
    with open(path, 'rb') as f:
        digest = hashlib.file_digest(f, 'sha256').hexdigest()
    if digest != row['sha256']:
        raise RuntimeError(f'{path}: sha256 {digest[:16]}... is not the manifest\'s {row["sha256"][:16]}...; '
                           'the file is damaged or not the released one')
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    state = ckpt['ema']
    channels = state['mean'].shape[1]
    model = _models().build_model(ckpt['arch'], ckpt['num_classes'], channels, (0.5,) * channels,
                                  (0.5,) * channels, ckpt['args']['bn_momentum'])
    if pretrained:
        model.load_state_dict(state)
    else:  # the same network and input normalization, freshly initialized
        model.mean.copy_(state['mean'])
        model.std.copy_(state['std'])
    model.classes = list(ckpt['classes'])
    side = _INPUT_SIDE.get(ckpt['args']['dataset']) or ckpt['args'].get('image_size')
    model.register_forward_pre_hook(_InputCheck(channels, side))
    return model.eval()


_INPUT_SIDE = {'fashion_mnist': 28, 'cifar10': 32, 'cifar100': 32, 'svhn': 32, 'stl10': 96}  # pixels a side


class _InputCheck:
    """A forward pre-hook: N x H x W is N grey images (where the model is grey); any other shape than the training
    images' N x C x H x W is refused with the shape expected, and float pixels all in [0, 1] are warned about."""

    def __init__(self, channels, side):
        self.channels, self.side = channels, side
        self.expected = f'N x {channels} x {side} x {side}' + (f' (or N x {side} x {side})' if channels == 1 else '')

    def __call__(self, module, inputs):
        x = inputs[0]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'the model takes a tensor of pixels in [0, 255], {self.expected}; got {type(x).__name__}')
        if x.dim() == 3 and self.channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != self.channels or (self.side and tuple(x.shape[2:]) != (self.side,) * 2):
            raise ValueError(f'the model takes images {self.expected}, uint8 or float pixels in [0, 255]; '
                             f'got shape {tuple(inputs[0].shape)}')
        if x.is_floating_point() and x.numel() and float(x.max()) <= 1:
            warnings.warn('the pixels are all in [0, 1] (ToTensor\'s scale?); the model takes [0, 255]: multiply by 255',
                          stacklevel=2)
        return (x,) + tuple(inputs[1:])


def _name(text):
    return text.replace('-', '_').replace('.', '_')


def _entry_point(row, name, longest=False):
    def load(pretrained=True):
        return _load(row, pretrained)
    load.__name__ = name
    load.__doc__ = (f"{row['entry']} ({row['tables']}; the study's session {row['session']}), preset "
                    f"{row['preset']} ({row['steps']} steps), seed {row['seed']}: test top-1 {row['test_top1']:.2f}, "
                    f"top-5 {row['test_top5']:.2f} on Fashion-MNIST's 10,000 test images.\n\n"
                    + (f"    The longest-trained release of {row['entry']}; "
                       f"{_name(row['entry'])}_<preset> loads another.\n" if longest else '')
                    + f"    Trained by: {row['command']}\n"
                    f"    File: pretrained/{row['file']} (sha256 {row['sha256'][:16]}...)\n\n"
                    "    pretrained=False: the same network and input normalization, freshly initialized.\n"
                    "    Returns the model in eval mode; model.classes names its outputs.")
    return load


for _row in _MANIFEST['checkpoints']:
    _fn = _entry_point(_row, f"{_name(_row['entry'])}_{_name(_row['preset'])}")
    globals()[_fn.__name__] = _fn
for _entry in dict.fromkeys(_r['entry'] for _r in _MANIFEST['checkpoints']):
    _row = max((_r for _r in _MANIFEST['checkpoints'] if _r['entry'] == _entry), key=lambda _r: _r['steps'])
    _fn = _entry_point(_row, _name(_entry), longest=True)
    globals()[_fn.__name__] = _fn
