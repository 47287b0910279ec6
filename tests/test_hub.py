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
    assert 'adaptive-ce-1-medium-v2-' in hub.adaptive_ce_1.__doc__ and 'quick-v1' in hub.adaptive_ce_1_quick_v1.__doc__


@pytest.mark.slow
def test_hub_model_predicts_the_manifest_top1_on_the_test_set():
    """The one-line form gives the released numbers: eval mode, class names, normalization inside."""
    row = next(r for r in MANIFEST if r['entry'] == 'adaptive-ce-1' and r['preset'] == 'medium-v2')
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


@pytest.mark.slow
def test_hub_model_takes_grey_batches_with_or_without_a_channel_axis_and_names_the_shape_it_expects():
    model = torch.hub.load(REPO, 'adaptive_ce_1', source='local')
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(images), model(images.unsqueeze(1)))                  # N x H x W: N grey images
        assert torch.equal(model(images.float()), model(images))                      # float pixels in [0, 255]
        for shape in ((4, 3, 28, 28), (4, 1, 32, 32), (28, 28), (2, 4, 1, 28, 28)):
            with pytest.raises(ValueError, match=rf'takes images N x 1 x 28 x 28 \(or N x 28 x 28\), uint8 or float '
                                                 rf'pixels in \[0, 255\]; got shape \({", ".join(map(str, shape))}\)'):
                model(torch.zeros(shape))
        with pytest.warns(UserWarning, match=r'the pixels are all in \[0, 1\].*the model takes \[0, 255\]'):
            model(images / 255.0)


def test_the_readmes_python_hub_example_runs_as_written(monkeypatch):
    """The README's hub block, pasted into Python from the root of a clone; no placeholder anywhere."""
    readme = open(os.path.join(REPO, 'README.md')).read()
    assert '<owner>' not in readme and '<owner>' not in open(os.path.join(REPO, 'hubconf.py')).read()
    block = readme.split('In Python, from a clone\'s root', 1)[1].split('\n\n', 2)[1]
    code = '\n'.join(line[4:] for line in block.splitlines())
    assert "torch.hub.load('.', 'adaptive_ce_1', source='local')" in code
    monkeypatch.chdir(REPO)
    printed = []
    exec(code, {'print': printed.append})
    assert len(printed) == 1 and len(printed[0]) == 8 and set(printed[0]) <= set(data.FASHION_MNIST_CLASSES)
