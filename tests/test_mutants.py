"""The mutation check's bugs (``tests/mutate.py``) still apply to the code: a refactor
that moves a mutant's line would otherwise retire it unnoticed until the next check."""

import mutate
import pytest


@pytest.mark.parametrize("mutant", mutate.MUTANTS, ids=lambda m: m.name)
def test_each_mutant_plants_one_bug_and_names_existing_tests(mutant):
    assert (mutate.REPO / mutant.file).read_text().count(mutant.old) == 1, f"{mutant.file} changed"
    paths = [t.split("::")[0] for t in mutant.tests if not t.startswith("-")]
    assert paths and all((mutate.REPO / path).exists() for path in paths), mutant.tests
