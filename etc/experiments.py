"""The study's experiments as data: every table entry (its script, flags, labels, the original's session and the
paper's top-1), the tables, the presets, and the exact command each (entry, seed, preset) runs.
etc/reproduce.py runs them and writes their tables; etc/sessions.md maps every session of the study to a command.

An entry's flags are those of the faithful setup (the scripts' --preset schedule, MixMatch's weight per class);
the v1 presets replay the first release's flags (Entry.v1) for the entries it had.
"""
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'mixmatch'))
import flags as script_flags  # noqa: E402  (the scripts' --preset: the one definition of the faithful schedules)

# ---------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------
# name: steps, evaluations, --n-val, and the setup its commands follow. The evaluations set --eval-every and the
# "median of the last 20" window; --n-val 1000 (100 per class) keeps each evaluation (val + 10k test, fp32) cheap
# on a CPU. Setup "faithful": the scripts' --preset (flags.PRESETS: the train accuracy's window is the original's
# epoch, 1/300 of the run; the original's MixMatch ramp, from 1/20 of lambda_u, full after 19 of 300 epochs) and
# the paper's MSE weight per class (below); the train accuracy and its window seed follow the scripts' defaults
# (as session 431). Setup "v2": the faithful one with the window the presets had before, steps / evaluations
# (`--preset P --acc-window N`), kept so that its archived runs, tables and checkpoints stay reproducible and the
# window's own effect can be measured on the same seeds; it changes only the policies that read the train
# accuracy (the adaptive threshold and warm start). Setup "v1": the first release's defaults, kept so that its
# archived runs and released checkpoints can be reproduced exactly: MixMatch ramped from 0 over a quarter of the
# run, MSE at lambda_u 75, the train accuracy read from the mixed rows with a window-mean seed.
PRESETS = {name: {**p, 'n_val': script_flags.PRESET_N_VAL, 'setup': 'faithful'}
           for name, p in script_flags.PRESETS.items()}
PRESETS |= {f'{name}-v2': {**PRESETS[name], 'setup': 'v2', 'base': name} for name in ('quick', 'medium')} | {
    'quick-v1': {'steps': 1024, 'evals': 8, 'n_val': 1000, 'setup': 'v1'},
    'medium-v1': {'steps': 4096, 'evals': 16, 'n_val': 1000, 'setup': 'v1'},
}
ORIGINAL_EPOCHS = script_flags.ORIGINAL_EPOCHS  # the original ran 300 epochs


def faithful(preset):
    """A preset whose commands are the scripts' --preset (v2: with the window it had before)."""
    return PRESETS[preset]['setup'] in ('faithful', 'v2')


def schedule(preset):
    """The schedule flags of a preset: the scripts' own --preset values at a faithful one."""
    p = PRESETS[preset]
    every = p['steps'] // p['evals']
    values = {'eval_every': every, 'acc_window': every, 'rampup_steps': p['steps'] // 4}  # v1: from 0, a quarter
    rampup = ['--rampup', str(values['rampup_steps'])]
    if faithful(preset):  # lambda_u * min(1, (1 + s/E) / 20), E = steps / 300: from 1/20, full at 19 E
        values = script_flags.preset_flags(p.get('base', preset), ramp='original')
        if p['setup'] == 'v2':
            values['acc_window'] = every
        rampup = ['--rampup', f'{values["rampup_steps"]}:{values["rampup_start"]:g}']
    return {'steps': p['steps'], 'eval_every': values['eval_every'], 'acc_window': values['acc_window'],
            'rampup': rampup, 'n_val': p['n_val'], 'evals': p['evals'], 'setup': p['setup'],
            'test_when': ['--test-when', values['test_when']] if 'test_when' in values else []}


# ---------------------------------------------------------------------------------------------------------
# Entries
# ---------------------------------------------------------------------------------------------------------
LABELS, FEW_LABELS = 250, 80  # tables 1-2: 25 per class; table 3: 8 per class (the paper's 4k of ~13k: 3.3x fewer)
CLASSES, PAPER_CLASSES = 10, 265


def paper_mse_weight(lambda_u):
    """MixMatch's MSE is a mean over classes, so the paper's lambda_u on 265 classes weighs each summed squared
    error as lambda_u * 10 / 265 does on Fashion-MNIST's 10 classes (150 -> 5.66; the notes' 1200 -> 45.28)."""
    return f'{lambda_u * CLASSES / PAPER_CLASSES:.2f}'


MSE = paper_mse_weight(150)
CE1 = ('--min-th', '0.5', '--lambda-u', '1', '--loss', 'ce')


@dataclass(frozen=True)
class Entry:
    script: str                  # the folder of its train.py
    flags: tuple                 # its method flags in the faithful setup (no schedule, seed or run flags)
    what: str                    # one line for the tables
    session: str = '—'           # the original's session(s) it reproduces (etc/sessions.md)
    paper: float = None          # the paper's top-1 on its data (NAVER fashion), where its tables have one
    labels: int = LABELS         # --n-labeled
    rampup: bool = False         # the original's MixMatch ramp, where the script's preset sets none (469)
    schedule_epochs: int = None  # the linear policy's schedule-steps: this many of the original's 300 epochs
    v1: tuple = None             # the first release's flags (the entries it had; MSE at lambda_u 75)
    v1_what: str = None          # its line for the v1 tables, where it differs

    @property
    def labeled_only(self):
        return '--labeled-only' in self.flags


ENTRIES = {
    'labeled-only': Entry('mixmatch', ('--labeled-only',), 'labeled only (MixMatch\'s step without unlabeled images)',
                          v1=('--labeled-only',)),
    'mixmatch': Entry('mixmatch', ('--lambda-u', MSE), 'MixMatch (MSE, the paper\'s weight per class)', '405', 73.89,
                      v1=(), v1_what='MixMatch (MSE, lambda_u 75)'),
    'mixmatch-75': Entry('mixmatch', ('--lambda-u', '75'), 'MixMatch (MSE, MixMatch\'s lambda_u 75)', '405'),
    'fixed-0.8': Entry('fixed', ('--threshold', '0.8', '--lambda-u', MSE), 'fixed threshold 0.8 (MSE)', '408', 72.84,
                       v1=('--threshold', '0.8'), v1_what='fixed threshold 0.8 (MSE, lambda_u 75)'),
    'adaptive-mse': Entry('adaptive', ('--min-th', '0.5', '--loss', 'mse', '--lambda-u', MSE, '--accuracy', 'none'),
                          'adaptive, min 0.5 (MSE)', '401', 73.96, v1=('--min-th', '0.5', '--loss', 'mse'),
                          v1_what='adaptive, min 0.5 (MSE, lambda_u 75)'),
    'adaptive-ce-1': Entry('adaptive', CE1, 'adaptive CE, lambda_u 1', '431', 75.06, v1=CE1),
    'adaptive-ce-1.5': Entry('adaptive', ('--min-th', '0.5', '--lambda-u', '1.5', '--loss', 'ce'),
                             'adaptive CE, lambda_u 1.5', '467', 75.14,
                             v1=('--min-th', '0.5', '--lambda-u', '1.5', '--loss', 'ce')),
    'adaptive-ce-2': Entry('adaptive', ('--min-th', '0.5', '--lambda-u', '2', '--loss', 'ce'),
                           'adaptive CE, lambda_u 2', '468', 74.79,
                           v1=('--min-th', '0.5', '--lambda-u', '2', '--loss', 'ce')),
    'labeled-only-few': Entry('mixmatch', ('--labeled-only',), 'labeled only, few labels', labels=FEW_LABELS,
                              v1=('--labeled-only',)),
    'mixmatch-few': Entry('mixmatch', ('--lambda-u', MSE), 'MixMatch, few labels', '478', 59.58, FEW_LABELS, v1=(),
                          v1_what='MixMatch, few labels (lambda_u 75)'),
    'adaptive-ce-1-few': Entry('adaptive', CE1, 'adaptive CE, lambda_u 1, few labels', '477 -> 485', 61.15,
                               FEW_LABELS, v1=CE1),
    # the study's other policies, and the thresholds the field moved to (etc/sessions.md maps every session)
    'supervised': Entry('mixmatch', ('--labeled-only', '--mix', 'mixup:0', '--ema-decay', '0'),
                        'plain supervised (no mixup, no EMA)', '458-465'),
    'mixed-loss': Entry('mixmatch', ('--policy', 'mixed-loss:mixed-threshold=0.9', '--lambda-u', paper_mse_weight(100)),
                        'mixed loss: MixMatch + a term over images above 0.9', '409'),
    'fixed-0.9': Entry('fixed', ('--threshold', '0.9', '--lambda-u', MSE), 'fixed threshold 0.9 (MSE)', '407'),
    'fixed-0.8-ce': Entry('fixed', ('--threshold', '0.8', '--loss', 'ce', '--lambda-u', '1'),
                          'fixed threshold 0.8 (CE)', '430'),
    # the "slow" threshold of FixMixMatch, max(0.9 - (epoch // 5) / 40, 0.5), reaches 0.5 at epoch 80 (left commented
    # in the 401 and 408 code, main.py:528)
    'linear-slow': Entry('fixed', ('--policy', 'linear:threshold-end=0.5', '--threshold', '0.9', '--lambda-u', MSE),
                         'threshold 0.9 -> 0.5 over 80 of 300 epochs', '79, 348', schedule_epochs=80),
    'consistency': Entry('fixed', ('--policy', 'consistency', '--threshold', '0.9', '--lambda-u', MSE),
                         'threshold 0.9 + Pi-model loss below it', '100'),
    'adaptive-no-floor': Entry('adaptive', ('--min-th', '0', '--loss', 'mse', '--lambda-u', MSE, '--accuracy', 'none'),
                               'adaptive, no floor (MSE)', '372-374'),
    'adaptive-val': Entry('adaptive', ('--min-th', '0.5', '--accuracy', 'val', '--loss', 'mse', '--lambda-u', MSE),
                          'adaptive on val accuracy (MSE)', '406'),
    'adaptive-val-ce': Entry('adaptive', ('--min-th', '0.5', '--accuracy', 'val', '--loss', 'ce', '--lambda-u', '1'),
                             'adaptive on val accuracy (CE)', '423'),
    'warm-start': Entry('adaptive', ('--policy', 'warm-start', '--loss', 'mse', '--lambda-u', MSE, '--accuracy', 'none'),
                        'warm start + ensure ratio (MSE)', '417'),
    'warm-start-seeded': Entry('adaptive', ('--policy', 'warm-start', '--loss', 'mse', '--lambda-u', MSE),
                               'warm start + ensure ratio, last-value seeding', '428'),
    'adaptive-ce-rampup': Entry('adaptive', CE1, 'adaptive CE, lambda_u ramped to 1', '469', rampup=True),
    'adaptive-mse-1200': Entry('adaptive', ('--min-th', '0.5', '--loss', 'mse', '--lambda-u', paper_mse_weight(1200)),
                               'adaptive, MSE lambda_u 1200', '466'),
    'flexmatch': Entry('adaptive', ('--policy', 'flexmatch', '--lambda-u', '1', '--loss', 'ce'),
                       'FlexMatch class-wise thresholds (CE)'),
    'freematch': Entry('adaptive', ('--policy', 'freematch', '--lambda-u', '1', '--loss', 'ce'),
                       'FreeMatch self-adaptive thresholds (CE)'),
    # other systems the study tried, with their papers' defaults (etc/fixmatch, etc/meanteacher)
    'fixmatch': Entry('etc/fixmatch', (), 'FixMatch (its paper\'s settings: SGD, cosine, 7 unlabeled per labeled '
                                         'image, threshold 0.95)'),
    'mean-teacher': Entry('etc/meanteacher', (), 'Mean Teacher (EMA teacher, MSE 100, sigmoid ramp-up)'),
}
M75 = 'mixmatch-75'  # MixMatch at its own lambda_u: a second baseline where a table has it
HEADLINE = 'adaptive-ce-1'  # the study's method: the policy table compares every policy with it too


# ---------------------------------------------------------------------------------------------------------
# Tables: each starts with its baselines (labeled only, then MixMatch)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    title: str
    entries: tuple


TABLES = {
    '1': Table('Table 1: threshold policy, MSE unlabeled loss',
               ('labeled-only', 'mixmatch', 'mixmatch-75', 'fixed-0.8', 'adaptive-mse')),
    '2': Table('Table 2: adaptive threshold with a cross-entropy unlabeled loss',
               ('labeled-only', 'mixmatch', 'mixmatch-75', 'adaptive-ce-1', 'adaptive-ce-1.5', 'adaptive-ce-2')),
    '3': Table(f'Table 3: few labels ({FEW_LABELS} on Fashion-MNIST; the paper: 4k of 265 classes)',
               ('labeled-only-few', 'mixmatch-few', 'adaptive-ce-1-few')),
    'P': Table('Every policy the study tried, and FlexMatch and FreeMatch, on the same data, model and budget',
               ('labeled-only', 'mixmatch', 'supervised', 'mixmatch-75', 'mixed-loss', 'fixed-0.8', 'fixed-0.9',
                'fixed-0.8-ce', 'linear-slow', 'consistency', 'adaptive-mse', 'adaptive-no-floor', 'adaptive-val',
                'adaptive-val-ce', 'warm-start', 'warm-start-seeded', 'adaptive-ce-1', 'adaptive-ce-rampup',
                'adaptive-mse-1200', 'flexmatch', 'freematch')),
    'S': Table('Other semi-supervised systems the study tried, on the same data, model, EMA and evaluation',
               ('labeled-only', 'mixmatch', 'mixmatch-75', 'adaptive-ce-1', 'fixmatch', 'mean-teacher')),
}


# ---------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------
def in_setup(entry, preset):
    return faithful(preset) or ENTRIES[entry].v1 is not None


def entry_flags(entry, preset):
    """The entry's method flags in the preset's setup (without schedule, seed and run flags)."""
    e = ENTRIES[entry]
    if faithful(preset):
        return list(e.flags)
    read = 'mixed,' if e.script == 'adaptive' and not e.labeled_only else ''  # the first release's train accuracy
    return list(e.v1) + ['--accuracy', read + 'window']


def describe(entry, preset):
    e = ENTRIES[entry]
    return (e.v1_what if PRESETS[preset]['setup'] == 'v1' else None) or e.what


def method_flags(entry, preset, steps):
    """entry_flags, with the linear policy's schedule-steps (the entry's epochs of 300, laid on `steps`) among its
    --policy settings."""
    flags, e = entry_flags(entry, preset), ENTRIES[entry]
    if e.schedule_epochs:
        at = flags.index('--policy') + 1
        flags[at] += f',schedule-steps={round(e.schedule_epochs * steps / ORIGINAL_EPOCHS)}'
    return flags


def run_dir(runs_dir, preset, entry, seed):
    return os.path.join(runs_dir, preset, entry, f's{seed}')


def command(entry, seed, preset, device, runs_dir, amp='auto'):
    """The exact training command of one table entry and seed (list of arguments, without the interpreter)."""
    e, s = ENTRIES[entry], schedule(preset)
    cmd = [f'{e.script}/train.py', *method_flags(entry, preset, s['steps']), '--n-labeled', str(e.labels),
           '--n-val', str(s['n_val']), '--steps', str(s['steps']), '--eval-every', str(s['eval_every']),
           '--acc-window', str(s['acc_window']), *s['test_when']]
    if (e.script == 'mixmatch' and not e.labeled_only) or e.rampup:
        cmd += s['rampup']
    elif e.script == 'etc/meanteacher':  # the same length of ramp; its shape is Mean Teacher's sigmoid
        cmd += ['--rampup', s['rampup'][1].split(':')[0]]
    cmd += ['--seed', str(seed), '--split-seed', str(seed), '--device', device, *(['--amp', amp] if amp != 'auto' else []),
            '--out', run_dir(runs_dir, preset, entry, seed), '--resume', 'auto']
    return cmd


def method_command(entry, preset):
    """The entry's command as the tables write it, what seed 0 ran (seed i adds --seed i --split-seed i): at a
    faithful preset with the scripts' --preset for the schedule flags it sets; at the v1 presets, which the
    scripts have no --preset for, with the schedule flags themselves."""
    e = ENTRIES[entry]
    if not faithful(preset):
        ran = command(entry, 0, preset, 'auto', 'runs')
        per_run = {i for i, a in enumerate(ran) if a in ('--seed', '--split-seed', '--device', '--out', '--resume')}
        return ' '.join(['python'] + [a for i, a in enumerate(ran) if i not in per_run and i - 1 not in per_run])
    s, p = schedule(preset), PRESETS[preset]
    cmd = ['python', f'{e.script}/train.py', *method_flags(entry, preset, s['steps']), '--n-labeled', str(e.labels)]
    if e.rampup:  # a ramp the script's preset does not set (the adaptive family has none)
        cmd += s['rampup']
    window = ['--acc-window', str(s['acc_window'])] if p['setup'] == 'v2' else []
    return ' '.join(cmd + ['--preset', p.get('base', preset)] + window)
