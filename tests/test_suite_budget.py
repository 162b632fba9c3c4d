"""The default suite's budget, read from the durations the last `make test` recorded
(scripts/results/test_durations.json, written by tests/conftest.py): no test in the default selection may take
more than 90 s alone. A test that needs longer belongs behind `slow`, or its work is shared (one server, one
built artifact per session) or split.

OVER_BUDGET names the tests measured over the limit that are still to be split or shared; a new test over the
limit fails here, and so does an entry that is now well under it (take it off the list)."""
import json

from conftest import ROOT

DURATIONS = ROOT / "scripts" / "results" / "test_durations.json"
LIMIT_S = 90.0
DEFAULT = "not slow and not gpu"
OVER_BUDGET: set[str] = set()


def _record() -> dict:
    record = json.loads(DURATIONS.read_text())
    assert record["markexpr"] == DEFAULT, f"{DURATIONS} was recorded with -m {record['markexpr']!r}: rerun `make test`"
    return record


def _default_tests(request) -> set[str]:
    """The tests this session collected that the default suite runs."""
    return {item.nodeid for item in request.session.items
            if not {"slow", "gpu"} & {m.name for m in item.iter_markers()}}


def test_no_default_test_takes_longer_than_the_limit_alone(request):
    record = _record()
    collected = _default_tests(request)
    over = {nodeid for nodeid, t in record["tests"].items()
            if nodeid in collected and t.get("outcome") == "passed" and t.get("call", 0.0) > LIMIT_S}
    new = sorted(over - OVER_BUDGET)
    assert not new, f"over {LIMIT_S:.0f} s alone in the default suite (mark slow, share or split): {new}"
    # Clearly under the limit now (a margin, so that a noisy machine does not flip the list): off the list.
    fixed = sorted(n for n in OVER_BUDGET if n in collected and record["tests"].get(n, {}).get("outcome") == "passed"
                   and record["tests"][n].get("call", LIMIT_S) < 0.75 * LIMIT_S)
    assert not fixed, f"well under {LIMIT_S:.0f} s now: take them off OVER_BUDGET: {fixed}"


def test_the_record_covers_the_default_suite(request):
    """A record from a partial run (one file, -k) cannot speak for the suite: every test it lacks is unmeasured."""
    record = _record()
    collected = _default_tests(request)
    if len(collected) < 50:  # this file run alone (or with a few others): the session does not hold the suite
        collected = set()
    missing = sorted(collected - set(record["tests"]) - {request.node.nodeid})
    assert len(missing) <= len(collected) // 10, f"{len(missing)} default tests are not in {DURATIONS}: rerun " \
                                                  f"`make test` (first: {missing[:3]})"


def test_the_suites_commands_fork_from_the_preloaded_server():
    """A `compress` command in a fresh interpreter spends 5-8 s importing its libraries; forked from the tests'
    preloaded server (tests/zygote.py), well under one. A variable that a library sets in the test process, and that
    the server's environment lacks, sends every later command to a fresh interpreter: the record shows it."""
    commands = _record()["commands"]
    ran = commands["forked"] + commands["fresh"]
    assert ran > 100, commands
    assert commands["fresh"] <= 0.1 * ran, f"{commands['fresh']} of {ran} commands ran in a fresh interpreter, " \
                                           f"for these variables: {commands['fresh_because']}"
