"""etc/release_pretrained.py: releasing one preset adds its files beside the other releases, never in their place."""
import json
import os
import sys

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'etc'))
import release_pretrained  # noqa: E402
import experiments  # noqa: E402


def test_a_release_of_one_preset_keeps_the_other_releases(tmp_path, monkeypatch):
    out, runs = tmp_path / 'pretrained', tmp_path / 'runs'
    out.mkdir()
    old = {'file': 'mixmatch-quick-v1-s0-0123abcd.pt', 'sha256': '0123abcd' * 8, 'entry': 'mixmatch',
           'tables': 'table 1', 'session': '405', 'method': 'mixmatch', 'command': 'python mixmatch/train.py',
           'preset': 'quick-v1', 'seed': 0, 'test_top1': 79.75, 'test_top5': 98.65, 'run_test_top1': 79.75}
    (out / old['file']).write_bytes(b'released earlier')
    (out / 'unlisted-quick-s0-00000000.pt').write_bytes(b'no manifest row')
    (out / 'manifest.json').write_text(json.dumps({'preset': 'quick-v1', 'seed': 0, 'checkpoints': [old]}))
    run = experiments.run_dir(str(runs), 'medium', 'mixmatch', 0)  # a finished medium run, as reproduce.py leaves it
    os.makedirs(run)
    cmd = 'python ' + ' '.join(experiments.command('mixmatch', 0, 'medium', 'cuda', 'elsewhere'))
    with open(os.path.join(run, 'reproduce.json'), 'w') as f:
        json.dump({'done': True, 'command': cmd, 'steps': 4096, 'hardware': 'a GPU'}, f)
    monkeypatch.setattr(release_pretrained, 'OUT', str(out))
    monkeypatch.setattr(release_pretrained, 'MANIFEST', str(out / 'manifest.json'))
    monkeypatch.setattr(release_pretrained, 'slim', lambda path: {'metrics': {'test_top1': 84.1, 'test_top5': 99.0,
                                                                             'step': 4096}})
    monkeypatch.setattr(release_pretrained, 'evaluate_file', lambda path, method: (84.12, 99.01, ''))
    assert release_pretrained.main(['--preset', 'medium', '--seed', '0', '--runs-dir', str(runs)]) == 0
    rows = json.loads((out / 'manifest.json').read_text())['checkpoints']
    assert [(r['entry'], r['preset'], r['steps']) for r in rows] == [('mixmatch', 'medium', 4096),
                                                                     ('mixmatch', 'quick-v1', 1024)]  # longest first
    assert rows[0]['file'].startswith('mixmatch-medium-s0-') and rows[0]['hardware'] == 'a GPU'
    assert sorted(os.listdir(out)) == sorted(['README.md', 'manifest.json', old['file'], rows[0]['file']])
    readme = (out / 'README.md').read_text()
    assert readme.index('## `medium` preset, seed 0: 4096 steps') < readme.index('## `quick-v1` preset, seed 0')
    assert '| 84.12 | 99.01 | 84.10 |' in readme and '| 79.75 | 98.65 | 79.75 |' in readme
