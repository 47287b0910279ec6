"""etc/reproduce.py: the commands it runs are the tables' flags with the preset's one schedule rule and paired
seeds, and the tables it writes follow the training scripts' own best-val and median rules."""
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

import pytest

from conftest import METHODS, REPO, load_train

sys.path.insert(0, os.path.join(REPO, 'etc'))
import experiments  # noqa: E402
import report  # noqa: E402
import reproduce  # noqa: E402
import runner  # noqa: E402


@pytest.mark.parametrize('preset', sorted(experiments.PRESETS))
def test_every_entry_is_a_valid_command_with_the_preset_schedule(preset):
    s = experiments.schedule(preset)
    assert s['eval_every'] == s['steps'] // s['evals']
    if s['setup'] == 'faithful':  # the original's epoch: 1/300 of the run (quick 3, medium 14, full 55 steps)
        assert s['acc_window'] == {1024: 3, 4096: 14, 16384: 55}[s['steps']]
    else:                         # the window the presets had before (v2) and the first release's (v1)
        assert s['acc_window'] == s['eval_every']
    entries = [e for e in experiments.ENTRIES if experiments.in_setup(e, preset)]
    assert len(entries) >= 10
    for entry in entries:
        for seed in (0, 2):
            cmd = experiments.command(entry, seed, preset, 'cpu', 'runs/x')
            method = os.path.dirname(cmd[0])
            assert method in METHODS + ('etc/fixmatch', 'etc/meanteacher')
            args = load_train(method).get_args(cmd[1:])  # the script accepts the flags
            assert (args.seed, args.split_seed, args.steps) == (seed, seed, s['steps'])
            assert (args.eval_every, args.acc_window, args.n_val) == (s['eval_every'], s['acc_window'], s['n_val'])
            assert args.out == os.path.join('runs/x', preset, entry, f's{seed}') and args.resume == 'auto'
            if method == 'etc/meanteacher' and experiments.faithful(preset):  # the same ramp length, its own shape
                assert args.rampup_steps == round(19 * s['steps'] / 300)
            if args.labeled_only or method != 'mixmatch':
                continue
            if experiments.faithful(preset):  # the original's ramp: lambda_u * min(1, (1 + s/E) / 20), E = steps/300
                assert (args.rampup_steps, args.rampup_start) == (round(19 * s['steps'] / 300), 0.05)
                assert args.lambda_u in (5.66, 75.0, 3.77)                  # the paper's weight per class (409: 100), or 75
                E = s['steps'] / 300
                policy = load_train(method).POLICIES[args.policy](args, 10, 100)
                for step in (0, 10, round(19 * E) - 1):
                    assert policy.lambda_u(step) == pytest.approx(args.lambda_u * min(1, (1 + step / E) / 20), rel=3e-3)  # R rounded
            else:                                                           # the first release's ramp and weight
                assert (args.rampup_steps, args.rampup_start, args.lambda_u) == (s['steps'] // 4, 0.0, 75.0)


def test_the_train_accuracy_window_is_the_originals_epoch_and_the_previous_one_is_a_flag_away():
    """The original's adaptive threshold reads the train accuracy of the current epoch, 1/300 of its run; with
    or without a preset the window is --steps / 300, rounded; --acc-window given wins over the preset, and the
    v2 presets' commands (the window before: steps / evaluations) parse to what their archived runs ran."""
    train = load_train('adaptive')
    base = ['--min-th', '0.5', '--lambda-u', '1', '--loss', 'ce']
    assert train.get_args(base).acc_window == round(65536 / 300) == 218
    assert train.get_args(base + ['--steps', '100']).acc_window == 1      # never 0
    assert train.get_args(base + ['--preset', 'quick']).acc_window == 3
    assert train.get_args(base + ['--preset', 'medium']).acc_window == 14
    assert train.get_args(base + ['--preset', 'quick', '--acc-window', '128']).acc_window == 128
    for preset, window in (('quick-v2', 128), ('medium-v2', 256)):
        cmd = experiments.method_command('adaptive-ce-1', preset).split()
        assert cmd[-4:] == ['--preset', preset[:-3], '--acc-window', str(window)]
        ran = experiments.command('adaptive-ce-1', 0, preset, 'auto', 'runs/x')
        per_run = {'out': None, 'resume': None, 'preset': None}
        assert vars(train.get_args(cmd[2:])) | per_run == vars(train.get_args(ran[1:])) | per_run


def test_v1_commands_are_the_first_releases_with_its_defaults_spelled_out():
    """The archived runs of the first release reproduce with these commands: its flags, plus the values its
    defaults had (train accuracy from the mixed rows, a window-mean seed)."""
    cmd = experiments.command('adaptive-ce-1', 0, 'quick-v1', 'cpu', 'runs/x')
    assert ' '.join(cmd).startswith('adaptive/train.py --min-th 0.5 --lambda-u 1 --loss ce --accuracy mixed,window '
                                    '--n-labeled 250 --n-val 1000 --steps 1024')
    assert not experiments.in_setup('mixmatch-75', 'quick-v1') and experiments.in_setup('mixmatch-75', 'quick')


def test_every_table_has_a_labeled_only_row_with_its_label_count():
    for table in experiments.TABLES.values():
        entries = table.entries
        assert experiments.ENTRIES[entries[0]].flags == ('--labeled-only',)
        assert len({experiments.ENTRIES[e].labels for e in entries}) == 1  # one label count per table


def fake_run(root, entry, seed, val, test, done=True, preset='quick'):
    """A finished run directory as the training script and reproduce.py leave it."""
    out = experiments.run_dir(str(root), preset, entry, seed)
    os.makedirs(out)
    with open(os.path.join(out, 'log.jsonl'), 'w') as f:
        for i, (v, t) in enumerate(zip(val, test)):
            f.write(json.dumps({'step': 128 * (i + 1), 'val_top1': v, 'test_top1': t, 'test_top5': None if t is None else t + 10,
                                'mask_ratio': 0.5, 'pseudo_label_acc': 90.0, 'device': 'cpu (2 threads)',
                                'amp': 'bf16'}) + '\n')
    cmd = 'python ' + ' '.join(experiments.command(entry, seed, preset, 'cpu', str(root)))
    with open(os.path.join(out, 'reproduce.json'), 'w') as f:
        json.dump({'done': done, 'wall_s': 600.0, 'command': cmd}, f)


def test_the_tables_read_each_runs_resolved_arguments(tmp_path):
    """Images per step come from the run's args.json (what its script resolved); a run archived before runs wrote
    one is read from its command, as its own script parses it (FixMatch: 64 labeled + its default 448)."""
    fake_run(tmp_path, 'fixmatch', 0, [50], [51])
    out = experiments.run_dir(str(tmp_path), 'quick', 'fixmatch', 0)
    assert runner.summarize(out)['images'] == 64 + 448 and runner.summarize(out)['guessed'] == 448
    with open(os.path.join(out, 'args.json'), 'w') as f:
        json.dump({'batch_size': 32, 'unlabeled_batch_size': 96, 'labeled_only': False}, f)
    assert runner.summarize(out)['images'] == 32 + 96 and runner.summarize(out)['guessed'] == 96
    fake_run(tmp_path, 'labeled-only', 0, [50], [51])
    assert runner.summarize(experiments.run_dir(str(tmp_path), 'quick', 'labeled-only', 0))['images'] == 64


def test_tables_use_first_best_val_median_and_paired_differences(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # main() moves to the repository; undone after the test
    runs = tmp_path / 'runs'
    fake_run(runs, 'labeled-only-few', 0, [50, 60, 60], [51, 61, 62])  # ties: the first best val wins
    fake_run(runs, 'labeled-only-few', 1, [50, 55, 40], [53, 56, 41])
    fake_run(runs, 'mixmatch-few', 0, [70, 80, 75], [71, 81, 77])
    fake_run(runs, 'mixmatch-few', 1, [70, 72, 74], [71, 73, 79])
    fake_run(runs, 'adaptive-ce-1-few', 0, [70, 80, 75], [71, 90, 77], done=False)  # unfinished: not counted
    r = runner.summarize(experiments.run_dir(str(runs), 'quick', 'labeled-only-few', 0))
    assert (r['best_top1'], r['best_step'], r['median_top1'], r['median_n']) == (61, 256, 61, 3)
    args = reproduce.get_args(['--table', '3', '--seeds', '2', '--runs-dir', str(runs), '--results-dir',
                               str(tmp_path / 'results'), '--report'])
    assert reproduce.main(args) == 0
    text = open(tmp_path / 'results' / 'quick' / 'table3.md').read()
    assert '| labeled-only-few: labeled only, few labels | — | — | 2 | 58.50 ± 3.54 |' in text
    assert '| mixmatch-few: MixMatch, few labels | 478 | 59.58 | 2 | 80.00 ± 1.41 |' in text
    assert '| adaptive-ce-1-few: adaptive CE, lambda_u 1, few labels | 477 -> 485 | 61.15 | 0 | not run |' in text
    assert ('| mixmatch-few | +21.50 ± 2.12; t [+2.44, +40.56], bootstrap [+20.00, +23.00] (2/2 ahead; per seed '
            '+20.00, +23.00) |  |') in text  # 81-61, 79-56: t 12.706 * 2.12 / sqrt 2 = 19.06 either side
    assert 'seeds 0, 1 (asked, or run by an earlier call' in text and 'sample standard deviation (n − 1)' in text
    assert report.mean_std([-1.456], signed=True) == '\u22121.46'  # the typographic minus of the README
    assert report.mean_std([1, 3], signed=True) == '+2.00 ± 1.41'
    assert '| seed | labeled-only-few | mixmatch-few | adaptive-ce-1-few |' in text
    assert '| 0 | 61.00 | 81.00 | — |' in text and '| 1 | 56.00 | 79.00 | — |' in text
    archived = tmp_path / 'results' / 'logs' / 'quick'
    assert sorted(os.listdir(archived)) == ['labeled-only-few', 'mixmatch-few']
    assert sorted(os.listdir(archived / 'mixmatch-few' / 's1')) == ['log.jsonl', 'reproduce.json']
    # the archive alone (a later session, without the run directories) gives the same table
    shutil.rmtree(runs)
    assert reproduce.main(args) == 0 and open(tmp_path / 'results' / 'quick' / 'table3.md').read() == text
    # another preset writes its own tables and leaves these alone
    medium = reproduce.get_args(['--table', '3', '--preset', 'medium', '--runs-dir', str(runs), '--results-dir',
                                 str(tmp_path / 'results'), '--report'])
    assert reproduce.main(medium) == 0 and 'not run' in open(tmp_path / 'results' / 'medium' / 'table3.md').read()
    assert open(tmp_path / 'results' / 'quick' / 'table3.md').read() == text
    summary = open(tmp_path / 'results' / 'quick' / 'README.md').read()  # the preset's summary, with commands
    assert ('| MixMatch, few labels | 478 | 59.58 | `python mixmatch/train.py --lambda-u 5.66 --n-labeled 80 --preset quick` | '
            '80.00 ± 1.41 / 90.00 ± 1.41 (2) | +21.50 [+2.44, +40.56], bootstrap [+20.00, +23.00] (2/2 ahead) |  |') \
        in summary
    assert 'Not run at this preset: adaptive-ce-1-few.' in summary
    # the README's one table: every entry at every preset with finished runs, its paired differences
    fake_run(runs, 'mixmatch-few', 0, [70, 75, 80], [71, 76, 85], preset='medium')
    fake_run(runs, 'labeled-only-few', 0, [50, 55, 40], [53, 56, 41], preset='medium')
    monkeypatch.setattr(report, 'released_checkpoints', lambda: {
        ('mixmatch-few', 'quick'): {'file': 'mixmatch-few-quick-s0-0123abcd.pt', 'sha256': '0123abcd' * 8}})
    fake_run(runs, 'mixmatch-few', 0, [70, 75, 80], [71, 76, 99], preset='quick-v1')  # linked, not a row
    readme = tmp_path / 'README.md'
    readme.write_text('intro\n<!-- results: begin -->\nold\n<!-- results: end -->\nrest\n')
    report.write_readme(args, [0, 1], str(readme))
    text = readme.read_text()
    assert text.startswith('intro\n<!-- results: begin') and text.endswith('<!-- results: end -->\nrest\n')
    rows = [line for line in text.splitlines() if line.startswith('| T3')]
    assert rows == [
        '| T3: labeled only, few labels | — | — | `python mixmatch/train.py --labeled-only --n-labeled 80 --preset quick` | '
        '**58.50 ± 3.54** (2, quick) | −21.50 [−40.56, −2.44] (0/2 ahead) |  |  | — |',
        '| T3: labeled only, few labels | — | — | `python mixmatch/train.py --labeled-only --n-labeled 80 --preset medium` | '
        '**56.00** (1, medium; one seed: not evidence) | −29.00 (0/1 ahead) |  |  | — |',
        '| T3: MixMatch, few labels | 478 | 59.58 | `python mixmatch/train.py --lambda-u 5.66 --n-labeled 80 --preset quick` | '
        '**80.00 ± 1.41** (2, quick) |  |  | +21.50 [+2.44, +40.56] (2/2 ahead) | '
        '[mixmatch-few-quick-s0-0123abcd](pretrained/mixmatch-few-quick-s0-0123abcd.pt) |',
        '| T3: MixMatch, few labels | 478 | 59.58 | `python mixmatch/train.py --lambda-u 5.66 --n-labeled 80 --preset medium` | '
        '**85.00** (1, medium; one seed: not evidence) |  |  | +29.00 (1/1 ahead) | — |',
        '| T3: adaptive CE, lambda_u 1, few labels | 477 -> 485 | 61.15 | — | not run |  |  |  | — |']  # on the map
    assert 'Also measured: [quick-v1](etc/results/quick-v1/README.md).' in text and '99.00' not in text
    fake_run(runs, 'adaptive-ce-1-few', 0, [60, 65, 70], [61, 66, 77], preset='quick-v1')  # measured at v1 alone
    report.write_readme(args, [0, 1], str(readme))
    row, = [line for line in readme.read_text().splitlines() if line.startswith('| T3: adaptive CE')]
    assert '**77.00** (1, quick-v1; one seed: not evidence)' in row and '--steps 1024 --eval-every 128' in row


def test_window_effect_pairs_the_preset_with_its_v2_twin_and_the_readme_prefers_the_faithful_one(tmp_path):
    """The quick summary sets each entry run at both quick and quick-v2 side by side, paired by seed; a policy
    that does not read the train accuracy gives the same numbers. The README shows an entry at the preset of its
    length with the most seeds of it, the faithful one on a tie."""
    runs = tmp_path / 'runs'
    for preset in ('quick', 'quick-v2'):
        fake_run(runs, 'mixmatch-few', 0, [70, 80], [71, 81], preset=preset)
        fake_run(runs, 'mixmatch-few', 1, [70, 72], [71, 73], preset=preset)
    fake_run(runs, 'adaptive-ce-1-few', 0, [70, 80], [71, 84], preset='quick')
    fake_run(runs, 'adaptive-ce-1-few', 1, [70, 80], [71, 76], preset='quick')
    fake_run(runs, 'adaptive-ce-1-few', 0, [70, 80], [71, 82], preset='quick-v2')
    fake_run(runs, 'adaptive-ce-1-few', 1, [70, 80], [71, 75], preset='quick-v2')
    fake_run(runs, 'labeled-only-few', 0, [50, 60], [51, 61], preset='quick-v2')
    fake_run(runs, 'labeled-only-few', 1, [50, 60], [51, 63], preset='quick-v2')
    fake_run(runs, 'labeled-only-few', 0, [50, 60], [51, 61], preset='quick')  # fewer seeds than at quick-v2
    args = reproduce.get_args(['--table', '3', '--seeds', '2', '--runs-dir', str(runs), '--results-dir',
                               str(tmp_path / 'results'), '--report'])
    assert reproduce.main(args) == 0
    summary = open(tmp_path / 'results' / 'quick' / 'README.md').read()
    assert "**The train-accuracy window's own effect**" in summary and '`--acc-window 3`' in summary
    assert '| mixmatch-few | 77.00 ± 5.66 (2) | 77.00 ± 5.66 | +0.00 [+0.00, +0.00] (0/2 ahead) |' in summary
    assert ('| adaptive-ce-1-few | 80.00 ± 5.66 (2) | 78.50 ± 4.95 | +1.50 [−4.85, +7.85] (2/2 ahead) | '
            '+3.00 [+3.00, +3.00] (2/2 ahead) | +1.50 [−4.85, +7.85] (2/2 ahead) |') in summary
    v2 = reproduce.get_args(['--table', '3', '--seeds', '2', '--preset', 'quick-v2', '--runs-dir', str(runs),
                             '--results-dir', str(tmp_path / 'results'), '--report'])
    assert reproduce.main(v2) == 0  # the twin's own summary has no such section
    assert "window's own effect" not in open(tmp_path / 'results' / 'quick-v2' / 'README.md').read()
    readme = tmp_path / 'README.md'
    readme.write_text('<!-- results: begin -->\n<!-- results: end -->\n')
    report.write_readme(args, [0, 1], str(readme))
    rows = [line for line in readme.read_text().splitlines() if line.startswith('| T3')]
    assert [re.search(r'\*\* \((\d), ([\w-]+)', r).groups() for r in rows] == [('2', 'quick-v2'), ('2', 'quick'),
                                                                               ('2', 'quick')]
    assert '--preset quick --acc-window 128`' in rows[0] and rows[1].split('`')[1].endswith('--preset quick')


def test_cpu_threads_split_the_cores_and_the_last_lone_run_gets_them_all():
    # 2 cores, --jobs 2, three runs: the first two share the cores, the last one (alone) gets both
    assert [runner.threads_for(2, 2, left) for left in (3, 2, 1)] == [1, 1, 2]
    assert runner.threads_for(16, 4, 10) == 4 and runner.threads_for(16, 4, 2) == 8
    assert runner.threads_for(1, 4, 4) == 1  # never zero threads


def test_unknown_entry_is_one_line_and_exit_2():
    r = subprocess.run([sys.executable, os.path.join(REPO, 'etc', 'reproduce.py'), '--table', '1', '--entries',
                        'adaptive-ce-2'], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        'error: --entries: adaptive-ce-2 not in table(s) 1 '
        '(choose from labeled-only, mixmatch, mixmatch-75, fixed-0.8, adaptive-mse)']


def test_plot_draws_the_figures_from_the_copied_logs(tmp_path):
    import plot
    for entry in ('labeled-only', 'mixmatch', 'adaptive-mse', 'flexmatch'):
        for seed in (0, 1):
            logs = tmp_path / 'logs' / 'quick' / entry / f's{seed}'
            logs.mkdir(parents=True)
            with open(logs / 'log.jsonl', 'w') as f:
                for step in (128, 256):
                    f.write(json.dumps({'step': step, 'loss': 1.0, 'loss_u': 0.01, 'mask_ratio': 0.5, 'threshold': 0.6,
                                        'pseudo_label_acc': 80.0 + seed, 'val_top1': 70.0 + step / 128}) + '\n')
    assert plot.main(['--preset', 'quick', '--results-dir', str(tmp_path)]) == 0
    for name in ('quick-figure1-losses.png', 'quick-dynamics.png', 'quick-policies.png'):
        with open(tmp_path / 'figures' / name, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert plot.main(['--preset', 'full', '--results-dir', str(tmp_path)]) == 2  # no logs of that preset


def test_median_covers_the_last_20_evaluations_and_other_presets_do_not_count(tmp_path):
    runs = tmp_path / 'runs'
    fake_run(runs, 'mixmatch', 0, list(range(30)), [float(t) for t in range(100, 130)])
    r = runner.summarize(experiments.run_dir(str(runs), 'quick', 'mixmatch', 0),
                            experiments.command('mixmatch', 0, 'quick', 'auto', str(runs)))
    assert (r['median_n'], r['median_top1'], r['best_top1']) == (20, 119.5, 129.0)  # median of 110..129
    # a finished run of the quick preset is not a finished run of medium, even in the same folder
    assert not runner.is_done(experiments.run_dir(str(runs), 'quick', 'mixmatch', 0),
                                 experiments.command('mixmatch', 0, 'medium', 'auto', str(runs)))


def test_median_only_where_every_evaluation_measured_the_test_set_and_the_policy_table_adds_step_costs(
        tmp_path, monkeypatch):
    """The quick and medium presets measure the test set when val improves: their tables have no median
    column; the policy table adds images guessed and ms per step."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / 'runs'
    fake_run(runs, 'labeled-only', 0, [50, 60, 55], [51, 61, None])  # val fell at the last evaluation
    fake_run(runs, 'mixmatch', 0, [50, 60, 70], [51, 61, 71])
    fake_run(runs, 'warm-start', 0, [50, 60, 70], [51, 61, 71])
    fake_run(runs, 'adaptive-ce-1', 0, [50, 60, 70], [51, 61, 66])
    for entry, guessed in (('mixmatch', None), ('warm-start', [64, 192, 128])):
        path = os.path.join(experiments.run_dir(str(runs), 'quick', entry, 0), 'log.jsonl')
        records = [json.loads(x) for x in open(path)]
        with open(path, 'w') as f:
            for i, r in enumerate(records):
                r['ms_per_step'] = 400.0 + 10 * i
                if guessed:
                    r['policy_guessed'] = guessed[i]
                f.write(json.dumps(r) + '\n')
    args = reproduce.get_args(['--table', 'P', '--runs-dir', str(runs), '--results-dir', str(tmp_path / 'results'),
                               '--report'])
    assert reproduce.main(args) == 0
    text = open(tmp_path / 'results' / 'quick' / 'tableP.md').read()
    assert 'median of last evals |' not in text
    assert '| unlabeled guessed / step | ms / step |' in text
    assert ('| labeled-only: labeled only (MixMatch\'s step without unlabeled images) | — | — | 1 (one seed: not '
            'evidence) | 61.00 |') in text
    assert '| entry | − labeled-only | − MixMatch | − MixMatch λu 75 | − adaptive CE |' in text
    assert '| warm-start | +10.00 (1/1 ahead) | +0.00 (0/1 ahead) | — | +5.00 (1/1 ahead) |' in text  # every
    assert '| adaptive-ce-1 | +5.00 (1/1 ahead) | −5.00 (0/1 ahead) | — |  |' in text  # policy vs the study's
    assert '| 0 | — |' in text  # labeled-only guesses none; its log has no step time
    assert '| 64 | 410 |' in text and '| 128 | 410 |' in text  # a batch per step; warm-start's logged mean
    assert runner.summarize(experiments.run_dir(str(runs), 'quick', 'mixmatch', 0))['tested_every']
    assert 'seen about once: the table ranks early progress' in text and 'policies.png' not in text
    (tmp_path / 'results' / 'figures').mkdir()
    (tmp_path / 'results' / 'figures' / 'quick-policies.png').write_bytes(b'\x89PNG')  # etc/plot.py drew it
    assert reproduce.main(args) == 0
    assert '](../figures/quick-policies.png)' in open(tmp_path / 'results' / 'quick' / 'tableP.md').read()
    assert report.epochs_note('medium') == ' At 4,096 steps the unlabeled set is seen about 4 times.'


def test_a_table_stays_at_one_precision(tmp_path, monkeypatch):
    """Runs that trained in bf16 are not continued or joined in fp32 on a CPU without bf16 kernels: the call
    stops before starting anything, and --amp bf16 (passed to the scripts) keeps the table at one precision."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / 'runs'
    fake_run(runs, 'labeled-only-few', 0, [50, 60], [51, 61])  # its log says amp bf16
    argv = ['--table', '3', '--runs-dir', str(runs), '--results-dir', str(tmp_path / 'results')]
    monkeypatch.setattr(reproduce, 'machine_precision', lambda device, amp: 'off' if amp == 'auto' else amp)
    monkeypatch.setattr(reproduce, 'run_all', lambda todo, args: pytest.fail('started runs'))
    with pytest.raises(runner.UsageError, match=r'labeled-only-few s0 trained at --amp bf16, this machine would '
                                                   r'train at off: pass --amp bf16'):
        reproduce.main(reproduce.get_args(argv))
    started = []
    monkeypatch.setattr(reproduce, 'run_all', lambda todo, args: started.extend(
        experiments.command(e, s, args.preset, args.device, args.runs_dir, args.amp) for e, s in todo) or [])
    assert reproduce.main(reproduce.get_args(argv + ['--amp', 'bf16'])) == 0
    assert [c[c.index('--amp') + 1] for c in started] == ['bf16', 'bf16']  # the two runs left, in bf16
    assert runner.finished_dir(reproduce.get_args(argv + ['--amp', 'bf16']), 'labeled-only-few', 0)


def test_a_call_for_one_seed_or_one_table_keeps_the_other_runs_of_the_preset(tmp_path, monkeypatch):
    """`--table P --seeds 1` after a 3-seed headline: the headline rows keep n = 3, and the preset's summary
    keeps the tables that call did not run."""
    monkeypatch.chdir(tmp_path)
    runs, results = tmp_path / 'runs', tmp_path / 'results'
    for seed in range(3):
        fake_run(runs, 'mixmatch', seed, [70, 80], [71, 81 + seed])
        fake_run(runs, 'labeled-only-few', seed, [50, 60], [51, 61])
    fake_run(runs, 'fixed-0.9', 0, [70, 80], [71, 84])
    args = reproduce.get_args(['--table', 'P', '--seeds', '1', '--runs-dir', str(runs), '--results-dir',
                               str(results), '--report'])
    assert reproduce.main(args) == 0
    table = (results / 'quick' / 'tableP.md').read_text()
    assert 'seeds 0, 1, 2 (asked, or run by an earlier call' in table
    assert '| 3 | 82.00 ± 1.00 |' in table  # mixmatch: n = 3, not the one seed asked for
    assert '| 1 (one seed: not evidence) | 84.00 |' in table  # fixed-0.9
    summary = (results / 'quick' / 'README.md').read_text()
    assert '**Table 3' in summary and '61.00 ± 0.00 / 71.00 ± 0.00 (3)' in summary  # a table this call did not ask for
    assert '| 3 | 61.00 ± 0.00 |' in (results / 'quick' / 'table3.md').read_text()  # written too: the summary links it


def test_runs_archived_from_another_machine_and_runs_dir_count_as_the_same_runs(tmp_path, monkeypatch):
    """A GPU machine's runs (--device cuda, written under another --runs-dir) that come back as their archived
    logs fill the table here, and a call here does not run them again."""
    monkeypatch.chdir(tmp_path)
    results = tmp_path / 'results'
    elsewhere = tmp_path / 'gpu-runs'
    fake_run(elsewhere, 'mixmatch-few', 0, [70, 80], [71, 81])
    reproduce.main(reproduce.get_args(['--table', '3', '--entries', 'mixmatch-few', '--runs-dir', str(elsewhere),
                                       '--results-dir', str(results), '--device', 'cuda', '--report']))
    shutil.rmtree(elsewhere)  # only the archive comes back
    args = reproduce.get_args(['--table', '3', '--entries', 'mixmatch-few', '--results-dir', str(results),
                               '--runs-dir', str(tmp_path / 'runs')])
    assert runner.finished_dir(args, 'mixmatch-few', 0) == runner.archive_dir(args, 'mixmatch-few', 0)
    monkeypatch.setattr(reproduce, 'run_all', lambda todo, args: todo and pytest.fail(f'started {todo}') or [])
    # the archived runs trained in bf16, as this machine would (a CPU without bf16 kernels stops such a call:
    # check_precision's own test), so that the test passes on every CPU
    monkeypatch.setattr(reproduce, 'machine_precision', lambda device, amp: 'bf16' if amp == 'auto' else amp)
    assert reproduce.main(args) == 0
    assert '| 478 | 59.58 | 1 (one seed: not evidence) | 81.00 |' in (results / 'quick' / 'table3.md').read_text()  # the archived run's row
    # a run with other flags is another run, wherever it wrote
    assert not runner.is_done(runner.archive_dir(args, 'mixmatch-few', 0),
                                 experiments.command('mixmatch-few', 1, 'quick', 'cpu', str(tmp_path / 'runs')))


def test_the_plan_counts_only_the_steps_a_resumed_run_has_left(tmp_path, monkeypatch, capsys):
    runs = tmp_path / 'runs'
    fake_run(runs, 'mixmatch-few', 0, [70, 80, 75, 76], [71, 81, 77, 78], done=False)  # logged to step 512 of 1024
    (tmp_path / 'runs' / 'quick' / 'mixmatch-few' / 's0' / 'checkpoint.pt').write_bytes(b'')
    args = reproduce.get_args(['--table', '3', '--seeds', '2', '--entries', 'mixmatch-few', '--runs-dir', str(runs),
                               '--results-dir', str(tmp_path / 'results')])
    earlier = [('mixmatch-few', 'mixmatch', 1024, 3600.0, 'faithful')]  # an hour per run here
    monkeypatch.setattr(reproduce, 'earlier_runs', lambda args: earlier)
    reproduce.plan([('mixmatch-few', 0), ('mixmatch-few', 1)], [('mixmatch-few', 0), ('mixmatch-few', 1)], args)
    out = capsys.readouterr().out
    assert 'about 1.5 h of run time' in out and 'resuming: mixmatch-few s0 from step 512' in out  # 0.5 h + 1 h


def test_paired_statistics_are_the_t_and_bootstrap_intervals_of_the_mean_difference():
    """Ten paired differences: Student's t interval (t_0.975,9 = 2.2622), a percentile bootstrap that lies within
    the range of the data and is reproducible, and the seeds ahead."""
    d = [1.2, 0.4, -0.3, 2.0, 1.1, 0.9, 1.5, -0.2, 0.8, 1.6]
    st = report.paired_stats(d)
    mean, sd = statistics.mean(d), statistics.stdev(d)
    assert st['mean'] == pytest.approx(mean) and st['n'] == 10 and st['ahead'] == 8
    assert st['t'] == pytest.approx((mean - 2.262157 * sd / 10 ** 0.5, mean + 2.262157 * sd / 10 ** 0.5), abs=1e-5)
    low, high = st['bootstrap']
    assert min(d) < low < mean < high < max(d) and report.paired_stats(d)['bootstrap'] == (low, high)
    assert high - low < st['t'][1] - st['t'][0]                      # the percentile bootstrap is the narrower here
    assert report.paired_stats([0.5])['t'] is None                  # one seed: no interval
    assert report.paired_stats([0.5, 0.5])['bootstrap'] == (0.5, 0.5)


def readme_rows():
    """(command, preset, n) of every row of the README's results block."""
    text = open(os.path.join(REPO, 'README.md')).read()
    block = text.split('<!-- results: begin', 1)[1].split('<!-- results: end -->', 1)[0]
    rows = []
    for line in block.splitlines():
        if line.startswith('| T'):
            command = re.search(r'`(python [^`]+)`', line).group(1)
            n, preset = re.search(r'\*\* \((\d+), ([\w-]+)', line).groups()
            rows.append((command, preset, int(n)))
    return rows


def test_every_command_beside_a_readme_number_is_the_one_its_runs_ran():
    """Pasted as it is (with seed i's --seed i --split-seed i), each command of the README's table parses, by its
    script's own parser, to the arguments of the archived runs whose numbers stand beside it."""
    import shlex
    rows = readme_rows()
    assert len(rows) >= 9 and all('--preset' in c for c, p, _ in rows if experiments.PRESETS[p]['setup'] == 'faithful')
    for command, preset, n in rows:
        entry, = [e for e in experiments.ENTRIES if experiments.in_setup(e, preset)
                  and experiments.method_command(e, preset) == command]
        train = load_train(command.split()[1][:-len('/train.py')])
        runs = sorted(glob.glob(os.path.join(REPO, 'etc', 'results', 'logs', preset, entry, 's*', 'reproduce.json')))
        done = [json.load(open(path)) for path in runs]
        done = [info for info in done if info['done']]
        assert len(done) == n, (entry, preset)
        for info in done:
            seed = str(info['seed'])
            pasted = vars(train.get_args(shlex.split(command)[2:] + ['--seed', seed, '--split-seed', seed]))
            ran = vars(train.get_args(train.flags.upgrade(shlex.split(info['command'])[2:])))
            for key in ('out', 'resume', 'device', 'amp', 'preset'):
                pasted.pop(key), ran.pop(key)
            assert pasted == ran, (entry, preset, seed, {k for k in ran if ran[k] != pasted[k]})


@pytest.mark.slow
def test_the_readme_headline_command_runs_as_pasted(tmp_path):
    """The adaptive CE command of the README's table, pasted, for 2 steps (the preset's length given way to)."""
    import shlex
    command, preset = next((c, p) for c, p, _ in readme_rows() if c.startswith(
        'python adaptive/train.py --min-th 0.5 --lambda-u 1 --loss ce --n-labeled 250') and p in ('quick', 'quick-v2'))
    r = subprocess.run([sys.executable, *shlex.split(command)[1:], '--steps', '2', '--device', 'cpu', '--out',
                        str(tmp_path / 'run')], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
    assert r.returncode == 0, r.stderr
    assert f'acc_window={experiments.schedule(preset)["acc_window"]} ' in r.stdout and 'n_val=1000' in r.stdout and 'steps=2 ' in r.stdout
    assert re.search(r'best val top-1 [\d.]+ at step 2: test top-1 [\d.]+', r.stdout)


def test_every_entry_of_the_papers_tables_is_on_the_readmes_map():
    """Tables 1-3 have nine entries (MixMatch is in two): each has a row with its table, session, the paper's top-1
    and ours, whichever preset measured it."""
    nine = [('T1', '405', '73.89'), ('T1', '408', '72.84'), ('T1', '401', '73.96'), ('T2', '405', '73.89'),
            ('T2', '431', '75.06'), ('T2', '467', '75.14'), ('T2', '468', '74.79'), ('T3', '478', '59.58'),
            ('T3', '477 -> 485', '61.15')]
    text = open(os.path.join(REPO, 'README.md')).read()
    block = text.split('<!-- results: begin', 1)[1].split('<!-- results: end -->', 1)[0]
    cells = [[c.strip() for c in line.split('|')[1:-1]] for line in block.splitlines() if line.startswith('| T')]
    for table, session, paper in nine:
        rows = [c for c in cells if table in c[0].split(':')[0] and c[1] == session and c[2] == paper]
        assert rows and all(re.match(r'\*\*\d+\.\d\d', c[4]) for c in rows), (table, session)
