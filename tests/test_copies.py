"""Each method folder runs alone, so the shared modules are copies; they must stay byte-identical."""
import filecmp
import os

from conftest import METHODS, REPO

EXPERIMENTS = ('etc/fixmatch', 'etc/meanteacher', 'etc/rotnet', 'etc/simclr')  # the study's other systems: self-contained folders too


def test_shared_modules_are_identical_copies():
    listing = {m: sorted(f for f in os.listdir(os.path.join(REPO, m)) if f.endswith('.py')) for m in METHODS}
    assert listing['mixmatch'] == listing['fixed'] == listing['adaptive'], listing
    for folder in EXPERIMENTS:
        assert sorted(f for f in os.listdir(os.path.join(REPO, folder)) if f.endswith('.py')) == listing['mixmatch'], \
            f'{folder} must hold train.py and every shared module'
    shared = [f for f in listing['mixmatch'] if f != 'train.py']
    assert {'augment.py', 'checkpoint.py', 'data.py', 'errors.py', 'flags.py', 'loop.py', 'metrics.py', 'models.py',
            'policy.py', 'runtime.py', 'semisup.py'} == set(shared)
    for name in shared:
        for other in ('fixed', 'adaptive') + EXPERIMENTS:
            assert filecmp.cmp(os.path.join(REPO, 'mixmatch', name), os.path.join(REPO, other, name), shallow=False), \
                f'{other}/{name} differs from mixmatch/{name}: make the change once and copy it to all three'


def test_train_scripts_differ_only_in_the_method_section():
    """The diff between two train.py files is the paper: everything from the training step on is shared."""
    marker = '# The same in the three scripts'
    tails = {m: open(os.path.join(REPO, m, 'train.py')).read().split(marker, 1)[1] for m in METHODS}
    assert tails['mixmatch'] == tails['fixed'] == tails['adaptive']
