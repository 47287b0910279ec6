"""hubconf.py: the released checkpoints through torch.hub, offline (source='local')."""
import json
import os
import shutil

import pytest
import torch

import data
from conftest import REPO

MANIFEST = json.load(open(os.path.join(REPO, 'pretrained', 'manifest.json')))['checkpoints']


def hub_name(row, preset=True):
    name = row['entry'].replace('-', '_').replace('.', '_')
    return name + '_' + row['preset'].replace('-', '_') if preset else name


def test_every_released_entry_is_a_documented_entry_point():
    """What torch.hub.list and torch.hub.help give for the GitHub form (they take no source='local'): the same
    import of hubconf.py and the same rules, on this clone. <entry>_<preset> per file, and <entry> for the
    longest-trained release of each entry (the medium one of adaptive CE)."""
    with torch.hub._add_to_sys_path(REPO):
        hub = torch.hub._import_module('hubconf', os.path.join(REPO, 'hubconf.py'))
    entrypoints = [f for f in dir(hub) if callable(getattr(hub, f)) and not f.startswith('_')]  # torch.hub.list
    assert sorted(entrypoints) == sorted({hub_name(r) for r in MANIFEST} | {hub_name(r, False) for r in MANIFEST})
    for row in MANIFEST:
        doc = torch.hub._load_entry_from_hubconf(hub, hub_name(row)).__doc__  # torch.hub.help
        assert f'test top-1 {row["test_top1"]:.2f}' in doc and row['command'] in doc and row['file'] in doc
        longest = max((r for r in MANIFEST if r['entry'] == row['entry']), key=lambda r: r['steps'])
        assert longest['file'] in torch.hub._load_entry_from_hubconf(hub, hub_name(row, False)).__doc__
    assert 'adaptive-ce-1-medium-' in hub.adaptive_ce_1.__doc__ and 'quick-v1' in hub.adaptive_ce_1_quick_v1.__doc__


def test_hub_model_predicts_the_manifest_top1_on_the_test_set():
    """The one-line form gives the released numbers: eval mode, class names, normalization inside."""
    row = next(r for r in MANIFEST if r['entry'] == 'adaptive-ce-1' and r['preset'] == 'medium')
    model = torch.hub.load(REPO, 'adaptive_ce_1', source='local')
    assert not model.training
    ds = data.load_dataset('fashion_mnist', None)
    assert model.classes == list(ds.classes)
    assert model.mean.shape == (1, 1, 1, 1) and 0 < model.mean.item() < 255
    with torch.no_grad():
        pred = torch.cat([model(ds.test_images[i:i + 1000]).argmax(1) for i in range(0, len(ds.test_images), 1000)])
    top1 = 100.0 * (pred == ds.test_labels).float().mean().item()
    assert abs(top1 - row['test_top1']) <= 0.02 + 1e-9  # verify_pretrained.py's tolerance: two images
    fresh = torch.hub.load(REPO, 'adaptive_ce_1', source='local', pretrained=False)
    assert torch.equal(fresh.mean, model.mean) and not torch.equal(fresh.state_dict()['backbone.fc.weight'],
                                                                   model.state_dict()['backbone.fc.weight'])


def test_a_damaged_file_is_refused(tmp_path):
    repo = tmp_path / 'repo'
    shutil.copytree(os.path.join(REPO, 'pretrained'), repo / 'pretrained')
    os.makedirs(repo / 'adaptive')
    shutil.copy(os.path.join(REPO, 'hubconf.py'), repo)
    shutil.copy(os.path.join(REPO, 'adaptive', 'models.py'), repo / 'adaptive')
    row = MANIFEST[0]
    with open(repo / 'pretrained' / row['file'], 'r+b') as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(RuntimeError, match='sha256 .* is not the manifest'):
        torch.hub.load(str(repo), hub_name(row), source='local')
