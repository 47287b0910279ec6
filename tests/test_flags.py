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
    family = {a.dest for a in train.flags.build_parser('', train.add_method_flags, train.POLICIES, train.DEFAULTS)
              ._actions} - set(train.flags.DEFAULTS) - {'help', 'accuracy'}
    assert family <= set(train.DEFAULTS), family - set(train.DEFAULTS)
    args = vars(train.get_args([]))
    for dest, value in train.DEFAULTS.items():
        assert args[dest] == (value if value is not None or dest not in train.flags.FOLLOWS
                              else train.flags.FOLLOWS[dest][1][args[train.flags.FOLLOWS[dest][0]]]), dest


def test_a_flag_given_at_its_default_value_is_still_given():
    """The refusal of flags that change nothing reads the command line, not the values: --threshold-end 0.5 (its
    default) with the constant policy is refused as --threshold-end 0.4 is."""
    fixed = load_train('fixed')
    assert fixed.get_args([]).threshold_end == 0.5
    with pytest.raises(UserError, match='--threshold-end has no effect with --policy constant'):
        fixed.get_args(['--threshold-end', '0.5'])
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
            differ = {k for k, v in written.items()
                      if k not in filled_at_run_time and json.loads(json.dumps(parsed.get(k))) != v}
            assert not differ, (info['command'], differ)
