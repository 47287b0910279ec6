"""torch.hub entry points: one per released checkpoint in pretrained/manifest.json.

    model = torch.hub.load('<owner>/<repo>', 'adaptive_ce_1')                     # from GitHub
    model = torch.hub.load('.', 'adaptive_ce_1', source='local')                  # from a clone
    model = torch.hub.load('.', 'adaptive_ce_1_quick_v1', source='local')         # one release by its preset
    print(torch.hub.help('<owner>/<repo>', 'adaptive_ce_1'))                      # what it is, and its numbers

`<entry>_<preset>` (dashes and dots as underscores) loads that release's file; `<entry>` loads the
longest-trained release of the entry (the medium preset's where there is one). Each returns the WRN-28-2 of that
table entry (the EMA weights, as evaluated) in eval mode, its file checked against the manifest's sha256. The
model takes pixels in [0, 255] (uint8 or float, N x 1 x 28 x 28 for Fashion-MNIST) and normalizes them itself;
`model.classes` names its outputs, `model.mean` and `model.std` are the normalization it applies (per channel,
on the 0-255 scale).
"""
import hashlib
import importlib.util
import json
import os

import torch

dependencies = ['torch']

_HERE = os.path.dirname(os.path.abspath(__file__))
_PRETRAINED = os.path.join(_HERE, 'pretrained')
with open(os.path.join(_PRETRAINED, 'manifest.json')) as _f:
    _MANIFEST = json.load(_f)


def _models():
    """adaptive/models.py under a private name (no 'models' module enters sys.path)."""
    spec = importlib.util.spec_from_file_location('_adthmix_models', os.path.join(_HERE, 'adaptive', 'models.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    return model.eval()


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
