"""The runner of etc/reproduce.py: launching the training scripts (a few at a time, resumable), what each run
recorded (reproduce.json, its log, its resolved arguments), and the archive of finished runs under
etc/results/logs/ that the tables are written from."""
import importlib.util
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

from experiments import command, run_dir, script_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UsageError(Exception):
    """A bad request to etc/reproduce.py: one line, exit code 2."""


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
    a run of another --runs-dir, archived, is the same run). An earlier release's flags are read as today's
    (script_flags.upgrade), and the flags' order does not matter."""
    argv = shlex.split(cmd)
    groups, current = [], None
    for token in script_flags.upgrade(argv[2:]):
        if token.startswith('--'):
            current = [token]
            groups.append(current)
        elif current is not None:
            current.append(token)
    flags = sorted(tuple(g) for g in groups if g[0] not in ('--device', '--amp', '--out'))
    return (argv[1], tuple(flags))


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
    a, best = run_args(out, info['command']), None
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
            'guessed': guessed_per_step(records, a),
            'images': a['batch_size'] + (0 if a.get('labeled_only') else a['unlabeled_batch_size']),
            'mask_ratio': end.get('mask_ratio'), 'pl_acc': end.get('pseudo_label_acc'), 'steps': end['step'],
            'wall_s': info['wall_s'], 'hardware': info.get('hardware', '?'), 'device': end.get('device'),
            'amp': end.get('amp'), 'git': end.get('git_sha'), 'command': info['command']}


def guessed_per_step(records, a):
    """Unlabeled images guessed per step: what the policy logged (ensure-ratio draws more), else the run's unlabeled
    batch (none for labeled-only)."""
    logged = [r['policy_guessed'] for r in records if r.get('policy_guessed') is not None]
    if logged:
        return statistics.mean(logged)
    return 0 if a.get('labeled_only') else a['unlabeled_batch_size']


SCRIPTS = {}  # script folder -> its train.py, loaded once


def run_args(out, cmd):
    """The flags a run trained with, every default resolved: its args.json, or, for a run archived before runs
    wrote one, its command parsed by its own script."""
    path = os.path.join(out, 'args.json')
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    argv = shlex.split(cmd)[1:]
    argv[1:] = script_flags.upgrade(argv[1:])
    script = os.path.dirname(argv[0])
    if script not in SCRIPTS:
        spec = importlib.util.spec_from_file_location(f'train_{script.replace("/", "_")}',
                                                      os.path.join(REPO, script, 'train.py'))
        SCRIPTS[script] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(SCRIPTS[script])
    return vars(SCRIPTS[script].get_args(argv[1:]))


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


def archive_dir(args, entry, seed):
    """Where a finished run's log.jsonl, reproduce.json and args.json are kept (committed): the tables and plots
    read them, so runs finished on other machines or in earlier calls count without their checkpoints."""
    return run_dir(os.path.join(args.results_dir, 'logs'), args.preset, entry, seed)


def archive(pairs, args):
    for entry, seed in pairs:
        src, dst = run_dir(args.runs_dir, args.preset, entry, seed), archive_dir(args, entry, seed)
        os.makedirs(dst, exist_ok=True)
        for name in ('log.jsonl', 'reproduce.json', 'args.json'):
            if name != 'args.json' or os.path.exists(os.path.join(src, name)):  # runs before args.json: without
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
