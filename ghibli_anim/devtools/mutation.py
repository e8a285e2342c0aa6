"""Mutation testing of the core modules with their fast unit tests (``make mutation``).

mutmut (configured in pyproject.toml's ``[tool.mutmut]``: which modules, which tests)
makes small changes to the code one at a time -- ``<`` becomes ``<=``, a constant
moves by one, an argument is dropped -- and runs the tests that reach the changed
function. A mutant the tests fail on is *killed*; one they pass on *survived*, and is
a bug the suite would let through. This script runs mutmut on a fresh copy, then
prints, per module, mutants / killed / survived / score and, last,
``mutation_score=<overall %>``.

Some mutants cannot be killed because they do not change behaviour (an equivalent
mutant: ``x[:n]`` and ``x[:n+1]`` where the value is never longer than ``n``...).
They are listed, one line each with the reason, in ``tests/equivalent_mutants.txt``
and left out of the score. The file is checked, not trusted: a listed name that no
longer exists, or that the tests now kill, fails the run so the list cannot rot.

    python -m ghibli_anim.devtools.mutation [--min-score 90] [--report-only]

Exit status: 0 when every module reaches ``--min-score``, 1 when one does not or the
list of equivalent mutants is stale, 2 when mutmut itself failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MUTANTS_DIR = "mutants"
EQUIVALENT_FILE = Path("tests/equivalent_mutants.txt")

# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code), folded into
# what the score needs. A timeout or a crash of the test process means the tests
# noticed the change, as mutmut itself counts it.
KILLED = "killed"
SURVIVED = "survived"
NO_TESTS = "no tests"
NOT_RUN = "not run"
_OUTCOME_BY_EXIT_CODE: Mapping[int | None, str] = {
    1: KILLED,
    3: KILLED,
    36: KILLED,
    24: KILLED,
    -24: KILLED,
    152: KILLED,
    255: KILLED,
    -11: KILLED,
    -9: KILLED,
    37: KILLED,
    0: SURVIVED,
    5: NO_TESTS,
    33: NO_TESTS,
    None: NOT_RUN,
    34: NOT_RUN,
    2: NOT_RUN,
}


def outcome(exit_code: int | None) -> str:
    """What one mutant's exit code means for the score (unknown codes: suspicious)."""
    return _OUTCOME_BY_EXIT_CODE.get(exit_code, SURVIVED)


@dataclass(frozen=True)
class ModuleScore:
    module: str
    mutants: int
    killed: int
    survived: int
    no_tests: int
    equivalent: int

    @property
    def scored(self) -> int:
        """Mutants that count: every one but the reviewed equivalent ones."""
        return self.mutants - self.equivalent

    @property
    def score(self) -> float:
        return 100.0 if self.scored == 0 else 100.0 * self.killed / self.scored


def module_of(mutant: str) -> str:
    """``ghibli_anim.contracts.keys.x_check__mutmut_3`` -> ``ghibli_anim.contracts.keys``.

    Methods carry their class: ``...conductor.xǁConductorǁfail_job__mutmut_1``.
    """
    module, _, _function = mutant.rpartition(".")
    return module


def read_equivalent(path: Path) -> dict[str, str]:
    """The reviewed equivalent mutants: ``name  # why`` per line; ``#`` lines are comments.

    Raises ValueError naming the line when an entry has no reason or appears twice.
    """
    entries: dict[str, str] = {}
    if not path.exists():
        return entries
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, why = line.partition("#")
        name, why = name.strip(), why.strip()
        if not sep or not why:
            raise ValueError(f"{path}:{number}: {name!r} needs a reason after '#'")
        if name in entries:
            raise ValueError(f"{path}:{number}: {name!r} is listed twice")
        entries[name] = why
    return entries


def read_results(mutants_dir: Path) -> dict[str, int | None]:
    """Every mutant's exit code, from mutmut's ``*.meta`` files."""
    codes: dict[str, int | None] = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        codes.update(json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"])
    return codes


def score(
    codes: Mapping[str, int | None], equivalent: Mapping[str, str], modules: Iterable[str]
) -> tuple[list[ModuleScore], list[str]]:
    """Per-module scores, and the problems with the equivalent list (stale entries)."""
    problems = [
        f"listed as equivalent but no such mutant: {n}" for n in equivalent if n not in codes
    ]
    problems += [
        f"listed as equivalent but the tests kill it (take it off the list): {n}"
        for n in equivalent
        if n in codes and outcome(codes[n]) == KILLED
    ]
    problems += [
        f"not run (interrupted or skipped): {n}" for n, c in codes.items() if outcome(c) == NOT_RUN
    ]
    tallies: dict[str, Counter[str]] = {m: Counter() for m in modules}
    for name, code in codes.items():
        tally = tallies.setdefault(module_of(name), Counter())
        tally["mutants"] += 1
        if name in equivalent and outcome(code) != KILLED:
            tally["equivalent"] += 1
        else:
            tally[outcome(code)] += 1
    rows = [
        ModuleScore(
            module=m,
            mutants=t["mutants"],
            killed=t[KILLED],
            survived=t[SURVIVED],
            no_tests=t[NO_TESTS],
            equivalent=t["equivalent"],
        )
        for m, t in tallies.items()
    ]
    return rows, problems


def overall(rows: Iterable[ModuleScore]) -> float:
    rows = list(rows)
    scored = sum(r.scored for r in rows)
    return 100.0 if scored == 0 else 100.0 * sum(r.killed for r in rows) / scored


def table(rows: Iterable[ModuleScore]) -> str:
    head = ("module", "mutants", "killed", "survived", "no tests", "equivalent", "score")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r.module, r.mutants, r.killed, r.survived, r.no_tests, r.equivalent)
        lines.append("| " + " | ".join(map(str, cells)) + f" | {r.score:.1f}% |")
    return "\n".join(lines)


def configured_modules(pyproject: Path) -> list[str]:
    """The modules ``[tool.mutmut].only_mutate`` names, as dotted module names."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["mutmut"]
    return [p.removesuffix(".py").replace("/", ".") for p in config["only_mutate"]]


def run_mutmut(root: Path, only: str | None = None) -> int:
    # A fresh copy every time: mutmut keeps results between runs, and a result
    # cached from before a test changed would be a score of the wrong suite.
    shutil.rmtree(root / MUTANTS_DIR, ignore_errors=True)
    mutmut = Path(sys.executable).with_name("mutmut")
    names = [f"{only}.*"] if only else []
    return subprocess.run([str(mutmut), "run", *names], cwd=root, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--min-score", type=float, default=90.0, help="fail below this score, per module (%%)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="report the last run's results; run nothing"
    )
    parser.add_argument(
        "--module",
        metavar="MODULE",
        help="one configured module only, e.g. ghibli_anim.contracts.keys (while working on it)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.min_score <= 100.0:
        parser.error(f"--min-score must be within 0..100, got {args.min_score}")
    modules = configured_modules(REPO_ROOT / "pyproject.toml")
    if args.module is not None:
        if args.module not in modules:
            parser.error(f"--module must be one of {', '.join(modules)}; got {args.module!r}")
        modules = [args.module]

    if not args.report_only and run_mutmut(REPO_ROOT, args.module) != 0:
        print("mutmut failed (see its output above)", file=sys.stderr)
        return 2
    results = read_results(REPO_ROOT / MUTANTS_DIR)
    codes = {n: c for n, c in results.items() if module_of(n) in modules}
    if not codes:
        print(
            f"no results under {REPO_ROOT / MUTANTS_DIR}; run without --report-only",
            file=sys.stderr,
        )
        return 2
    equivalent = {
        n: why
        for n, why in read_equivalent(REPO_ROOT / EQUIVALENT_FILE).items()
        if module_of(n) in modules
    }
    rows, problems = score(codes, equivalent, modules)

    survivors = sorted(
        n for n, c in codes.items() if outcome(c) in (SURVIVED, NO_TESTS) and n not in equivalent
    )
    if survivors:
        print(f"\n{len(survivors)} mutants not killed (see one: mutmut show NAME):")
        print("\n".join(f"  {n}  [{outcome(codes[n])}]" for n in survivors))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print()
    print(table(rows))
    low = [r.module for r in rows if r.score < args.min_score]
    if low:
        print(f"below {args.min_score:g}%: {', '.join(low)}", file=sys.stderr)
    print(f"mutation_score={overall(rows):.1f}")
    return 1 if low or problems else 0


if __name__ == "__main__":
    sys.exit(main())
