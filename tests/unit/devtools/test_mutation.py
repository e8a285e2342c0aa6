"""devtools/mutation.py: the mutation report (scores, the reviewed list of equivalent
mutants, and what makes a run fail), on results written the way mutmut writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ghibli_anim.devtools import mutation

KEYS = "ghibli_anim.contracts.keys"
CONDUCTOR = "ghibli_anim.services.planner.conductor"


def test_the_configured_modules_are_the_core_and_the_list_is_well_formed() -> None:
    modules = mutation.configured_modules(mutation.REPO_ROOT / "pyproject.toml")
    assert KEYS in modules and CONDUCTOR in modules and "ghibli_anim.runtime.jobstore" in modules
    for module in modules:
        assert (mutation.REPO_ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    equivalent = mutation.read_equivalent(mutation.REPO_ROOT / mutation.EQUIVALENT_FILE)
    assert all(mutation.module_of(name) in modules for name in equivalent)


def test_module_of_a_function_and_of_a_method() -> None:
    assert mutation.module_of(f"{KEYS}.x_check_key__mutmut_3") == KEYS
    assert mutation.module_of(f"{CONDUCTOR}.xǁConductorǁfail_job__mutmut_12") == CONDUCTOR


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (1, "killed"),
        (3, "killed"),
        (36, "killed"),  # timeout
        (-9, "killed"),  # the test process crashed
        (0, "survived"),
        (77, "survived"),  # unknown: suspicious, not a kill
        (33, "no tests"),
        (5, "no tests"),
        (None, "not run"),
        (34, "not run"),
    ],
)
def test_outcomes_of_mutmuts_exit_codes(code, outcome) -> None:
    assert mutation.outcome(code) == outcome


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "equivalent.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_equivalent_list_needs_a_reason_per_name(tmp_path) -> None:
    listed = mutation.read_equivalent(
        write(tmp_path, "# a comment\n\n a.x_f__mutmut_1  # same value either way \n")
    )
    assert listed == {"a.x_f__mutmut_1": "same value either way"}
    with pytest.raises(ValueError, match=r"equivalent.txt:1: 'a.x_f__mutmut_1' needs a reason"):
        mutation.read_equivalent(write(tmp_path, "a.x_f__mutmut_1\n"))
    with pytest.raises(ValueError, match=r"equivalent.txt:2: 'a.x_f__mutmut_1' is listed twice"):
        mutation.read_equivalent(write(tmp_path, "a.x_f__mutmut_1 # x\na.x_f__mutmut_1 # y\n"))
    assert mutation.read_equivalent(tmp_path / "missing.txt") == {}


def test_results_are_read_from_every_meta_file(tmp_path) -> None:
    for path, codes in [
        ("a/b.py.meta", {"m.x_f__mutmut_1": 1}),
        ("c.py.meta", {"n.x_g__mutmut_1": 0}),
    ]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps({"exit_code_by_key": codes}), encoding="utf-8")
    assert mutation.read_results(tmp_path) == {"m.x_f__mutmut_1": 1, "n.x_g__mutmut_1": 0}


def test_scores_per_module_leave_reviewed_equivalents_out() -> None:
    codes = {
        f"{KEYS}.x_a__mutmut_1": 1,
        f"{KEYS}.x_a__mutmut_2": 1,
        f"{KEYS}.x_a__mutmut_3": 0,  # survived
        f"{KEYS}.x_a__mutmut_4": 0,  # survived, reviewed as equivalent
        f"{CONDUCTOR}.x_b__mutmut_1": 33,  # no test reaches it
        f"{CONDUCTOR}.x_b__mutmut_2": 36,  # timeout: the tests noticed
    }
    rows, problems = mutation.score(codes, {f"{KEYS}.x_a__mutmut_4": "why"}, [KEYS, CONDUCTOR])
    assert problems == []
    keys_row, conductor_row = rows
    assert (keys_row.mutants, keys_row.killed, keys_row.survived, keys_row.equivalent) == (
        4,
        2,
        1,
        1,
    )
    assert keys_row.scored == 3 and keys_row.score == pytest.approx(200 / 3)
    assert (conductor_row.killed, conductor_row.no_tests, conductor_row.score) == (1, 1, 50.0)
    assert mutation.overall(rows) == pytest.approx(100 * 3 / 5)
    table = mutation.table(rows)
    assert f"| {KEYS} | 4 | 2 | 1 | 0 | 1 | 66.7% |" in table.splitlines()


def test_a_stale_equivalent_list_is_a_problem() -> None:
    codes = {f"{KEYS}.x_a__mutmut_1": 1, f"{KEYS}.x_a__mutmut_2": None}
    equivalent = {f"{KEYS}.x_a__mutmut_1": "why", f"{KEYS}.x_gone__mutmut_1": "why"}
    rows, problems = mutation.score(codes, equivalent, [KEYS])
    assert problems == [
        f"listed as equivalent but no such mutant: {KEYS}.x_gone__mutmut_1",
        f"listed as equivalent but the tests kill it (take it off the list): {KEYS}.x_a__mutmut_1",
        f"not run (interrupted or skipped): {KEYS}.x_a__mutmut_2",
    ]
    # A killed mutant counts as killed even when listed.
    assert rows[0].killed == 1 and rows[0].equivalent == 0


def test_a_module_without_mutants_scores_full() -> None:
    rows, _ = mutation.score({}, {}, [KEYS])
    assert rows[0].mutants == 0 and rows[0].score == 100.0 and mutation.overall(rows) == 100.0


def test_bad_arguments_are_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        mutation.main(["--min-score", "101", "--report-only"])
    assert "--min-score must be within 0..100, got 101" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mutation.main(["--module", "ghibli_anim.cli.main", "--report-only"])
    assert "--module must be one of ghibli_anim." in capsys.readouterr().err
