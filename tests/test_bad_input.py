"""Every error a user can cause: exit code 2, one line on stderr naming the problem, no traceback, and
nothing in an existing run directory modified."""
import hashlib
import os
import shutil

import pytest
import torch

from conftest import make_nsml_folder, make_plain_folder, run_script, tiny_run_args


pytestmark = pytest.mark.slow  # every test here runs a script: `make test-fast` leaves them out


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """A finished tiny run (adaptive) plus data folders, good and bad."""
    top = tmp_path_factory.mktemp('bad')
    w = {'images': make_plain_folder(str(top / 'images')), 'run': str(top / 'run')}
    r = run_script('adaptive', *tiny_run_args(w['images'], w['run']))
    assert r.returncode == 0, r.stderr
    w['nsml_bad_row'] = make_nsml_folder(str(top / 'nsml_bad_row'), [0, 1, 2] * 4)
    with open(os.path.join(w['nsml_bad_row'], 'train', 'train_label'), 'a') as f:
        f.write('99\t1\n')
    w['nsml_bad_label'] = make_nsml_folder(str(top / 'nsml_bad_label'), [0, 1, 2] * 4 + [5])
    w['corrupt'] = make_plain_folder(str(top / 'corrupt'), per_class=3, unlabeled=3, test_per_class=0)
    with open(os.path.join(w['corrupt'], 'unlabeled', 'torn.jpg'), 'wb') as f:
        f.write(b'\xff\xd8\xff\xe0 truncated')
    w['not_ckpt'] = str(top / 'notes.pt')
    with open(w['not_ckpt'], 'w') as f:
        f.write('not a checkpoint')
    w['empty'] = str(top / 'empty')
    os.makedirs(w['empty'])
    w['renamed'] = str(top / 'adaptive-quick-s0-00000000.pt')  # a released name whose hex is not its sha256
    shutil.copyfile(os.path.join(w['run'], 'best.pt'), w['renamed'])
    ckpt = torch.load(os.path.join(w['run'], 'checkpoint.pt'), weights_only=True)
    w['other_policy'] = str(top / 'other_policy.pt')  # as another policy of the adaptive family would write it
    torch.save(ckpt | {'policy_name': 'flexmatch'}, w['other_policy'])
    w['old_acc'] = str(top / 'old_acc.pt')  # the first release's train-accuracy counts (window-mean seed)
    torch.save(ckpt | {'train_acc': torch.zeros(4, dtype=torch.long)}, w['old_acc'])
    w['other_arch'] = str(top / 'resnet.pt')  # a checkpoint of another architecture, for --init
    torch.save(torch.load(os.path.join(w['run'], 'best.pt'), weights_only=True) | {'arch': 'resnet18'}, w['other_arch'])
    return w


def snapshot(folder):
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = (hashlib.sha256(open(p, 'rb').read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


# (method, flags, expected fragment of the one stderr line). {x} is filled from the `world` fixture;
# unless a case sets its own --out/--resume, it resumes the tiny run (4 steps done) with --resume auto and --steps 8,
# with the tiny image folder's flags (without them where it names its own --dataset; only --device with --evaluate).
CASES = [
    ('fixed', ['--threshold', '0'], '--threshold 0.0 must be in (0, 1]'),
    ('fixed', ['--threshold', '1.5'], '--threshold 1.5 must be in (0, 1]'),
    ('adaptive', ['--min-th', '-0.1'], '--min-th -0.1 must be in [0, 1]'),
    ('adaptive', ['--min-th', '1.2'], '--min-th 1.2 must be in [0, 1]'),
    ('mixmatch', ['--lambda-u', '-1'], '--lambda-u must be >= 0'),
    ('mixmatch', ['--rampup', '-5'], "'-5': expected STEPS[:START] with STEPS >= 0 and START in [0, 1]"),
    ('adaptive', ['--n-labeled', '2', '--out', '{empty}/fresh'], '--n-labeled 2 is smaller than the number of classes (3)'),
    ('adaptive', ['--n-labeled', '500', '--out', '{empty}/fresh'], '--n-labeled 500 is more than the 30 labeled images left'),
    ('adaptive', ['--split-seed', '3'], 'the checkpoint trained with --split-seed 0, this run asks for 3'),
    ('adaptive', ['--batch-size', '0'], "'0': expected B or B,BU, each at least 1"),
    ('adaptive', ['--batch-size', '8,0'], "'8,0': expected B or B,BU, each at least 1"),
    ('adaptive', ['--steps', 'ten'], "argument --steps: invalid int value: 'ten'"),
    ('adaptive', ['--no-such-flag'], 'unrecognized arguments: --no-such-flag'),
    ('adaptive', ['--threshold', '0.8'], '--threshold is a flag of fixed/train.py and etc/fixmatch/train.py, not of this'),
    ('mixmatch', ['--min-th=0.5'], '--min-th is a flag of adaptive/train.py, not of this script'),
    ('fixed', ['--confidence=sharpened', '--min-th', '0.5'], '--min-th is a flag of adaptive/train.py, not of this'),
    ('mixmatch', ['--confidence', 'sharpened'], '--confidence is a flag of fixed/train.py and adaptive/train.py'),
    ('adaptive', ['--arch', 'vgg16'], "argument --arch: invalid choice: 'vgg16'"),
    ('adaptive', ['--amp', 'fp16'], '--amp fp16 needs CUDA'),
    ('adaptive', ['--compile', 'reduce-overhead'], '--compile reduce-overhead (CUDA graphs) needs CUDA'),
    ('fixed', ['--compile', 'default', '--drop-unkept'], 'it cannot be combined with --compile'),
    ('adaptive', ['--accuracy', 'val', '--n-val', '0'], '--accuracy val needs a validation set'),
    ('adaptive', ['--arch', 'resnet18', '--init', 'imagenet', '--out', '{empty}/new'], 'ImageNet weights for resnet18 are not in the torch cache'),
    ('adaptive', ['--init', 'imagenet'], 'there are no ImageNet weights for wrn28_2'),
    ('adaptive', ['--dataset', 'fashion_mnist', '--data-root', '{empty}', '--out', '{empty}/fresh'],
     'Fashion-MNIST not found in {empty}'),
    ('adaptive', ['--dataset', 'cifar10', '--data-root', '{empty}', '--out', '{empty}/fresh'],
     'cifar10 not found: expected {empty}/cifar-10-batches-py'),
    ('adaptive', ['--dataset', 'cifar10', '--data-root', '{empty}'], 'the checkpoint trained with --dataset folder'),
    ('adaptive', ['--data-root', '{empty}'], 'is neither the NSML layout'),
    ('adaptive', ['--data-root', '{empty}/nowhere'], '--data-root {empty}/nowhere does not exist (as seen from'),
    ('adaptive', ['--data-root', '{nsml_bad_row}'], 'line 14: expected 3 tab-separated fields'),
    ('adaptive', ['--dataset', 'folder:image-size=16,num-classes=3', '--data-root', '{nsml_bad_label}'],
     'line 14: label 5 outside the class range [0, 3)'),
    ('adaptive', ['--data-root', '{corrupt}'], 'cannot decode image {corrupt}/unlabeled/torn.jpg'),
    ('adaptive', ['--arch', 'wrn28_8'], "checkpoint is arch 'wrn28_2', this run is 'wrn28_8'"),
    ('fixed', [], "checkpoint is method 'adaptive', this run is 'fixed'"),
    ('adaptive', ['--data-root', '{nsml_bad_label}'], 'checkpoint has 3 classes, the data 6'),
    ('adaptive', ['--resume', '{not_ckpt}'], 'cannot load checkpoint {not_ckpt}'),
    ('adaptive', ['--resume', '{empty}/nothing.pt'], 'checkpoint not found: {empty}/nothing.pt'),
    ('adaptive', ['--resume', None], 'is not empty: pass --resume auto to continue it'),
    ('mixmatch', ['--evaluate', '{not_ckpt}'], 'cannot load checkpoint {not_ckpt}'),
    ('adaptive', ['--evaluate', '{run}'],
     '{run} is a directory, not a checkpoint: pass a file in it, {run}/best.pt or {run}/checkpoint.pt'),
    ('adaptive', ['--evaluate', '{empty}'], 'e.g. <run>/best.pt (its best weights) or <run>/checkpoint.pt'),
    ('adaptive', ['--resume', '{run}'], '{run} is a directory, not a checkpoint'),
    ('adaptive', ['--evaluate', '{run}/best.pt', '--data-root', '{nsml_bad_label}'], 'trained on 3 classes, the data has 6'),
    ('fixed', ['--evaluate', '{renamed}'], 'does not match the 00000000 in its name'),
    ('adaptive', ['--resume', '{run}/best.pt'], 'an evaluation checkpoint (best.pt or a released file) cannot'),
    ('adaptive', ['--resume', '{other_policy}'], "checkpoint is policy 'flexmatch', this run is 'accuracy'"),
    ('adaptive', ['--policy', 'remixmatch'], "'remixmatch': expected one of accuracy, warm-start, flexmatch, freematch"),
    # flags that would change nothing in the combination given
    ('mixmatch', ['--drop-unkept'], '--drop-unkept has no effect: MixMatch keeps every unlabeled image'),
    ('fixed', ['--labeled-only', '--threshold', '0.9'], '--threshold has no effect with --labeled-only'),
    ('mixmatch', ['--labeled-only', '--lambda-u', '5', '--K', '3'], '--K, --lambda-u have no effect with --labeled-only'),
    ('adaptive', ['--dataset', 'fashion_mnist:image-size=32'], "'fashion_mnist:image-size=32': fashion_mnist takes no settings"),
    ('adaptive', ['--download'], '--download has no effect with --dataset folder and no --init imagenet'),
    ('adaptive', ['--evaluate', '{run}/best.pt', '--steps', '5'], '--steps has no effect with --evaluate'),
    # the study's policies: ranges, and flags of another policy
    ('fixed', ['--policy', 'linear:threshold-end=0.9', '--threshold', '0.5'],
     '--policy linear: threshold-end=0.9 must be in (0, --threshold 0.5]'),
    ('fixed', ['--policy', 'constant:threshold-end=0.4'], "'constant:threshold-end=0.4': constant takes no settings"),
    ('fixed', ['--policy', 'consistency', '--K', '1'], 'it needs --K 2 or more'),
    ('fixed', ['--policy', 'linear:schedule-steps=-3'], 'schedule-steps and consistency: lambda-pi must be >= 0'),
    ('adaptive', ['--policy', 'accuracy:warm-threshold=0.8'], 'accuracy takes no settings'),
    ('adaptive', ['--policy', 'flexmatch:extra-draws=3'], 'flexmatch takes flex-threshold=, flex-warmup= (each once'),
    ('adaptive', ['--policy', 'warm-start:extra-draws=1.5'], "extra-draws takes an integer, not '1.5'"),
    ('adaptive', ['--policy', 'warm-start:extra-draws=-1'], '--policy warm-start: extra-draws must be >= 0'),
    ('adaptive', ['--policy', 'warm-start:warm-until=120'], 'warm-until in [0, 100]'),
    ('adaptive', ['--policy', 'flexmatch:flex-threshold=0'], 'flex-threshold must be in (0, 1]'),
    ('adaptive', ['--policy', 'flexmatch:flex-warmup=maybe'], 'flex-warmup on or off'),
    ('adaptive', ['--policy', 'freematch:free-momentum=1'], 'free-momentum must be in [0, 1)'),
    ('mixmatch', ['--policy', 'mixed-loss:mixed-threshold=1.5'], 'mixed-threshold must be in (0, 1]'),
    ('mixmatch', ['--labeled-only', '--policy', 'mixed-loss:lambda-t=2'],
     '--policy, --policy mixed-loss:lambda-t have no effect with --labeled-only'),
    # the faithful defaults' flags
    ('mixmatch', ['--rampup', '10:1.5'], "'10:1.5': expected STEPS[:START] with STEPS >= 0 and START in [0, 1]"),
    ('fixed', ['--rampup', '0:0.1'], '--rampup STEPS:START has no effect with --rampup 0'),
    ('mixmatch', ['--accuracy', 'mixed'], '--accuracy clean|mixed has no effect with --policy all as given'),
    ('mixmatch', ['--accuracy', 'val'], '--accuracy train|val has no effect with --policy all, which does not read it'),
    ('adaptive', ['--policy', 'warm-start', '--accuracy', 'val'], '--accuracy train|val has no effect with --policy warm-start'),
    ('adaptive', ['--accuracy', 'val,mixed'], 'which does not read the train accuracy'),
    ('adaptive', ['--accuracy', 'val', '--accuracy', 'mixed'], 'which does not read the train accuracy'),
    ('adaptive', ['--accuracy', 'sometimes'], "'sometimes': expected at most one of each of train|val; clean|mixed"),
    ('adaptive', ['--accuracy', 'none,window'], "'none,window': expected at most one of each of"),
    # the flags of earlier releases, and the settings that are no longer flags
    ('adaptive', ['--acc-seed', 'none'], '--acc-seed is now --accuracy'),
    ('mixmatch', ['--lr-gamma', '0.9'], '--lr-gamma is now --lr-schedule exponential:GAMMA'),
    ('fixed', ['--wd', '0.1'], "--wd is no longer a flag: edit 'wd' in flags.DEFAULTS"),
    ('fixed', ['--labeled-only', '--rampup', '5'], '--rampup has no effect with --labeled-only'),
    ('adaptive', ['--warm-until', '30'], '--warm-until is now --policy warm-start:warm-until=V'),
    ('mixmatch', ['--rampup-steps', '5'], '--rampup-steps is now --rampup STEPS'),
    ('fixed', ['--pretrained'], '--pretrained is now --init imagenet'),
    ('fixed', ['--cache-dir', '/tmp'], '--cache-dir is now the environment variable ADTHMIX_CACHE'),
    ('adaptive', ['--resume', '{old_acc}'], 'resume it with --accuracy window (--accuracy mixed,window where'),
    # the study's other experiments: augmentations, schedules, --init
    ('adaptive', ['--strong-augment', 'randaugment:2,31'], 'randaugment:N,M (N >= 1, M in 0-30)'),
    ('adaptive', ['--strong-augment', 'randaugment:0,5'], 'randaugment:N,M (N >= 1, M in 0-30)'),
    ('mixmatch', ['--strong-augment', 'cutout:-4'], 'cutout:PX (>= 1)'),
    ('fixed', ['--strong-augment', 'augmix:11'], 'augmix:S (1-10)'),
    ('adaptive', ['--strong-augment', 'weak-guess'], 'weak-guess needs an augmentation for the views that train'),
    ('adaptive', ['--lr-schedule', 'multistep:2,9'], 'multistep:2,9 needs increasing steps in 1-7 (--steps 8)'),
    ('adaptive', ['--lr-schedule', 'multistep:3,2'], 'needs increasing steps in 1-7'),
    ('adaptive', ['--lr-schedule', 'multistep'], '--lr-schedule multistep needs its steps: multistep:S1,S2[:FACTOR]'),
    ('adaptive', ['--lr-schedule', 'exponential'], '--lr-schedule exponential needs its factor per step'),
    ('adaptive', ['--lr-schedule', 'exponential:1.5'], 'needs GAMMA in (0, 1]'),
    ('adaptive', ['--lr-schedule', 'cosine:0.5'], "'cosine:0.5': expected constant, cosine, multistep:S1,S2[:FACTOR]"),
    ('mixmatch', ['--mix', 'cutmix:0'], '--mix has no effect with ALPHA 0 (no mixing)'),
    ('mixmatch', ['--mix', 'mixup:-1'], "'mixup:-1': expected mixup|cutmix[:ALPHA] with ALPHA >= 0"),
    ('adaptive', ['--init', '{other_arch}', '--out', '{empty}/fresh'],
     'the checkpoint is --arch resnet18, this run --arch wrn28_2'),
    ('adaptive', ['--init', '{not_ckpt}', '--out', '{empty}/fresh'], 'cannot load checkpoint {not_ckpt}'),
    ('adaptive', ['--init', '{other_arch}', '--data-root', '{empty}', '--out', '{empty}/fresh'],  # before the data
     'the checkpoint is --arch resnet18, this run --arch wrn28_2'),
    ('mixmatch', ['--labeled-only', '--rot-weight', '1'], '--rot-weight has no effect with --labeled-only'),
    ('adaptive', ['--rot-weight', '-1'], '--rot-weight must be >= 0'),
    ('etc/fixmatch', ['--K', '3'], '--K: not read by fixmatch'),
    ('etc/rotnet', ['--lambda-u', '2'], '--lambda-u: not read by rotnet'),
]


@pytest.mark.parametrize('method,flags,expected', CASES, ids=[c[2][:40] for c in CASES])
def test_bad_input_exits_2_with_one_line(world, method, flags, expected):
    flags = [f.format(**world) if isinstance(f, str) else f for f in flags]
    args = tiny_run_args(world['images'], world['run'], steps=8) + ['--resume', 'auto']
    if '--dataset' in flags:  # another dataset: the image folder's own flags would be refused
        for folder_flag in ('--dataset', '--data-root'):
            i = args.index(folder_flag)
            del args[i:i + 2]
    if '--evaluate' in flags:
        args = ['--device', 'cpu']
    args += flags
    if None in args:  # '--resume', None: a new run into the existing directory, without --resume
        while '--resume' in args:
            i = args.index('--resume')
            del args[i:i + 2]
    before = snapshot(world['run'])
    r = run_script(method, *args, env={'TORCH_HOME': world['empty']})  # no ImageNet weights cached there
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert expected.format(**world) in lines[0]
    assert snapshot(world['run']) == before
    assert not os.path.exists(os.path.join(world['empty'], 'fresh'))  # a new run that fails writes nothing


def test_the_table_of_other_scripts_flags_is_each_scripts_own_flags():
    """flags.SCRIPT_FLAGS names, for a flag given to the wrong script, the scripts that have it: it must list
    exactly each script's own flags (those beyond the shared ones and --policy)."""
    import flags
    from conftest import load_train
    shared = {o for a in flags.common_parser()._actions for o in a.option_strings} | {'--policy', '-h', '--help'}
    for script in ('mixmatch', 'fixed', 'adaptive', 'etc/fixmatch', 'etc/meanteacher', 'etc/rotnet', 'etc/simclr'):
        train = load_train(script)
        parser = flags.build_parser('', train.add_method_flags, train.POLICIES, train.DEFAULTS)
        own = {o for a in parser._actions for o in a.option_strings} - shared
        assert own == set(flags.SCRIPT_FLAGS.get(f'{script}/train.py', ())), script
