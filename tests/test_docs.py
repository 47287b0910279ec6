"""What a reader relies on in the docs: every flag explains itself in --help in one line, the commands in the
docs use flags that exist, links resolve, and the README stays short and speaks of the release alone."""
import argparse
import glob
import os
import re

import pytest

import flags
from conftest import METHODS, REPO, load_train

DOCS = ['README.md', 'etc/sessions.md', 'etc/running.md', 'etc/deviations.md', 'etc/speed.md',
        'etc/policies.md', 'pretrained/README.md'] + sorted(
    os.path.relpath(os.path.join(d, 'README.md'), REPO) for d in glob.glob(os.path.join(REPO, 'etc', 'results', '*'))
    if os.path.exists(os.path.join(d, 'README.md')))


SCRIPTS = METHODS + ('etc/fixmatch', 'etc/meanteacher', 'etc/rotnet', 'etc/simclr')


def parser_of(method):
    train = load_train(method)
    return flags.build_parser(train.__doc__, train.add_method_flags, train.POLICIES, train.DEFAULTS,
                              getattr(train, 'NOT_READ', ()))


def script_flags(method):
    """The flags a script reads (the shared flags it does not read are hidden from --help and refused)."""
    return {s for a in parser_of(method)._actions if a.help != argparse.SUPPRESS for s in a.option_strings
            if s.startswith('--')}


@pytest.mark.parametrize('method', SCRIPTS)
def test_every_flag_has_a_short_help_without_measurements_that_go_stale(method):
    actions = [a for a in parser_of(method)._actions if a.dest != 'help']
    assert len(actions) > 35
    for a in actions:
        assert a.help and '\n' not in a.help and len(a.help) <= 100, a.option_strings
        assert not re.search(r'\d\s*(h|min|ms|s)(/step)?\b', a.help), (a.option_strings, a.help)  # no timings


def help_defaults(method):
    """{flag: the default --help shows}, from the script's --help as a user runs it (one line per flag)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, os.path.join(method, 'train.py'), '--help'], cwd=REPO, capture_output=True,
                         text=True, env=dict(os.environ, COLUMNS='1000'), timeout=120, check=True).stdout
    entries = [e.split('\n\n')[0] for e in re.split(r'\n(?=  -)', out)]  # a flag's line and its help's lines
    return {m[1]: m[2] for e in entries if (m := re.match(r'  (--[\w-]+)\b.*\[default: ([^\]]+)\]\s*$', e, re.S))}


@pytest.mark.parametrize('method', SCRIPTS)
def test_help_shows_the_default_each_flag_runs_with(method):
    """--help gives every valued flag the value a run without it uses, the family's (not None), and it is the value
    the script parses to."""
    shown = help_defaults(method)
    args = load_train(method).get_args([])
    for a in parser_of(method)._actions:
        flag = a.option_strings[-1]
        if a.help == argparse.SUPPRESS or a.nargs == 0 or not flag.startswith('--'):
            continue
        value = {'accuracy': ','.join(getattr(args, d) for d in flags.ACCURACY),  # the flags that carry several
                 'mix': f'{args.mix}:{args.alpha:g}', 'rampup': f'{args.rampup_steps}' + (f':{args.rampup_start:g}' if
                                                                                         args.rampup_start else ''),
                 'batch_size': ','.join(dict.fromkeys(map(str, (args.batch_size, args.unlabeled_batch_size)))),
                 'strong_augment': None}.get(a.dest, getattr(args, a.dest, None))
        if value is None:  # off, or decided from the data (--n-val, --out): the help says how
            assert flag not in shown, flag
        else:
            assert shown[flag] == (f'{value:g}' if isinstance(value, float) else ','.join(map(str, value))
                                   if isinstance(value, tuple) else str(value)), flag


def test_help_gives_each_methods_defining_settings():
    """The settings that make each method what it is, as --help states them."""
    expected = {
        'mixmatch': {'--loss': 'mse', '--lambda-u': '75', '--rampup': '16000', '--acc-window': '218'},
        'fixed': {'--loss': 'mse', '--lambda-u': '75', '--rampup': '0', '--threshold': '0.8'},
        'adaptive': {'--loss': 'ce', '--lambda-u': '1', '--rampup': '0', '--min-th': '0.5',
                     '--acc-window': '218'},
    }
    for method, values in expected.items():
        shown = help_defaults(method)
        assert {k: shown.get(k) for k in values} == values, method
        assert ('--threshold' in shown) == (method == 'fixed') and ('--min-th' in shown) == (method == 'adaptive')


def test_commands_in_docs_use_existing_flags():
    known = {m: script_flags(m) for m in SCRIPTS}
    for doc in DOCS:
        text = open(os.path.join(REPO, doc)).read()
        scripts = '|'.join(SCRIPTS)
        for method, rest in re.findall(rf'python ({scripts})/train\.py([^`\n]*(?:\\\n[^`\n]*)*)', text):
            used = set(re.findall(r'(?<![\w-])(--[a-z][a-z0-9-]*)', rest))
            assert used <= known[method] | {'--help'}, (doc, method, used - known[method])


def test_relative_links_in_docs_resolve():
    for doc in DOCS:
        text = open(os.path.join(REPO, doc)).read()
        for target in re.findall(r'\]\(([^)#]+)(?:#[^)]*)?\)', text):
            if '://' not in target:
                path = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), target))
                assert os.path.exists(path), (doc, target)


def test_readme_leads_with_results_and_speaks_of_the_release_alone():
    lines = open(os.path.join(REPO, 'README.md')).read().splitlines()
    assert len(lines) <= 250  # a page a newcomer reads: results, quickstart, methods, files, policies; details in etc/
    headings = [l for l in lines if l.startswith('## ')]
    assert headings[:5] == ['## What held on the public stand-in', '## Quickstart', '## The methods, precisely',
                            '## Where things are', '## Adding your own policy']
    for doc in DOCS:
        text = open(os.path.join(REPO, doc)).read()
        assert not re.search(r'\b[0-2]\d:[0-5]\d\s*[–-]\s*[0-2]\d:[0-5]\d\b', text), doc      # times of day
        assert not re.search(r'[Ii]ssue #\d|\blent\b|this session', text), doc                 # our own work items


def test_the_sessions_map_names_every_session_of_the_study():
    """Every session number of the study's lab notes has a row (a command, or why there is none)."""
    sessions = [79, 100, 121, 124, 177, 183, 191, 192, 203, 348, 352, 369, 371, 372, 373, 374, 377, 378, 386, 387,
                401, 405, 406, 407, 408, 409, 417, 423, 428, 430, 431, 436, 437, 438, 449, 458, 460, 462, 463, 464,
                465, 466, 467, 468, 469, 475, 477, 478, 485, 488]
    rows = [line for line in open(os.path.join(REPO, 'etc', 'sessions.md')) if line.startswith('| ')]
    named = {int(n) for line in rows for n in re.findall(r'\b(\d{2,3})\b', line.split('|')[1])}
    assert not set(sessions) - named, sorted(set(sessions) - named)
