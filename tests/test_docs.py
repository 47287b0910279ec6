"""The README documents every flag of every script, and its commands use flags that exist."""
import os
import re

import pytest

from conftest import METHODS, REPO, load_train


def script_flags(method, capsys):
    with pytest.raises(SystemExit):
        load_train(method).get_args(['--help'])
    return set(re.findall(r'(?<![\w-])(--[a-z][a-z0-9-]*)', capsys.readouterr().out))


@pytest.mark.parametrize('method', METHODS)
def test_readme_documents_every_flag(method, capsys):
    readme = open(os.path.join(REPO, 'README.md')).read()
    flags = script_flags(method, capsys) - {'--help'}
    assert len(flags) > 30
    missing = sorted(f for f in flags if f'`{f}' not in readme)
    assert not missing, f'README.md lacks {missing}'


def test_commands_in_docs_use_existing_flags(capsys):
    known = {m: script_flags(m, capsys) for m in METHODS}
    for doc in ('README.md', os.path.join('etc', 'sessions.md')):
        text = open(os.path.join(REPO, doc)).read()
        for method, rest in re.findall(r'python (mixmatch|fixed|adaptive)/train\.py([^`\n]*(?:\\\n[^`\n]*)*)', text):
            used = set(re.findall(r'(?<![\w-])(--[a-z][a-z0-9-]*)', rest))
            assert used <= known[method], (doc, method, used - known[method])
