"""The settings: each script's defaults block is what a run without flags uses, the folded flags (--accuracy,
--lr-schedule) set the settings they name, a flag given is told from one left out in a single parse, and every
archived command of the study, written in an earlier release's flags, still reads as the run it was."""
import glob
import json
import os
import re
import shlex

import pytest

from conftest import METHODS, REPO, load_train
from errors import UserError


@pytest.mark.parametrize('method', METHODS)
def test_the_defaults_block_is_what_a_run_without_flags_uses(method):
    """Every flag of the family has its line in the script's DEFAULTS, and `python <method>/train.py` runs with it."""
    train = load_train(method)
    parser = train.flags.build_parser('', train.add_method_flags, train.POLICIES, train.DEFAULTS)
    family = {a.dest for a in parser._actions} - set(train.flags.DEFAULTS) - {'help'} - set(train.flags.FLAG_SETTINGS)
    family |= set(parser.policy_settings)  # the policies' own settings (--policy NAME:SETTINGS)
    assert family <= set(train.DEFAULTS), family - set(train.DEFAULTS)
    args = vars(train.get_args([]))
    for dest, value in train.DEFAULTS.items():
        assert args[dest] == (value if value is not None or dest not in train.flags.FOLLOWS
                              else train.flags.FOLLOWS[dest][1][args[train.flags.FOLLOWS[dest][0]]]), dest


def test_a_flag_given_at_its_default_value_is_still_given():
    """The refusal of flags that change nothing reads the command line, not the values: a ramp's start of 0 (its
    default) with no ramp is refused as a start of 0.05 is, and --confidence unsharpened (its default) with
    --labeled-only as --confidence sharpened is."""
    fixed = load_train('fixed')
    assert fixed.get_args([]).rampup_start == 0
    for start in ('0', '0.05'):
        with pytest.raises(UserError, match=re.escape('--rampup STEPS:START has no effect with --rampup 0')):
            fixed.get_args(['--rampup', f'0:{start}'])
    with pytest.raises(UserError, match='--confidence has no effect with --labeled-only'):
        fixed.get_args(['--labeled-only', '--confidence', 'unsharpened'])
    with pytest.raises(UserError, match=re.escape('--accuracy clean|mixed has no effect')):  # a word at its default
        load_train('mixmatch').get_args(['--accuracy', 'clean'])


def test_accuracy_words_set_their_own_settings_in_any_order():
    adaptive = load_train('adaptive')
    args = adaptive.get_args(['--accuracy', 'none,mixed'])
    assert (args.acc_source, args.train_acc, args.acc_seed) == ('train', 'mixed', 'none')
    args = adaptive.get_args(['--accuracy', 'val'])
    assert (args.acc_source, args.train_acc, args.acc_seed) == ('val', 'clean', 'last-batch')
    for bad in ('train,val', 'sometimes', 'none,window'):
        with pytest.raises(SystemExit):
            adaptive.get_args(['--accuracy', bad])


def test_a_policys_own_settings_follow_its_name():
    """--policy NAME:KEY=VALUE,... sets the policy's own settings (typed as their defaults); a setting another
    policy reads, an unknown one or a bad value is refused with one line, exit 2."""
    adaptive, fixed = load_train('adaptive'), load_train('fixed')
    args = adaptive.get_args(['--policy', 'warm-start:warm-until=30,extra-draws=2'])
    assert (args.policy, args.warm_until, args.extra_draws, args.warm_threshold) == ('warm-start', 30.0, 2, 0.9)
    assert isinstance(args.extra_draws, int) and isinstance(args.warm_until, float)
    args = fixed.get_args(['--policy', 'linear:threshold-end=0.6,schedule-steps=100', '--threshold', '0.9'])
    assert (args.threshold_end, args.schedule_steps, args.threshold) == (0.6, 100, 0.9)
    assert load_train('mixmatch').get_args(['--policy', 'mixed-loss:lambda-t=2']).lambda_t == 2.0
    for bad in ('accuracy:warm-until=30', 'warm-start:flex-threshold=0.5', 'warm-start:extra-draws=two',
                'warm-start:warm-until', 'warm-start:warm-until=1,warm-until=2', 'sometimes'):
        with pytest.raises(SystemExit) as e:
            adaptive.get_args(['--policy', bad])
        assert e.value.code == 2, bad
    with pytest.raises(UserError, match=re.escape('--policy warm-start: warm-threshold must be in (0, 1]')):
        adaptive.get_args(['--policy', 'warm-start:warm-threshold=1.5'])


def test_flags_that_carry_several_settings_set_each():
    mixmatch = load_train('mixmatch')
    args = mixmatch.get_args(['--rampup', '65:0.05', '--batch-size', '20,50', '--mix', 'cutmix:1', '--strong-augment',
                              'randaugment:2,9+cutout:16+weak-guess', '--dataset', 'folder:image-size=32,num-classes=4',
                              '--init', 'imagenet', '--arch', 'resnet18'])
    assert (args.rampup_steps, args.rampup_start, args.batch_size, args.unlabeled_batch_size) == (65, 0.05, 20, 50)
    assert (args.mix, args.alpha, args.randaugment, args.cutout, args.augmix, args.guess_views) == \
        ('cutmix', 1.0, (2, 9), 16, 0, 'weak')
    assert (args.dataset, args.image_size, args.num_classes, args.pretrained, args.init) == ('folder', 32, 4, True, None)
    args = mixmatch.get_args(['--strong-augment', 'cutout:16', '--strong-augment', 'augmix:3'])  # given again: both
    assert (args.cutout, args.augmix, args.randaugment) == (16, 3, None)
    args = mixmatch.get_args(['--rampup', '100', '--batch-size', '32', '--init', 'runs/x/best.pt'])
    assert (args.rampup_steps, args.rampup_start, args.batch_size, args.unlabeled_batch_size) == (100, 0.0, 32, 32)
    assert (args.init, args.pretrained) == ('runs/x/best.pt', False)
    for flag, bad in (('--rampup', '65:2'), ('--batch-size', '20,0'), ('--mix', 'cutmix:-1'), ('--dataset', 'cifar10:image-size=32'),
                      ('--strong-augment', 'weak-guess'), ('--strong-augment', 'augmix:11'), ('--strong-augment', 'cutout:4+cutout:8')):
        with pytest.raises(SystemExit) as e:
            mixmatch.get_args([flag, bad])
        assert e.value.code == 2, (flag, bad)


def test_the_lr_schedule_carries_its_parameters():
    mixmatch = load_train('mixmatch')
    args = mixmatch.get_args(['--lr-schedule', 'multistep:100,300', '--steps', '400'])
    assert (args.lr_schedule, args.lr_milestones, args.lr_factor, args.lr_gamma) == ('multistep', (100, 300), 0.5, None)
    args = mixmatch.get_args(['--lr-schedule', 'multistep:100:0.1', '--steps', '400'])
    assert (args.lr_milestones, args.lr_factor) == ((100,), 0.1)
    args = mixmatch.get_args(['--lr-schedule', 'exponential:0.99'])
    assert (args.lr_schedule, args.lr_gamma, args.lr_milestones) == ('exponential', 0.99, None)
    assert mixmatch.get_args(['--lr-schedule', 'cosine']).lr_schedule == 'cosine'


def test_an_earlier_releases_command_is_upgraded_flag_for_flag():
    upgrade = load_train('adaptive').flags.upgrade
    assert upgrade(['--min-th', '0.5', '--train-acc', 'mixed', '--acc-seed', 'window', '--steps', '8']) == \
        ['--min-th', '0.5', '--accuracy', 'mixed,window', '--steps', '8']
    assert upgrade(['--lr-schedule', 'multistep', '--lr-milestones', '10,15', '--lr-factor', '0.1', '--acc-source=val']) \
        == ['--lr-schedule', 'multistep:10,15:0.1', '--accuracy', 'val']
    assert upgrade(['--lr-gamma', '0.9', '--lr-schedule', 'exponential']) == ['--lr-schedule', 'exponential:0.9']
    assert upgrade(['--lambda-u', '75', '--seed', '3']) == ['--lambda-u', '75', '--seed', '3']
    assert upgrade(['--rampup-start', '0.05', '--rampup-steps', '65', '--batch-size', '20', '--unlabeled-batch-size',
                    '50', '--alpha', '0']) == ['--rampup', '65:0.05', '--batch-size', '20,50', '--mix', 'mixup:0']
    assert upgrade(['--policy', 'warm-start', '--warm-until', '30', '--loss', 'mse', '--extra-draws', '2']) == \
        ['--policy', 'warm-start:warm-until=30,extra-draws=2', '--loss', 'mse']
    assert upgrade(['--pretrained', '--image-size', '224', '--dataset', 'folder', '--cache-dir', '/c', '--randaugment',
                    '2,3', '--guess-views', 'weak', '--cutout', '16']) == \
        ['--init', 'imagenet', '--dataset', 'folder:image-size=224', '--strong-augment', 'randaugment:2,3+cutout:16+weak-guess']
    assert upgrade(['--unlabeled-batch-size', '448', '--mix', 'cutmix']) == ['--batch-size', '64,448', '--mix', 'cutmix']


def archived_runs():
    """(its reproduce.json, its args.json or None) of every run archived in etc/results/logs/."""
    runs = []
    for path in sorted(glob.glob(os.path.join(REPO, 'etc', 'results', 'logs', '**', 'reproduce.json'), recursive=True)):
        args = os.path.join(os.path.dirname(path), 'args.json')
        runs.append((json.load(open(path)), json.load(open(args)) if os.path.exists(args) else None))
    return runs


def test_every_archived_command_still_reads_as_the_run_it_was():
    """Each command reproduce.py archived, in the flags of the release that ran it, upgraded and parsed by its own
    script: it parses, and where the run wrote its resolved arguments it gives each of them (the settings added
    since, such as acc_source outside adaptive/, keep their defaults)."""
    runs = archived_runs()
    assert len(runs) >= 90 and sum(args is not None for _, args in runs) >= 5
    for info, written in runs:
        argv = shlex.split(info['command'])[1:]
        script = os.path.dirname(argv[0])
        train = load_train(script)
        parsed = vars(train.get_args(train.flags.upgrade(argv[1:])))
        if written is not None:
            filled_at_run_time = {'num_classes', 'augment_kind'}  # from the data, after the arguments
            filled_at_run_time |= {'cache_dir'}  # where the machine caches decoded folders ($ADTHMIX_CACHE)
            differ = {k for k, v in written.items()
                      if k not in filled_at_run_time and json.loads(json.dumps(parsed.get(k))) != v}
            assert not differ, (info['command'], differ)
