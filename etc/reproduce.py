"""Reproduce the paper's tables on the public stand-in (Fashion-MNIST, WRN-28-2): run every entry of a table with
the three training scripts (as subprocesses, with the flags written in the tables below), then collect each
run's log.jsonl into etc/results/<preset>/table{1,2,3}.md.

    python etc/reproduce.py --table all --seeds 1 --preset quick --jobs 2   # pipeline check, ~2 h on 2 CPU cores
    python etc/reproduce.py --table 2 --entries labeled-only,mixmatch,adaptive-ce-1 --seeds 3 --preset medium \
        --jobs 2                                                             # the headline comparison
    python etc/reproduce.py --table all --seeds 3 --preset full --device cuda
    python etc/reproduce.py --table all --seeds 3 --preset quick --report --readme   # tables from finished runs

Seed i runs every entry with `--seed i --split-seed i`: the same labeled images and the same initialization,
so the entries of one seed are paired. Runs go to runs/reproduce/<preset>/<entry>/s<i>; an interrupted call
continues where it stopped (finished runs are skipped, unfinished ones resume from their checkpoint).

Presets set the length and scale the schedule flags with --steps by one rule for every method:
    --eval-every = steps / evals,  --acc-window = steps / 300 (the original's epoch; steps / evals in the v1 and
    v2 presets),  MixMatch --rampup-steps = steps * 19 / 300 (the original's 19 of 300 epochs; steps / 4 in v1)
The test set is measured when val top-1 improves and at the end (the tables' test top-1 at best val); the full
preset measures it at every evaluation for the median of the last 20 (--test-when every-eval). Before it
starts, a call prints its plan: runs to do, runs reused, and hours estimated from earlier runs here. A table
keeps one precision: a call stops if its runs so far trained at another precision than this machine's
--amp auto would give (bf16 runs are not continued in fp32 on a CPU without bf16 kernels); --amp chooses.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'mixmatch'))
import flags as script_flags  # noqa: E402  (the scripts' --preset: the one definition of the faithful schedules)

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
LABELS, FEW_LABELS = 250, 80  # tables 1-2: 25 per class; table 3: 8 per class (the paper's 4k of ~13k: 3.3x fewer)
CLASSES, PAPER_CLASSES = 10, 265
ORIGINAL_EPOCHS = script_flags.ORIGINAL_EPOCHS  # the original ran 300 epochs


def paper_mse_weight(lambda_u):
    """MixMatch's MSE is a mean over classes, so the paper's lambda_u on 265 classes weighs each summed squared
    error as lambda_u * 10 / 265 does on Fashion-MNIST's 10 classes (150 -> 5.66; the notes' 1200 -> 45.28)."""
    return f'{lambda_u * CLASSES / PAPER_CLASSES:.2f}'


MSE = paper_mse_weight(150)
CE1 = ['--min-th', '0.5', '--lambda-u', '1', '--loss', 'ce']
M75 = 'mixmatch-75'  # MixMatch at its own lambda_u: a second baseline where a table has it
# entry: (script, method flags, labels, original session, what it is); flags of the faithful setup
ENTRIES = {
    'labeled-only': ('mixmatch', ['--labeled-only'], LABELS, '—',
                     'labeled only (MixMatch\'s step without unlabeled images)'),
    'mixmatch': ('mixmatch', ['--lambda-u', MSE], LABELS, '405', 'MixMatch (MSE, the paper\'s weight per class)'),
    'mixmatch-75': ('mixmatch', ['--lambda-u', '75'], LABELS, '405', 'MixMatch (MSE, MixMatch\'s lambda_u 75)'),
    'fixed-0.8': ('fixed', ['--threshold', '0.8', '--lambda-u', MSE], LABELS, '408', 'fixed threshold 0.8 (MSE)'),
    'adaptive-mse': ('adaptive', ['--min-th', '0.5', '--loss', 'mse', '--lambda-u', MSE, '--acc-seed', 'none'],
                     LABELS, '401', 'adaptive, min 0.5 (MSE)'),
    'adaptive-ce-1': ('adaptive', CE1, LABELS, '431', 'adaptive CE, lambda_u 1'),
    'adaptive-ce-1.5': ('adaptive', ['--min-th', '0.5', '--lambda-u', '1.5', '--loss', 'ce'], LABELS, '467',
                        'adaptive CE, lambda_u 1.5'),
    'adaptive-ce-2': ('adaptive', ['--min-th', '0.5', '--lambda-u', '2', '--loss', 'ce'], LABELS, '468',
                      'adaptive CE, lambda_u 2'),
    'labeled-only-few': ('mixmatch', ['--labeled-only'], FEW_LABELS, '—', 'labeled only, few labels'),
    'mixmatch-few': ('mixmatch', ['--lambda-u', MSE], FEW_LABELS, '478', 'MixMatch, few labels'),
    'adaptive-ce-1-few': ('adaptive', CE1, FEW_LABELS, '477 -> 485', 'adaptive CE, lambda_u 1, few labels'),
    # the study's other policies, and the thresholds the field moved to (etc/sessions.md maps every session)
    'supervised': ('mixmatch', ['--labeled-only', '--alpha', '0', '--ema-decay', '0'], LABELS, '458-465',
                   'plain supervised (no mixup, no EMA)'),
    'mixed-loss': ('mixmatch', ['--policy', 'mixed-loss', '--mixed-threshold', '0.9',
                                '--lambda-u', paper_mse_weight(100)], LABELS, '409',
                   'mixed loss: MixMatch + a term over images above 0.9'),
    'fixed-0.9': ('fixed', ['--threshold', '0.9', '--lambda-u', MSE], LABELS, '407', 'fixed threshold 0.9 (MSE)'),
    'fixed-0.8-ce': ('fixed', ['--threshold', '0.8', '--loss', 'ce', '--lambda-u', '1'], LABELS, '430',
                     'fixed threshold 0.8 (CE)'),
    'linear-slow': ('fixed', ['--policy', 'linear', '--threshold', '0.9', '--threshold-end', '0.5', '--lambda-u', MSE],
                    LABELS, '79, 348', 'threshold 0.9 -> 0.5 over 80 of 300 epochs'),
    'consistency': ('fixed', ['--policy', 'consistency', '--threshold', '0.9', '--lambda-u', MSE], LABELS, '100',
                    'threshold 0.9 + Pi-model loss below it'),
    'adaptive-no-floor': ('adaptive', ['--min-th', '0', '--loss', 'mse', '--lambda-u', MSE, '--acc-seed', 'none'],
                          LABELS, '372-374', 'adaptive, no floor (MSE)'),
    'adaptive-val': ('adaptive', ['--min-th', '0.5', '--acc-source', 'val', '--loss', 'mse', '--lambda-u', MSE],
                     LABELS, '406', 'adaptive on val accuracy (MSE)'),
    'adaptive-val-ce': ('adaptive', ['--min-th', '0.5', '--acc-source', 'val', '--loss', 'ce', '--lambda-u', '1'],
                        LABELS, '423', 'adaptive on val accuracy (CE)'),
    'warm-start': ('adaptive', ['--policy', 'warm-start', '--loss', 'mse', '--lambda-u', MSE, '--acc-seed', 'none'],
                   LABELS, '417', 'warm start + ensure ratio (MSE)'),
    'warm-start-seeded': ('adaptive', ['--policy', 'warm-start', '--loss', 'mse', '--lambda-u', MSE], LABELS, '428',
                          'warm start + ensure ratio, last-value seeding'),
    'adaptive-ce-rampup': ('adaptive', CE1, LABELS, '469', 'adaptive CE, lambda_u ramped to 1'),
    'adaptive-mse-1200': ('adaptive', ['--min-th', '0.5', '--loss', 'mse', '--lambda-u', paper_mse_weight(1200)],
                          LABELS, '466', 'adaptive, MSE lambda_u 1200'),
    'flexmatch': ('adaptive', ['--policy', 'flexmatch', '--lambda-u', '1', '--loss', 'ce'], LABELS, '—',
                  'FlexMatch class-wise thresholds (CE)'),
    'freematch': ('adaptive', ['--policy', 'freematch', '--lambda-u', '1', '--loss', 'ce'], LABELS, '—',
                  'FreeMatch self-adaptive thresholds (CE)'),
    # other systems the study tried, with their papers' defaults (etc/fixmatch, etc/meanteacher)
    'fixmatch': ('etc/fixmatch', [], LABELS, '—', 'FixMatch (its paper\'s settings: SGD, cosine, 7 unlabeled per '
                                                  'labeled image, threshold 0.95)'),
    'mean-teacher': ('etc/meanteacher', [], LABELS, '—', 'Mean Teacher (EMA teacher, MSE 100, sigmoid ramp-up)'),
}
UNLABELED_BATCH = {'etc/fixmatch': 448}  # a script's default --unlabeled-batch-size, where not --batch-size
RAMPED = {'adaptive-ce-rampup'}  # besides MixMatch's entries: the original's ramp (469)
# entries whose --schedule-steps is the original's span in epochs of 300: the "slow" threshold of FixMixMatch,
# max(0.9 - (epoch // 5) / 40, 0.5), reaches 0.5 at epoch 80 (left commented in the 401 and 408 code, main.py:528)
SCHEDULE_EPOCHS = {'linear-slow': 80}
# the first release's flags for the entries it had (MSE at the scripts' default lambda_u 75)
V1 = {'labeled-only': ['--labeled-only'], 'mixmatch': [], 'fixed-0.8': ['--threshold', '0.8'],
      'adaptive-mse': ['--min-th', '0.5', '--loss', 'mse'], 'adaptive-ce-1': CE1,
      'adaptive-ce-1.5': ENTRIES['adaptive-ce-1.5'][1], 'adaptive-ce-2': ENTRIES['adaptive-ce-2'][1],
      'labeled-only-few': ['--labeled-only'], 'mixmatch-few': [], 'adaptive-ce-1-few': CE1}
V1_WHAT = {'mixmatch': 'MixMatch (MSE, lambda_u 75)', 'fixed-0.8': 'fixed threshold 0.8 (MSE, lambda_u 75)',
           'adaptive-mse': 'adaptive, min 0.5 (MSE, lambda_u 75)', 'mixmatch-few': 'MixMatch, few labels (lambda_u 75)'}
# table: (title, [(entry, paper top-1 on NAVER fashion or None)])
TABLES = {
    '1': ('Table 1: threshold policy, MSE unlabeled loss',
          [('labeled-only', None), ('mixmatch', 73.89), ('mixmatch-75', None), ('fixed-0.8', 72.84),
           ('adaptive-mse', 73.96)]),
    '2': ('Table 2: adaptive threshold with a cross-entropy unlabeled loss',
          [('labeled-only', None), ('mixmatch', 73.89), ('mixmatch-75', None), ('adaptive-ce-1', 75.06),
           ('adaptive-ce-1.5', 75.14), ('adaptive-ce-2', 74.79)]),
    '3': (f'Table 3: few labels ({FEW_LABELS} on Fashion-MNIST; the paper: 4k of 265 classes)',
          [('labeled-only-few', None), ('mixmatch-few', 59.58), ('adaptive-ce-1-few', 61.15)]),
    'P': ('Every policy the study tried, and FlexMatch and FreeMatch, on the same data, model and budget',
          [('labeled-only', None), ('mixmatch', 73.89), ('supervised', None), ('mixmatch-75', None),
           ('mixed-loss', None), ('fixed-0.8', 72.84), ('fixed-0.9', None), ('fixed-0.8-ce', None),
           ('linear-slow', None), ('consistency', None), ('adaptive-mse', 73.96), ('adaptive-no-floor', None),
           ('adaptive-val', None), ('adaptive-val-ce', None), ('warm-start', None), ('warm-start-seeded', None),
           ('adaptive-ce-1', 75.06), ('adaptive-ce-rampup', None), ('adaptive-mse-1200', None), ('flexmatch', None),
           ('freematch', None)]),
    'S': ('Other semi-supervised systems the study tried, on the same data, model, EMA and evaluation',
          [('labeled-only', None), ('mixmatch', 73.89), ('mixmatch-75', None), ('adaptive-ce-1', 75.06),
           ('fixmatch', None), ('mean-teacher', None)]),
}


class UsageError(Exception):
    pass


def schedule(preset):
    """The schedule flags of a preset: the scripts' own --preset values at a faithful one."""
    p = PRESETS[preset]
    every = p['steps'] // p['evals']
    values = {'eval_every': every, 'acc_window': every, 'rampup_steps': p['steps'] // 4}  # v1: from 0, a quarter
    rampup = ['--rampup-steps', str(values['rampup_steps'])]
    if faithful(preset):  # lambda_u * min(1, (1 + s/E) / 20), E = steps / 300: from 1/20, full at 19 E
        values = script_flags.preset_flags(p.get('base', preset), ramp='original')
        if p['setup'] == 'v2':
            values['acc_window'] = every
        rampup = ['--rampup-steps', str(values['rampup_steps']), '--rampup-start', f'{values["rampup_start"]:g}']
    return {'steps': p['steps'], 'eval_every': values['eval_every'], 'acc_window': values['acc_window'],
            'rampup': rampup, 'n_val': p['n_val'], 'evals': p['evals'], 'setup': p['setup'],
            'test_when': ['--test-when', values['test_when']] if 'test_when' in values else []}


def faithful(preset):
    """A preset whose commands are the scripts' --preset (v2: with the window it had before)."""
    return PRESETS[preset]['setup'] in ('faithful', 'v2')


def in_setup(entry, preset):
    return faithful(preset) or entry in V1


def entry_flags(entry, preset):
    """The entry's method flags in the preset's setup (without schedule, seed and run flags)."""
    script, flags, _, _, _ = ENTRIES[entry]
    if faithful(preset):
        return list(flags)
    extra = ['--train-acc', 'mixed'] if script == 'adaptive' and '--labeled-only' not in flags else []
    return V1[entry] + extra + ['--acc-seed', 'window']


def describe(entry, preset):
    return (V1_WHAT.get(entry) if PRESETS[preset]['setup'] == 'v1' else None) or ENTRIES[entry][4]


def command(entry, seed, preset, device, runs_dir, amp='auto'):
    """The exact training command of one table entry and seed (list of arguments, without the interpreter)."""
    script, flags, labels, _, _ = ENTRIES[entry]
    s = schedule(preset)
    cmd = [f'{script}/train.py', *entry_flags(entry, preset), '--n-labeled', str(labels), '--n-val', str(s['n_val']),
           '--steps', str(s['steps']), '--eval-every', str(s['eval_every']), '--acc-window', str(s['acc_window']),
           *s['test_when']]
    if entry in SCHEDULE_EPOCHS:
        cmd += ['--schedule-steps', str(round(SCHEDULE_EPOCHS[entry] * s['steps'] / ORIGINAL_EPOCHS))]
    if (script == 'mixmatch' and '--labeled-only' not in flags) or entry in RAMPED:
        cmd += s['rampup']
    elif script == 'etc/meanteacher':  # the same length of ramp; its shape is Mean Teacher's sigmoid
        cmd += s['rampup'][:2]
    cmd += ['--seed', str(seed), '--split-seed', str(seed), '--device', device, *(['--amp', amp] if amp != 'auto' else []),
            '--out', run_dir(runs_dir, preset, entry, seed), '--resume', 'auto']
    return cmd


def run_dir(runs_dir, preset, entry, seed):
    return os.path.join(runs_dir, preset, entry, f's{seed}')


def method_command(entry, preset):
    """The entry's command as the tables write it, what seed 0 ran (seed i adds --seed i --split-seed i): at a
    faithful preset with the scripts' --preset for the schedule flags it sets; at the v1 presets, which the
    scripts have no --preset for, with the schedule flags themselves."""
    script, flags, labels, _, _ = ENTRIES[entry]
    cmd = ['python', f'{script}/train.py', *entry_flags(entry, preset), '--n-labeled', str(labels)]
    if not faithful(preset):
        ran = command(entry, 0, preset, 'auto', 'runs')
        per_run = {i for i, a in enumerate(ran) if a in ('--seed', '--split-seed', '--device', '--out', '--resume')}
        return ' '.join(['python'] + [a for i, a in enumerate(ran) if i not in per_run and i - 1 not in per_run])
    s = schedule(preset)
    if entry in SCHEDULE_EPOCHS:
        cmd += ['--schedule-steps', str(round(SCHEDULE_EPOCHS[entry] * s['steps'] / ORIGINAL_EPOCHS))]
    if entry in RAMPED:  # a ramp the script's preset does not set (the adaptive family has none)
        cmd += s['rampup']
    p = PRESETS[preset]
    window = ['--acc-window', str(s['acc_window'])] if p['setup'] == 'v2' else []
    return ' '.join(cmd + ['--preset', p.get('base', preset)] + window)


# ---------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------
def read_log(path):
    """The records of a log.jsonl; a line cut short by a kill is skipped."""
    records = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
    return records


def run_state(out):
    """What reproduce.py recorded of a run (command, accumulated wall time, done), {} if nothing yet."""
    path = os.path.join(out, 'reproduce.json')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_state(out, info):
    """reproduce.json, replaced atomically (a kill leaves the old file)."""
    path = os.path.join(out, 'reproduce.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(info, f, indent=1)
    os.replace(path + '.tmp', path)


def what_runs(cmd):
    """A command line without its --device, --amp and --out values: the same run wherever it ran and wherever it
    wrote (the precision each run had is in its log, and one call keeps a table at one precision: check_precision;
    a run of another --runs-dir, archived, is the same run)."""
    return re.sub(r' --(device|amp|out) \S+', '', cmd)


def is_done(out, cmd):
    """The run finished, with the command the tables ask for now (not an older preset's or entry's flags)."""
    info = run_state(out)
    return bool(info.get('done')) and what_runs(info.get('command', '')) == what_runs('python ' + ' '.join(cmd))


def kept_time(out, since):
    """Seconds from `since` to the run's last checkpoint: the work a resumed run keeps."""
    ckpt = os.path.join(out, 'checkpoint.pt')
    return max(os.path.getmtime(ckpt) - since, 0.0) if os.path.exists(ckpt) else 0.0


def launch(entry, seed, args, threads):
    out = run_dir(args.runs_dir, args.preset, entry, seed)
    cmd = command(entry, seed, args.preset, args.device, args.runs_dir, args.amp)
    os.makedirs(out, exist_ok=True)
    info = run_state(out)
    if 'segment_start' in info:  # a call that was killed: count the time up to the checkpoint it resumes from
        info['wall_s'] = info.get('wall_s', 0.0) + kept_time(out, info['segment_start'])
    info['segment_start'] = time.time()
    write_state(out, info)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    log = open(os.path.join(out, 'train.log'), 'a')
    log.write(f'# {time.strftime("%Y-%m-%d %H:%M:%S")}: {" ".join(map(shlex.quote, cmd))}\n')
    log.flush()
    proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return {'entry': entry, 'seed': seed, 'out': out, 'cmd': cmd, 'proc': proc, 'log': log,
            't0': time.time(), 'threads': threads, 'device': train_device(args.device)}


def finish(job):
    rc = job['proc'].wait()
    job['log'].close()
    info = run_state(job['out'])
    records = read_log(os.path.join(job['out'], 'log.jsonl'))
    steps = int(job['cmd'][job['cmd'].index('--steps') + 1])
    done = rc == 0 and bool(records) and records[-1]['step'] == steps
    info.pop('segment_start', None)
    spent = time.time() - job['t0'] if done else kept_time(job['out'], job['t0'])  # a failed run redoes the rest
    info.update({'entry': job['entry'], 'seed': job['seed'], 'command': 'python ' + ' '.join(job['cmd']),
                 'wall_s': info.get('wall_s', 0.0) + spent, 'threads': job['threads'],
                 'done': done, 'returncode': rc, 'steps': steps, 'hardware': hardware(job['device'])})
    write_state(job['out'], info)
    return done


def threads_for(cores, jobs, left):
    """CPU threads for a run that starts while `left` runs (itself included) are running or waiting: cores/jobs,
    but the last runs share the cores that the finished ones leave (the last lone run gets all of them)."""
    return max(1, cores // max(1, min(jobs, left)))


def run_all(todo, args):
    """Run (entry, seed) pairs, --jobs at a time; returns the pairs that failed."""
    jobs = args.jobs
    pending, running, failed = list(todo), [], []

    def stop(signum, frame):  # SIGTERM/Ctrl-C: the runs save a checkpoint and exit; a later call resumes them
        for job in running:
            job['proc'].send_signal(signal.SIGTERM)
        for job in running:
            finish(job)
        print(f'stopped by signal {signum}; {len(running)} run(s) saved a checkpoint; run the same command to '
              'continue', file=sys.stderr, flush=True)
        sys.exit(1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while pending or running:
        while pending and len(running) < jobs:
            entry, seed = pending.pop(0)
            threads = (threads_for(os.cpu_count() or 1, jobs, len(running) + 1 + len(pending))
                       if args.device != 'cuda' else None)
            job = launch(entry, seed, args, threads)
            print(f'[{time.strftime("%H:%M:%S")}] start {entry} seed {seed}'
                  f'{f" ({threads} CPU threads)" if threads else ""}: python {" ".join(job["cmd"])}',
                  flush=True)
            running.append(job)
        time.sleep(2)
        for job in [j for j in running if j['proc'].poll() is not None]:
            running.remove(job)
            ok = finish(job)
            print(f'[{time.strftime("%H:%M:%S")}] {"done" if ok else "FAILED"} {job["entry"]} seed {job["seed"]} '
                  f'(exit {job["proc"].returncode}; log {job["out"]}/train.log)', flush=True)
            if not ok:
                failed.append((job['entry'], job['seed']))
    return failed


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------
def summarize(out, cmd=None):
    """The numbers of one finished run, from its log.jsonl and reproduce.json; None if it has not finished
    (or, given the command the tables ask for, if it ran another one)."""
    info = run_state(out)
    records = read_log(os.path.join(out, 'log.jsonl'))
    if not info.get('done') or not records or (cmd is not None and not is_done(out, cmd)):
        return None
    best = None
    for r in records:  # the training script's rule: the first evaluation with the highest val top-1
        if best is None or r['val_top1'] is None or r['val_top1'] > best['val_top1']:
            best = r
    last = [r for r in records if r['test_top1'] is not None][-20:]
    end = records[-1]
    return {'best_top1': best['test_top1'], 'best_top5': best['test_top5'], 'best_step': best['step'],
            'median_top1': statistics.median(r['test_top1'] for r in last),
            'median_top5': statistics.median(r['test_top5'] for r in last), 'median_n': len(last),
            'tested_every': all(r['test_top1'] is not None for r in records),
            'ms_per_step': statistics.median(ms) if (ms := [r['ms_per_step'] for r in records
                                                            if r.get('ms_per_step') is not None]) else None,
            'guessed': guessed_per_step(records, info['command']),
            'images': (batch_sizes(info['command'])[0] if '--labeled-only' in info['command'].split()
                       else sum(batch_sizes(info['command']))),
            'mask_ratio': end.get('mask_ratio'), 'pl_acc': end.get('pseudo_label_acc'), 'steps': end['step'],
            'wall_s': info['wall_s'], 'hardware': info.get('hardware', '?'), 'device': end.get('device'),
            'amp': end.get('amp'), 'git': end.get('git_sha'), 'command': info['command']}


def guessed_per_step(records, cmd):
    """Unlabeled images guessed per step: what the policy logged (ensure-ratio draws more), else the unlabeled
    batch of the command (none for labeled-only)."""
    logged = [r['policy_guessed'] for r in records if r.get('policy_guessed') is not None]
    if logged:
        return statistics.mean(logged)
    if '--labeled-only' in cmd.split():
        return 0
    return batch_sizes(cmd)[1]


def batch_sizes(cmd):
    """(labeled, unlabeled) images drawn per step by a command, with its script's defaults."""
    script = os.path.dirname(cmd.split()[1])
    labeled = int(m.group(1)) if (m := re.search(r'--batch-size (\d+)', cmd)) else 64
    m = re.search(r'--unlabeled-batch-size (\d+)', cmd)
    return labeled, int(m.group(1)) if m else UNLABELED_BATCH.get(script, labeled)


P_NOTE = (' Unlabeled guessed / step: K augmentations of each are labeled by the model; ensure-ratio draws and '
          'guesses further batches. ms / step: median over evaluation windows of the training step alone (the '
          'accuracy policies add a forward pass of the clean labeled batch), as the run measured it: runs that '
          'shared the machine with other work were slowed by it, unequally, so this column does not rank the '
          'policies\' cost; etc/speed.md times their steps alone.')

ONE_SEED = 'one seed: not evidence'  # beside n wherever a mean has a single run behind it
FMNIST_TRAIN, BATCH = 60000, 64  # the tables' data and batch size: how often a preset sees the unlabeled set


def epochs_note(preset):
    """How many times the preset's steps see Fashion-MNIST's unlabeled images (LABELS labeled), and what that means
    for a table that compares policies."""
    s = schedule(preset)
    passes = s['steps'] * BATCH / (FMNIST_TRAIN - s['n_val'] - LABELS)
    if passes < 2:
        return (f' At {s["steps"]:,} steps the unlabeled set is seen about once: the table ranks early progress, '
                'not where the policies end.')
    return f' At {s["steps"]:,} steps the unlabeled set is seen about {passes:.0f} times.'

S_NOTE = (' Images / step: labeled and unlabeled images drawn per step (labeled-only: the labeled ones alone); '
          'FixMatch forwards each unlabeled image twice (weak, strong) with gradient, MixMatch K = 2 times without '
          'and K times mixed with. ms / step: median over evaluation windows of the training step alone. Each '
          'system keeps its paper\'s own settings (FixMatch: SGD, cosine decay; the others: AdamW), so a row '
          'compares systems, not one changed part.')


def mean_std(values, digits=2, signed=False):
    """Mean ± sample standard deviation (n - 1); signed: differences carry their sign (+0.07, −1.46)."""
    values = [v for v in values if v is not None]
    if not values:
        return '—'
    if len(values) == 1:
        return signed_number(values[0], digits) if signed else f'{values[0]:.{digits}f}'
    mean = signed_number(statistics.mean(values), digits) if signed else f'{statistics.mean(values):.{digits}f}'
    return f'{mean} ± {statistics.stdev(values):.{digits}f}'


def signed_number(x, digits=2):
    """+0.07 or −1.46, with the typographic minus sign (U+2212) that the README's tables use."""
    return f'{x:+.{digits}f}'.replace('-', '\u2212')


def hardware(device='cpu'):
    """This machine in words: CPU model and cores, and the GPU the runs train on where device is 'cuda'."""
    model = ''
    if os.path.exists('/proc/cpuinfo'):
        m = re.search(r'model name\s*:\s*(.*)', open('/proc/cpuinfo').read())
        model = m.group(1).strip() if m else ''
    cpu = f'{model or "unknown CPU"}, {os.cpu_count()} cores'
    if device != 'cuda':
        return cpu
    import torch
    return f'{torch.cuda.get_device_name()} ({cpu})'


def train_device(device):
    """Where the training scripts run for --device: cuda or cpu (auto: cuda where there is one)."""
    if device != 'auto':
        return device
    import torch
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def table_path(args, table):
    """One file per preset and table: a medium or full run never overwrites the quick tables."""
    return os.path.join(args.results_dir, args.preset, f'table{table}.md')


def table_rows(table, preset):
    """(title, [(entry, paper top-1)]) of a table, with the entries the preset's setup has."""
    title, rows = TABLES[table]
    return title, [(e, p) for e, p in rows if in_setup(e, preset)]


def table_columns(table, seeds, results, rows):
    """(header, cell(finished runs of an entry)) of a table's columns after entry, session, paper and n. The
    median of the last evaluations only where every run measured the test set at every evaluation; the
    policy table adds the cost of a step."""
    done = [results[(e, s)] for e, _ in rows for s in seeds if results.get((e, s))]
    cols = [('test top-1 @ best val', lambda d: mean_std([r['best_top1'] for r in d])),
            ('top-5 @ best val', lambda d: mean_std([r['best_top5'] for r in d]))]
    if done and all(r['tested_every'] for r in done):
        cols += [('test top-1, median of last evals', lambda d: f'{mean_std([r["median_top1"] for r in d])} '
                                                                f'(last {min(r["median_n"] for r in d)})'),
                 ('top-5, median', lambda d: mean_std([r['median_top5'] for r in d]))]
    cols += [('mask ratio (end)', lambda d: mean_std([r['mask_ratio'] for r in d], 3)),
             ('pseudo-label acc (end)', lambda d: mean_std([r['pl_acc'] for r in d], 1))]
    if table == 'P':
        cols += [('unlabeled guessed / step', lambda d: mean_std([r['guessed'] for r in d], 0)),
                 ('ms / step', lambda d: mean_std([r['ms_per_step'] for r in d], 0))]
    if table == 'S':
        cols += [('images / step (labeled + unlabeled)', lambda d: str(d[0]['images'])),
                 ('ms / step', lambda d: mean_std([r['ms_per_step'] for r in d], 0))]
    cols += [('steps', lambda d: str(d[0]['steps'])),
             ('wall / run', lambda d: f'{mean_std([r["wall_s"] / 60 for r in d], 0)} min')]
    return [('entry', None), ('session', None), ('paper top-1 (NAVER)', None), ('n', None)] + cols


def write_table(table, seeds, args, results):
    title, rows = table_rows(table, args.preset)
    s = schedule(args.preset)
    columns = table_columns(table, seeds, results, rows)
    lines = [f'# {title}', '',
             f'Preset `{args.preset}`: {s["steps"]} steps, an evaluation every {s["eval_every"]} steps '
             f'({s["evals"]} in all), `--acc-window {s["acc_window"]}`, MixMatch `{" ".join(s["rampup"])}`, '
             f'`--n-val {s["n_val"]}`; seeds {", ".join(map(str, seeds))} (asked, or run by an earlier call; '
             '`--seed i --split-seed i`), n per row finished. Fashion-MNIST, WRN-28-2, test set of 10,000 images, '
             'fp32 evaluation of the EMA weights. '
             'Mean ± sample standard deviation (n − 1) over seeds. Median (only where the test set was measured at '
             'every evaluation, `--test-when every-eval`): over the last 20 evaluations, or all of them when the '
             'preset has fewer.' + {'P': P_NOTE + epochs_note(args.preset), 'S': S_NOTE}.get(table, ''), '',
             f'Collected by `python etc/reproduce.py --table {table} --seeds {len(seeds)}'
             f'{"" if seeds[0] == 0 else f" --first-seed {seeds[0]}"} --preset {args.preset} --report` from the '
             f'runs that finished, here or archived in etc/results/logs/{args.preset} (runs of several calls '
             'or machines add up); the exact command of every run is below.', '',
             '| ' + ' | '.join(h for h, _ in columns) + ' |', '|' + '---|' * len(columns)]
    figure = os.path.join(args.results_dir, 'figures', f'{args.preset}-policies.png')
    if table == 'P' and os.path.exists(figure):  # drawn from the archived logs by etc/plot.py
        lines[-2:-2] = [f'![Mask ratio and pseudo-label accuracy over steps, every policy with logs '
                        f'({args.preset} preset)](../figures/{args.preset}-policies.png)', '',
                        f'The figure: `python etc/plot.py --preset {args.preset}` (mean over the seeds each policy '
                        'has; the table below gives n).', '']
    devices, walls = set(), []
    for entry, paper in rows:
        rs = [results.get((entry, seed)) for seed in seeds]
        done = [r for r in rs if r]
        session, what = ENTRIES[entry][3], describe(entry, args.preset)
        n = f'{len(done)}{f" ({ONE_SEED})" if len(done) == 1 else ""}'
        head = [f'{entry}: {what}', session, str(paper or '—'), n]
        if not done:
            lines.append('| ' + ' | '.join(head + ['not run'] + [''] * (len(columns) - 5)) + ' |')
            continue
        devices |= {f'{r["hardware"]}: {r["device"]}, amp {r["amp"]}' for r in done}
        walls += [r['wall_s'] for r in done]
        lines.append('| ' + ' | '.join(head + [cell(done) for _, cell in columns[4:]]) + ' |')
    lines += ['', '**Paired differences** (same seed, same labeled images and initialization), test top-1 at the '
              'best-val checkpoint: mean ± sample std over seeds, 95% intervals (Student\'s t; a percentile bootstrap '
              f'over seeds, {BOOTSTRAP_RESAMPLES:,} resamples, scipy.stats), and the seeds on which the row leads:', '',
              '| entry | − labeled-only | − MixMatch |' + (' − MixMatch λu 75 |' if M75 in dict(rows) else ''),
              '|---|---|---|' + ('---|' if M75 in dict(rows) else '')]
    bases = [rows[0][0], rows[1][0]] + ([M75] if M75 in dict(rows) else [])
    for entry, _ in rows[1:]:
        cells = []
        for base in bases:
            if entry == base:
                cells.append('')
                continue
            d = paired(results, entry, base, seeds)
            per_seed = f'; per seed {", ".join(signed_number(x) for x in d)}' if len(d) > 1 else ''
            if not d:
                cells.append('—')
                continue
            st = paired_stats(d)
            intervals = f'; t {interval(st["t"])}, bootstrap {interval(st["bootstrap"])}' if st['t'] else ''
            cells.append(f'{mean_std(d, signed=True)}{intervals} ({st["ahead"]}/{st["n"]} ahead{per_seed})')
        lines.append(f'| {entry} | ' + ' | '.join(cells) + ' |')
    if len(seeds) > 1:  # the numbers the differences come from
        lines += ['', 'Test top-1 at the best-val checkpoint, per seed:', '',
                  '| seed | ' + ' | '.join(e for e, _ in rows) + ' |', '|---|' + '---|' * len(rows)]
        for seed in seeds:
            cells = [f'{results[(e, seed)]["best_top1"]:.2f}' if results.get((e, seed)) else '—' for e, _ in rows]
            lines.append(f'| {seed} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'Hardware: {"; ".join(sorted(devices)) or "—"}. Run time of all runs of this table: '
              f'{sum(walls) / 3600:.2f} h (runs sharing the machine overlap in wall-clock time).', '',
              'Commands:', '']
    for entry, _ in rows:
        for seed in seeds:
            r = results.get((entry, seed))
            if r:
                lines.append(f'    {r["command"]}')
    path = table_path(args, table)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def paired(results, entry, base, seeds):
    """Per-seed differences of test top-1 at the best-val checkpoint, entry minus base."""
    return [results[(entry, s)]['best_top1'] - results[(base, s)]['best_top1'] for s in seeds
            if results.get((entry, s)) and results.get((base, s))]


def preset_summary(args, seeds, results):
    """etc/results/<preset>/README.md: a table per paper table, each entry with its command, top-1/top-5, the
    paired differences and the released checkpoint."""
    released = released_checkpoints()
    s = schedule(args.preset)
    flags = (f'--n-val {s["n_val"]} --steps {s["steps"]} --eval-every {s["eval_every"]} --acc-window '
             f'{s["acc_window"]} --seed i --split-seed i')
    lines = [f'# Preset `{args.preset}`: {s["steps"]} steps', '',
             f'Written by `python etc/reproduce.py --preset {args.preset} --seeds {len(seeds)} --report` from the '
             f'finished runs. {"Seed " + str(seeds[0]) if len(seeds) == 1 else f"Seeds {seeds[0]}–{seeds[-1]}"}'
             f' where run (n per row), on {"; ".join(sorted({r["hardware"] for r in results.values()})) or "—"}. '
             + 'Every command below is seed 0\'s; seed i adds `--seed i --split-seed i`. '
             + (f'`--preset {args.preset}` sets `{flags.replace(" --seed i --split-seed i", "")}` (MixMatch rows: '
                f'`{" ".join(s["rampup"])}`). ' if s['setup'] == 'faithful' else '')
             + (f'`--preset {PRESETS[args.preset].get("base")} --acc-window {s["acc_window"]}` sets `'
                f'{flags.replace(" --seed i --split-seed i", "")}` (MixMatch rows: `{" ".join(s["rampup"])}`): the '
                f'`{PRESETS[args.preset].get("base")}` preset with the window it had before, steps / evaluations. '
                if s['setup'] == 'v2' else '')
             + 'Top-1/top-5: test set, EMA weights '
             'at the best-val evaluation, mean ± sample std (n − 1) over seeds. Δ: paired per-seed difference in '
             'top-1 (row minus column): its mean, 95% intervals (Student\'s t, then a percentile bootstrap over seeds, '
             f'{BOOTSTRAP_RESAMPLES:,} resamples, scipy.stats) and the seeds on which the row leads. Checkpoint: '
             'seed 0\'s, with the numbers its file gives in '
             '[pretrained/README.md](../../../pretrained/README.md).', '']
    for t in TABLES:
        title, rows = table_rows(t, args.preset)
        if not any(results.get((e, sd)) for e, _ in rows for sd in seeds):
            continue  # a table with no finished run of this preset
        lines += [f'**{title}** ([per run](table{t}.md))', '']
        if any(results.get((e, sd)) for e, _ in rows for sd in seeds):
            lines += ['| entry | session | paper top-1 (NAVER) | our command | our top-1 / top-5 (n) | '
                      'Δ vs labeled-only | Δ vs MixMatch |' + (' Δ vs MixMatch λu 75 |' if M75 in dict(rows) else '')
                      + ' checkpoint | sha256 |', '|---|---|---|---|---|---|---|' + ('---|' if M75 in dict(rows) else '')
                      + '---|---|']
        bases = [rows[0][0], rows[1][0]] + ([M75] if M75 in dict(rows) else [])
        missing = []
        for entry, paper in rows:
            done = [results[(entry, sd)] for sd in seeds if results.get((entry, sd))]
            session, what = ENTRIES[entry][3], describe(entry, args.preset)
            if not done:
                missing.append(entry)
                continue
            score = (f'{mean_std([r["best_top1"] for r in done])} / {mean_std([r["best_top5"] for r in done])} '
                     f'({len(done)}{f"; {ONE_SEED}" if len(done) == 1 else ""})')
            deltas = [delta(results, entry, base, seeds, bootstrap=True) for base in bases]
            ck = released.get((entry, args.preset))
            checkpoint = (f'[{ck["file"]}](../../../pretrained/{ck["file"]}) | `{ck["sha256"][:16]}…`' if ck
                          else '— | —')
            lines.append(f'| {what} | {session} | {paper or "—"} | `{method_command(entry, args.preset)}` | {score} | '
                         + ' | '.join(deltas) + f' | {checkpoint} |')
        lines += ['', f'Not run at this preset: {", ".join(missing)}.', ''] if missing else ['']
    lines += window_effect(args, seeds, results)
    return '\n'.join(lines).rstrip() + '\n'


def window_effect(args, seeds, results):
    """Lines of the summary of a faithful preset with a v2 twin: each entry finished at both on the same seeds,
    this preset (the original's train-accuracy window) against the twin (the window before), paired by seed:
    the window's own effect. The entries whose policy does not read the train accuracy must give 0.00."""
    twin = next((p for p, v in PRESETS.items() if v.get('base') == args.preset), None)
    if PRESETS[args.preset]['setup'] != 'faithful' or not twin:
        return []
    a = argparse.Namespace(**{**vars(args), 'preset': twin})
    old = {(e, sd): r for e in ENTRIES for sd in seeds if in_setup(e, twin) and results.get((e, sd))
           and (out := finished_dir(a, e, sd)) and (r := summarize(out))}
    entries = [e for e in ENTRIES if any(old.get((e, sd)) for sd in seeds)]
    if not entries:
        return []
    lines = [f'**The train-accuracy window\'s own effect**: this preset (`--acc-window '
             f'{schedule(args.preset)["acc_window"]}`, the original\'s epoch) against `{twin}` (`--acc-window '
             f'{schedule(twin)["acc_window"]}`, the window before), the same seeds and otherwise the same flags. Δ '
             'window: here minus there, per seed; it is 0.00 where the policy does not read the train accuracy.', '',
             '| entry | top-1 here (n) | top-1 at ' + twin + ' | Δ window | Δ vs MixMatch here | Δ vs MixMatch at '
             + twin + ' |', '|---|---|---|---|---|---|']
    for e in entries:
        pairs = [sd for sd in seeds if old.get((e, sd))]
        base = 'mixmatch' if ENTRIES[e][2] == LABELS else 'mixmatch-few'
        lines.append(f'| {e} | {mean_std([results[(e, sd)]["best_top1"] for sd in pairs])} ({len(pairs)}) | '
                     f'{mean_std([old[(e, sd)]["best_top1"] for sd in pairs])} | '
                     f'{paired_text([results[(e, sd)]["best_top1"] - old[(e, sd)]["best_top1"] for sd in pairs])} | '
                     f'{delta(results, e, base, pairs)} | {delta(old, e, base, pairs)} |')
    return lines + ['']


def released_checkpoints():
    """(entry, preset) -> its manifest row in pretrained/manifest.json."""
    manifest = os.path.join(REPO, 'pretrained', 'manifest.json')
    if not os.path.exists(manifest):
        return {}
    with open(manifest) as f:
        return {(r['entry'], r['preset']): r for r in json.load(f)['checkpoints']}


BOOTSTRAP_RESAMPLES = 10000


def paired_stats(d):
    """The mean of paired differences, its 95% intervals (Student's t; a percentile bootstrap of the mean over
    seeds, 10,000 resamples, seeded: scipy.stats), and on how many seeds the row leads (difference > 0). The
    intervals are None below two seeds."""
    import numpy as np
    from scipy import stats
    d = np.asarray(d, dtype=float)
    out = {'mean': float(d.mean()), 'n': len(d), 'ahead': int((d > 0).sum()), 't': None, 'bootstrap': None}
    if len(d) >= 2:
        half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
        out['t'] = (out['mean'] - half, out['mean'] + half)
        if d.std() == 0:  # every seed the same: the resampled means are too
            out['bootstrap'] = (out['mean'], out['mean'])
        else:
            ci = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=BOOTSTRAP_RESAMPLES,
                                 method='percentile', rng=np.random.default_rng(0)).confidence_interval
            out['bootstrap'] = (float(ci.low), float(ci.high))
    return out


def interval(bounds):
    return f'[{signed_number(bounds[0])}, {signed_number(bounds[1])}]'


def delta(results, entry, base, seeds, bootstrap=False):
    """The paired differences: mean, 95% interval (t; and the bootstrap's), seeds ahead of n; empty for the base
    itself or without pairs."""
    return paired_text(paired(results, entry, base, seeds) if entry != base else [], bootstrap)


def paired_text(d, bootstrap=False):
    """Per-seed differences as the tables write them: mean [t interval] (seeds ahead / n); empty without any."""
    if not d:
        return ''
    st = paired_stats(d)
    if st['t'] is None:
        return f'{signed_number(st["mean"])} ({st["ahead"]}/{st["n"]} ahead)'
    boot = f', bootstrap {interval(st["bootstrap"])}' if bootstrap else ''
    return f'{signed_number(st["mean"])} {interval(st["t"])}{boot} ({st["ahead"]}/{st["n"]} ahead)'


def readme_block(args, seeds):
    """The README's one results table: every entry of the paper's tables at each length, at the faithful preset
    with the most finished seeds of it (the length's own, or its v2 with the window before; a tie: its own); an
    entry that none has is shown at the first preset that has (its row says which), or as not run, so that no
    entry of the paper's tables is missing. The policy table and the presets not shown are linked below it."""
    released = released_checkpoints()
    lines = ['<!-- results: begin (written by `python etc/reproduce.py --seeds 3 --report --readme`; edit the '
             'script, not this block) -->',
             '| paper entry | session | paper top-1 | our command | ours: test top-1 (n, preset) | Δ vs MixMatch | '
             'Δ vs MixMatch λu 75 | Δ vs labeled-only | checkpoint |', '|---|---|---|---|---|---|---|---|---|']
    paper_tables = {t: v for t, v in TABLES.items() if t.isdigit()}
    entries = list(dict.fromkeys(e for t in paper_tables.values() for e, _ in t[1]))
    papers = {e: p for t in paper_tables.values() for e, p in t[1]}
    tables = {e: ', '.join(f'T{t}' for t, (_, rows) in paper_tables.items() if e in dict(rows)) for e in entries}
    found = {}
    for preset in PRESETS:
        a = argparse.Namespace(**{**vars(args), 'preset': preset})
        found[preset] = {(e, sd): summarize(out) for e in entries for sd in seeds
                         if in_setup(e, preset) and (out := finished_dir(a, e, sd))}
    lengths = {}  # each length's faithful presets with runs: its own first, then its v2 (the window before)
    for p in sorted((p for p in PRESETS if faithful(p) and found[p]), key=lambda p: PRESETS[p]['setup'] != 'faithful'):
        lengths.setdefault(PRESETS[p].get('base', p), []).append(p)
    per_preset = {p: found[p] for ps in lengths.values() for p in ps} or {p: found[p] for p in PRESETS if found[p]}
    hidden = [p for p in PRESETS if found[p] and p not in per_preset]
    for entry in entries:
        _, _, labels, session, _ = ENTRIES[entry]
        base_lo, base_mm = ('labeled-only', 'mixmatch') if labels == LABELS else ('labeled-only-few', 'mixmatch-few')
        shown = {}
        for ps in (lengths.values() if lengths else [[p] for p in per_preset]):
            n = {p: sum(1 for sd in seeds if found[p].get((entry, sd))) for p in ps}
            best = max(ps, key=n.get)  # the most seeds; on a tie the faithful preset
            if n[best]:
                shown[best] = found[best]
        if not shown:  # at the first preset that has it, else as not run
            shown = {p: found[p] for p in PRESETS if any(found[p].get((entry, sd)) for sd in seeds)}
            shown = dict(list(shown.items())[:1])
        if not shown:
            lines.append(f'| {tables[entry]}: {ENTRIES[entry][4]} | {session} | {papers[entry] or "—"} | — | not run '
                         '|  |  |  | — |')
        for preset, results in shown.items():
            done = [results[(entry, sd)] for sd in seeds if results.get((entry, sd))]
            ck = released.get((entry, preset))
            checkpoint = f'[{ck["file"][:-3]}](pretrained/{ck["file"]})' if ck else '—'
            lines.append(f'| {tables[entry]}: {describe(entry, preset)} | {session} | {papers[entry] or "—"} | '
                         f'`{method_command(entry, preset)}` | **{mean_std([r["best_top1"] for r in done])}** '
                         f'({len(done)}, {preset}{f"; {ONE_SEED}" if len(done) == 1 else ""}) | {delta(results, entry, base_mm, seeds)} | '
                         f'{delta(results, entry, M75, seeds) if labels == LABELS else ""} | '
                         f'{delta(results, entry, base_lo, seeds)} | {checkpoint} |')
    links = [f'[{p}](etc/results/{p}/README.md)' for p in hidden]

    def beyond_the_paper(preset, table):  # finished runs of the table's own entries (not only the headline's)
        a = argparse.Namespace(**{**vars(args), 'preset': preset})
        return any(finished_dir(a, e, sd) for e, _ in TABLES[table][1] if e not in entries and in_setup(e, preset)
                   for sd in seeds)
    links += [f'[{name}, {p}](etc/results/{p}/table{t}.md)' for t, name in (('P', 'policy table'),
                                                                           ('S', 'other systems'))
              for p in per_preset if beyond_the_paper(p, t)]
    if links:
        lines += ['', 'Also measured: ' + ', '.join(links) + '.']
    lines.append('<!-- results: end -->')
    return '\n'.join(lines)


def write_readme(args, seeds, path=os.path.join(REPO, 'README.md')):
    with open(path) as f:
        text = f.read()
    m = re.search(r'<!-- results: begin.*?<!-- results: end -->', text, re.S)
    if not m:
        raise UsageError(f'{path} has no "<!-- results: begin" ... "<!-- results: end -->" block to fill')
    with open(path, 'w') as f:
        f.write(text[:m.start()] + readme_block(args, seeds) + text[m.end():])
    return path


def archive_dir(args, entry, seed):
    """Where a finished run's log.jsonl and reproduce.json are kept (committed): the tables and plots read them,
    so runs finished on other machines or in earlier calls count without their checkpoints."""
    return run_dir(os.path.join(args.results_dir, 'logs'), args.preset, entry, seed)


def archive(pairs, args):
    for entry, seed in pairs:
        src, dst = run_dir(args.runs_dir, args.preset, entry, seed), archive_dir(args, entry, seed)
        os.makedirs(dst, exist_ok=True)
        for name in ('log.jsonl', 'reproduce.json'):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def finished_dir(args, entry, seed):
    """The run directory if the run finished there, else its archived copy if that finished, else None."""
    cmd = command(entry, seed, args.preset, args.device, args.runs_dir)
    for out in (run_dir(args.runs_dir, args.preset, entry, seed), archive_dir(args, entry, seed)):
        if is_done(out, cmd):
            return out
    return None


def seeds_found(args):
    """The seeds of this preset's runs under --runs-dir or archived, finished or not (the tables count the
    finished ones)."""
    import glob
    found = set()
    for root in (args.runs_dir, os.path.join(args.results_dir, 'logs')):
        for path in glob.glob(os.path.join(root, args.preset, '*', 's*', 'reproduce.json')):
            m = re.fullmatch(r's(\d+)', os.path.basename(os.path.dirname(path)))
            if m:
                found.add(int(m.group(1)))
    return found


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--table', default='all', choices=(*TABLES, 'all'),
                   help='which paper table (1-3), the policy table (P), or all of them')
    p.add_argument('--seeds', type=int, default=1, help='number of seeds: first-seed .. first-seed + N - 1')
    p.add_argument('--first-seed', type=int, default=0, help='the first seed (to add seeds to an earlier call)')
    p.add_argument('--preset', default='quick', choices=sorted(PRESETS),
                   help=', '.join(f'{k}: {v["steps"]} steps, {v["evals"]} evaluations' for k, v in PRESETS.items()))
    p.add_argument('--entries', default=None,
                   help=f'comma-separated subset of the tables\' entries to run ({", ".join(ENTRIES)})')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='passed to the training scripts')
    p.add_argument('--amp', default='auto', choices=('auto', 'bf16', 'fp16', 'off'),
                   help='passed to the training scripts; auto: what they decide here (one precision per table)')
    p.add_argument('--jobs', type=int, default=1,
                   help='runs at a time; on the CPU each gets cores/jobs threads, and the last runs share the cores '
                        'the finished ones leave (2 on a 2-core CPU: ~8%% more throughput than 1, with each run half '
                        'as fast)')
    p.add_argument('--runs-dir', default=os.path.join('runs', 'reproduce'),
                   help='where the runs go (relative paths: to the repository)')
    p.add_argument('--results-dir', default=os.path.join('etc', 'results'),
                   help='where the tables and copied logs go (relative paths: to the repository)')
    p.add_argument('--report', action='store_true', help='only write the tables from the runs that finished')
    p.add_argument('--readme', action='store_true',
                   help='also fill README.md\'s results table from the finished runs of every preset')
    p.add_argument('--dry-run', action='store_true', help='print the commands and exit')
    args = p.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1 or args.first_seed < 0:
        raise UsageError('--seeds and --jobs must be at least 1, --first-seed at least 0')
    tables = list(TABLES) if args.table == 'all' else [args.table]
    entries = [e for t in tables for e, _ in TABLES[t][1] if in_setup(e, args.preset)]
    if args.entries:
        wanted = args.entries.split(',')
        unknown = [e for e in wanted if e not in entries]
        if unknown:
            raise UsageError(f'--entries: {", ".join(unknown)} not in table(s) {", ".join(tables)} '
                             f'(choose from {", ".join(dict.fromkeys(entries))})')
        entries = [e for e in entries if e in wanted]
    args.tables, args.entries = tables, list(dict.fromkeys(entries))
    return args


def earlier_runs(args):
    """(entry, script, steps, wall_s, setup) of the finished runs on this kind of machine, under --runs-dir or
    archived, of any preset."""
    import glob
    found, here = [], hardware(train_device(args.device))
    for root in (args.runs_dir, os.path.join(args.results_dir, 'logs')):
        for path in glob.glob(os.path.join(root, '*', '*', 's*', 'reproduce.json')):
            info = run_state(os.path.dirname(path))
            preset = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path))))
            if info.get('done') and info.get('hardware') == here and info.get('wall_s') and preset in PRESETS:
                found.append((info['entry'], os.path.dirname(info['command'].split()[1]), info['steps'], info['wall_s'],
                              PRESETS[preset]['setup']))
    return found


def machine_precision(device, amp):
    """The precision the scripts train at on this machine: --amp as given, or what their --amp auto decides."""
    if amp != 'auto':
        return amp
    sys.path.insert(0, os.path.join(REPO, 'adaptive'))
    from runtime import bf16_unusable
    return 'off' if bf16_unusable(train_device(device)) else 'bf16'


def check_precision(pairs, args):
    """One table, one precision: the runs of this call that finished or started elsewhere must have trained at
    the precision this machine would use, or the call stops (--amp chooses it explicitly)."""
    here = machine_precision(args.device, args.amp)
    seen = {}
    for entry, seed in pairs:
        for out in (run_dir(args.runs_dir, args.preset, entry, seed), archive_dir(args, entry, seed)):
            amps = {r.get('amp') for r in read_log(os.path.join(out, 'log.jsonl'))} - {None}
            if amps:
                seen.setdefault(tuple(sorted(amps)), []).append(f'{entry} s{seed}')
                break
    other = {a: runs for a, runs in seen.items() if a != (here,)}
    if other:
        amps, runs = next(iter(other.items()))
        raise UsageError(f'{", ".join(runs[:3])}{" ..." if len(runs) > 3 else ""} trained at --amp {"/".join(amps)}, '
                         f'this machine would train at {here}: pass --amp {amps[0]} to keep the table at one '
                         'precision, or another --runs-dir and --results-dir for a new one')
    return here


def steps_kept(args, entry, seed):
    """The steps an unfinished run keeps when it resumes: its checkpoint's, the last evaluation it logged."""
    out = run_dir(args.runs_dir, args.preset, entry, seed)
    if not os.path.exists(os.path.join(out, 'checkpoint.pt')):
        return 0
    records = read_log(os.path.join(out, 'log.jsonl'))
    return records[-1]['step'] if records else 0


def plan(pairs, todo, args):
    """What a call will do, printed before it starts: runs to do, runs reused, and hours estimated from the
    earlier runs of the same entry (else of the same script) on this kind of machine, scaled by the steps left
    (a run that resumes from its checkpoint counts only the steps after it)."""
    earlier, steps = earlier_runs(args), schedule(args.preset)['steps']
    total, unknown, resumed = 0.0, [], []
    setup = PRESETS[args.preset]['setup']  # the same setup first: the v1 runs evaluated more often
    for entry, seed in todo:
        kept = min(steps_kept(args, entry, seed), steps)
        if kept:
            resumed.append(f'{entry} s{seed} from step {kept}')
        script = ENTRIES[entry][0]
        same = next((found for found in (
            [w * steps / s for e, _, s, w, st in earlier if e == entry and st == setup],
            [w * steps / s for _, sc, s, w, st in earlier if sc == script and st == setup],
            [w * steps / s for e, _, s, w, _ in earlier if e == entry],
            [w * steps / s for _, sc, s, w, _ in earlier if sc == script]) if found), None)
        if same:
            total += statistics.median(same) * (steps - kept) / steps
        else:
            unknown.append(entry)
    reused = [p for p in pairs if p not in todo]
    name = lambda ps: ', '.join(f'{e} s{s}' for e, s in ps) or 'none'
    hours = (f'about {total / 3600:.1f} h of run time, {total / 3600 / min(args.jobs, max(len(todo), 1)):.1f} h '
             f'of wall time at --jobs {args.jobs}' if todo else 'nothing to run')
    print(f'plan: {len(todo)} of {len(pairs)} runs to do ({name(todo)}); reused, finished with the same command: '
          f'{name(reused)}. Estimate on {hardware(train_device(args.device))}: {hours}'
          + (f' (no earlier run here of {", ".join(dict.fromkeys(unknown))}: not counted)' if unknown else '')
          + (f'; resuming: {", ".join(resumed)}' if resumed else '') + '.', flush=True)


def main(args):
    os.chdir(REPO)  # the training scripts run from the repository: relative paths are relative to it
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    # seed-major, the longest runs first within a seed, so that seed 0 of every entry finishes first
    pairs = [(e, s) for s in seeds for e in sorted(args.entries, key=lambda e: '--labeled-only' in ENTRIES[e][1])]
    if args.dry_run:
        plan(pairs, [(e, s) for e, s in pairs if not finished_dir(args, e, s)], args)
        for e, s in pairs:
            print('python ' + ' '.join(map(shlex.quote, command(e, s, args.preset, args.device, args.runs_dir,
                                                                args.amp))))
        return 0
    failed = []
    if not args.report:
        todo = [(e, s) for e, s in pairs if not finished_dir(args, e, s)]
        precision = check_precision(pairs, args)
        plan(pairs, todo, args)
        print(f'precision: {precision} (every run of this call)', flush=True)
        t0 = time.time()
        failed = run_all(todo, args)
        print(f'wall time {(time.time() - t0) / 3600:.2f} h', flush=True)
    archive([p for p in pairs if finished_dir(args, *p) == run_dir(args.runs_dir, args.preset, *p)], args)
    # every table and the summary list the seeds asked for and every seed finished by earlier calls, so that a
    # call adding one seed of some entries (or one table) does not hide the other runs of the preset
    seeds = sorted(set(seeds) | seeds_found(args))
    all_results = {}
    for t in TABLES:  # entries not run (or not finished) say so
        for e, _ in table_rows(t, args.preset)[1]:
            for s in seeds:
                out = finished_dir(args, e, s)
                r = out and summarize(out)
                if r:
                    all_results[(e, s)] = r
    for t in TABLES:  # the tables asked for, and every other one with a finished run (the summary links them)
        if t in args.tables or any(all_results.get((e, s)) for e, _ in table_rows(t, args.preset)[1] for s in seeds):
            print(f'wrote {write_table(t, seeds, args, all_results)}')
    summary = os.path.join(args.results_dir, args.preset, 'README.md')
    with open(summary, 'w') as f:
        f.write(preset_summary(args, seeds, all_results))
    print(f'wrote {summary}')
    if args.readme:
        print(f'wrote {write_readme(args, seeds)}')
    if failed:
        print(f'error: {len(failed)} run(s) failed: ' + ', '.join(f'{e} seed {s}' for e, s in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(get_args()))
    except UsageError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
