"""The config-weighted self-play distribution: the largest-remainder split (exact sums,
deterministic ties, a property test), the ``distribution`` command, and rule ``config_share``
(off by default; on, a config over its share of a node's self-play slots is refused), on both
engines through the real ``can-spawn`` / ``register`` / ``run`` commands."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import pytest
from conftest import Coord
from hypothesis import given, settings
from hypothesis import strategies as st

from ringrift_coord.optimizer.distribution import split

ENGINES = ("sqlite", "postgres")

DEFAULT_SHARES_10 = {
    "square8_2p": 4,
    "square8_3p": 1,
    "square8_4p": 1,
    "square19_2p": 2,
    "hexagonal_2p": 2,
}


# --------------------------------------------------------------------------- split


def test_split_examples() -> None:
    assert split(10, {"a": 0.4, "b": 0.1, "c": 0.1, "d": 0.2, "e": 0.2}) == {
        "a": 4,
        "b": 1,
        "c": 1,
        "d": 2,
        "e": 2,
    }
    # 7 × (0.4, 0.1, 0.1, 0.2, 0.2) = 2.8, 0.7, 0.7, 1.4, 1.4: floors 2,0,0,1,1 (4), three
    # left: to a (.8), then b and c (.7 each; equal weights: by name)
    assert split(7, {"a": 0.4, "b": 0.1, "c": 0.1, "d": 0.2, "e": 0.2}) == {
        "a": 3,
        "b": 1,
        "c": 1,
        "d": 1,
        "e": 1,
    }
    # equal remainders: the larger weight first, then the name
    assert split(1, {"x": 1, "y": 1}) == {"x": 1, "y": 0}
    assert split(1, {"y": 1, "x": 1}) == {"x": 1, "y": 0}
    # 3 × (2, 1, 1, 2) / 6 = 1, .5, .5, 1: the one left goes to a (equal weights: by name)
    assert split(3, {"big": 2, "a": 1, "b": 1, "c": 2}) == {"big": 1, "a": 1, "b": 0, "c": 1}
    assert split(2, {"heavy": 3, "light": 1, "other": 0}) == {"heavy": 2, "light": 0, "other": 0}
    assert split(0, {"a": 1, "b": 2}) == {"a": 0, "b": 0}
    assert split(5, {"a": 1, "z": 0}) == {"a": 5, "z": 0}  # weight 0: nothing, even leftovers
    assert split(1, {"a": 0.1, "b": 0.2, "c": 0.3}) == {"a": 0, "b": 0, "c": 1}


def test_split_ties_by_weight_then_name() -> None:
    shares = split(5, {"c": 1, "b": 1, "a": 1})
    assert shares == {"a": 2, "b": 2, "c": 1}  # 5/3 each: floors 1, two left, by name
    # remainders tie (each 0.5) between weights 1 and 3 of a 4-unit whole: 2 × (1/4, 3/4) =
    # 0.5, 1.5: the larger weight takes the unit
    assert split(2, {"small": 1, "large": 3}) == {"small": 0, "large": 2}


@pytest.mark.parametrize(
    ("total", "weights"),
    [
        (5, {"a": 0, "b": 0}),
        (5, {}),
        (5, {"a": -1, "b": 2}),
        (5, {"a": float("nan")}),
        (5, {"a": float("inf")}),
        (-1, {"a": 1}),
        (1.5, {"a": 1}),
        (True, {"a": 1}),
    ],
)
def test_split_refuses(total, weights) -> None:  # noqa: ANN001
    with pytest.raises(ValueError):
        split(total, weights)


WEIGHTS = st.dictionaries(
    st.text(alphabet="abcdefgh_0123456789", min_size=1, max_size=6),
    st.one_of(
        st.just(0.0),
        st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False),
        st.integers(min_value=0, max_value=1000),
    ),
    min_size=1,
    max_size=12,
).filter(lambda w: any(v > 0 for v in w.values()))


@settings(max_examples=400, deadline=None)
@given(total=st.integers(min_value=0, max_value=100_000), weights=WEIGHTS)
def test_split_properties(total: int, weights: dict[str, float]) -> None:
    """The parts sum exactly to the total, each within one of its exact quota (floor or
    ceiling), weight 0 gets 0, and the answer does not depend on the order of the weights.
    (Monotony in the total is not a property of Hamilton's method: the Alabama paradox.)"""
    shares = split(total, weights)
    assert set(shares) == set(weights)
    assert sum(shares.values()) == total
    whole = sum(Fraction(w) for w in weights.values())
    for name, weight in weights.items():
        quota = total * Fraction(weight) / whole
        assert quota - 1 < shares[name] < quota + 1, (name, quota, shares[name])
        assert shares[name] >= 0
        if weight == 0:
            assert shares[name] == 0
    assert split(total, dict(reversed(list(weights.items())))) == shares


def test_the_alabama_paradox_is_real() -> None:
    """Why monotony is not asserted: one more unit can leave a part with one fewer."""
    weights = {"a": 6, "b": 6, "c": 2}
    assert split(10, weights)["c"] == 2  # 4.29, 4.29, 1.43: floors 4,4,1, one left to c
    assert split(11, weights)["c"] == 1  # 4.71, 4.71, 1.57: floors 4,4,1, two left to a, b


# --------------------------------------------------------------------------- the command


def test_distribution_of_the_rate(coord: Coord) -> None:
    done = coord("--json", "distribution", "--rate", "10")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["total"], doc["unit"], doc["basis"], doc["node"]) == (
        10,
        "games_per_hour",
        "given rate",
        None,
    )
    assert {p["config"]: p["share"] for p in doc["parts"]} == DEFAULT_SHARES_10
    assert [p["weight"] for p in doc["parts"]] == [0.4, 0.1, 0.1, 0.2, 0.2]

    # the current rate: none without a store (a read-only command creates none) ...
    if coord.engine == "sqlite":  # a PostgreSQL database is there once the server is
        missing = coord("distribution")
        assert missing.returncode == 3 and "no store" in missing.stderr, missing.stderr
    # ... the initial one, then a negotiated one, rounded to whole games
    assert coord("report", "--node", "n1", "--cpu", "10").returncode == 0
    doc = json.loads(coord("--json", "distribution").stdout)
    assert (doc["total"], doc["basis"]) == (1000, "initial rate")
    assert coord("rate", "negotiate", "1001.6", "--reason", "r", "--requestor", "q").returncode == 0
    doc = json.loads(coord("--json", "distribution").stdout)
    assert (doc["total"], doc["basis"]) == (1002, "current rate")
    assert sum(p["share"] for p in doc["parts"]) == 1002

    text = coord("distribution", "--rate", "1000")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[:3] == [
        "1000 self-play games/h (given rate)",
        "config        weight  share",
        "square8_2p    0.4     400",
    ]


def test_distribution_of_a_node(coord: Coord) -> None:
    coord.write_config(
        """
        task_limits: {selfplay: {per_node: 12}}
        selfplay_configs: {square8_2p: 3, hexagonal_2p: 1, square19_2p: 0}
        """
    )
    assert coord("report", "--node", "other", "--cpu", "10").returncode == 0  # a store
    # no reading: the per-node limit
    doc = json.loads(coord("--json", "distribution", "--node", "n1").stdout)
    assert (doc["total"], doc["unit"], doc["basis"], doc["node"]) == (
        12,
        "slots",
        "per-node limit",
        "n1",
    )
    assert [(p["config"], p["share"]) for p in doc["parts"]] == [
        ("square8_2p", 9),
        ("hexagonal_2p", 3),
        ("square19_2p", 0),
    ]
    # a reported RTX 3070 (cap 4) bounds it
    assert coord("report", "--node", "n1", "--cpu", "20", "--gpu-name", "RTX 3070",
                 "--gpu-count", "1", "--cpus", "16").returncode == 0  # fmt: skip
    doc = json.loads(coord("--json", "distribution", "--node", "n1").stdout)
    assert (doc["total"], doc["basis"]) == (4, "hardware cap")
    # the optimizer's target, once a rate is set: ceil(4 × 1250 / 5000) = 1
    assert coord("rate", "negotiate", "2000", "--reason", "r", "--requestor", "q").returncode == 0
    doc = json.loads(coord("--json", "distribution", "--node", "n1").stdout)
    assert (doc["total"], doc["basis"]) == (1, "optimizer target")
    assert [p["share"] for p in doc["parts"]] == [1, 0, 0]
    text = coord("distribution", "--node", "n1")
    assert text.stdout.splitlines()[0] == "1 self-play slots on n1 (optimizer target)"


@pytest.mark.parametrize(
    ("config", "argv", "code", "message"),
    [
        ("{}\n", ("distribution", "--rate", "x"), 2, "option --rate: 'x' is not a number"),
        ("{}\n", ("distribution", "--rate", "-5"), 2, "option --rate"),
        ("{}\n", ("distribution", "--rate", "0"), 2, "option --rate"),
        ("{}\n", ("distribution", "--rate", "5", "--node", "n"), 2, "not both"),
        ("{}\n", ("distribution", "--node", " "), 2, "option --node must not be empty"),
        (
            "selfplay_configs: {a: 0, b: 0}\n",
            ("distribution", "--rate", "5"),
            3,
            "selfplay_configs.a: every weight is 0",
        ),
        (
            "task_limits: {selfplay: {per_node: null}}\n",
            ("distribution", "--node", "nowhere"),
            3,
            "node nowhere has no self-play slots known",
        ),
    ],
)
def test_distribution_errors(coord: Coord, config: str, argv, code: int, message: str) -> None:  # noqa: ANN001
    coord.write_config(config)
    assert coord("report", "--node", "other", "--cpu", "1").returncode == 0  # a store exists
    done = coord(*argv)
    assert done.returncode == code, (done.stdout, done.stderr)
    (line,) = done.stderr.splitlines()
    assert message in line and "Traceback" not in done.stderr, line


# --------------------------------------------------------------------------- rule config_share

SHARES_CONFIG = """
task_limits: {selfplay: {per_node: 4}}
selfplay_configs: {square8_2p: 3, hexagonal_2p: 1, square19_2p: 0}
"""  # 4 slots: square8_2p 3, hexagonal_2p 1, square19_2p 0


def _fill(coord: Coord, holder: int, config: str, count: int) -> None:
    for _ in range(count):
        done = coord(
            "register", "selfplay", "--node", "n1", "--pid", str(holder), "--config-name", config
        )
        assert done.returncode == 0, done.stderr


def test_config_share_off_by_default(coord: Coord) -> None:
    coord.write_config(SHARES_CONFIG)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _fill(coord, holder.pid, "hexagonal_2p", 2)  # over its share of 1: not enforced
        _fill(coord, holder.pid, "square19_2p", 1)  # weight 0: not enforced either
        done = coord("--json", "can-spawn", "selfplay", "--node", "n1", "--config-name",
                     "hexagonal_2p")  # fmt: skip
        assert done.returncode == 0, done.stdout
        assert json.loads(done.stdout)["allowed"] is True
    finally:
        holder.kill()
        holder.wait()


def test_config_share_enforced(coord: Coord) -> None:
    coord.write_config(SHARES_CONFIG + "optimizer: {enforce_config_shares: true}\n")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _fill(coord, holder.pid, "hexagonal_2p", 1)
        done = coord("--json", "can-spawn", "selfplay", "--node", "n1", "--config-name",
                     "hexagonal_2p")  # fmt: skip
        assert done.returncode == 1, (done.stdout, done.stderr)
        doc = json.loads(done.stdout)
        (reason,) = doc["reasons"]
        assert reason["rule"] == "config_share"
        assert (reason["requested"], reason["used"], reason["limit"]) == (1, 1, 1)
        assert reason["details"] == {
            "config": "hexagonal_2p",
            "share": 1,
            "slots": 4,
            "basis": "per-node limit",
        }
        assert isinstance(doc["retry_after"], (int, float))
        text = coord("can-spawn", "selfplay", "--node", "n1", "--config-name", "hexagonal_2p")
        assert text.returncode == 1
        assert "1 hexagonal_2p running + 1 requested > its share 1 of the 4 self-play slots " \
            "on n1 (per-node limit)" in text.stderr  # fmt: skip
        refused = coord("register", "selfplay", "--node", "n1", "--pid", str(holder.pid),
                        "--config-name", "hexagonal_2p")  # fmt: skip
        assert refused.returncode == 1 and "its share 1 of the 4" in refused.stderr
        # weight 0: its share is 0 of any node
        zero = coord("can-spawn", "selfplay", "--node", "n1", "--config-name", "square19_2p")
        assert zero.returncode == 1 and "its share 0 of the 4" in zero.stderr
        # other configs, configs not listed and no config name are not limited by it
        for extra in (("--config-name", "square8_2p"), ("--config-name", "custom"), ()):
            ok = coord("can-spawn", "selfplay", "--node", "n1", *extra)
            assert ok.returncode == 0, (extra, ok.stderr)
        _fill(coord, holder.pid, "square8_2p", 3)  # its share of 3 is full now
        full = coord("--json", "can-spawn", "selfplay", "--node", "n1", "--config-name",
                     "square8_2p")  # fmt: skip
        assert full.returncode == 1
        rules = {r["rule"] for r in json.loads(full.stdout)["reasons"]}
        assert rules == {"node_limit", "config_share"}  # 4 of 4 running, and 3 of its 3
        # run is refused the same way (exit 75: no slot), before the command runs
        run = coord("run", "selfplay", "--node", "n2", "--config-name", "square19_2p", "--",
                    "sh", "-c", "echo ran")  # fmt: skip
        assert run.returncode == 75 and "ran" not in run.stdout + run.stderr
        assert "its share 0 of the 4 self-play slots on n2" in run.stderr
    finally:
        holder.kill()
        holder.wait()


USED_BELOW = " (ignored: this command goes on with the values below it)"
UNUSED = " (ignored: this command does not use it)"


def test_a_bad_selfplay_configs_is_read_by_admission_while_shares_are_enforced(
    coord: Coord,
) -> None:
    """Rule config_share reads ``selfplay_configs`` while ``enforce_config_shares`` is on: a
    bad value there leaves the layers below in force, and admission's warning says so,
    never that the command does not use the section; with the rule off it does not."""
    bad = "selfplay_configs: {square8_2p: -1}\ntask_limits: {selfplay: {per_node: 1}}\n"
    coord.write_config(bad + "optimizer: {enforce_config_shares: true}\n")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        ask = ("selfplay", "--node", "n1", "--config-name", "square19_2p")
        for argv in (
            ("--json", "can-spawn", *ask),
            ("can-spawn", *ask),
            ("register", *ask, "--pid", str(holder.pid)),
            ("run", *ask, "--", "true"),
        ):
            done = coord(*argv)
            (warning,) = [x for x in done.stderr.splitlines() if "warning:" in x]
            assert "selfplay_configs.square8_2p" in warning and warning.endswith(USED_BELOW), (
                argv,
                warning,
            )
        # read indeed: the default weights give n1's one slot to square8_2p, none to this
        (reason,) = _share_reasons(coord("--json", "can-spawn", *ask))
        assert reason["limit"] == 0 and reason["details"]["slots"] == 1
        coord.write_config(bad)  # the rule off: nothing reads the section
        done = coord("can-spawn", *ask)
        assert done.returncode == 0 and done.stderr.rstrip("\n").endswith(UNUSED), done.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_bad_optimizer_section_is_read_by_admission_its_switch_falls_back(coord: Coord) -> None:
    """The optimizer section holds a switch of admission's rules (``enforce_config_shares``):
    a bad value elsewhere in it sends the whole section to the layers below (the switch off
    by default), and admission's warning says it goes on with those, never that it does not
    use the section; a command that does not admit still says so."""
    coord.write_config(
        "selfplay_configs: {square8_2p: 1}\ntask_limits: {selfplay: {per_node: 1}}\n"
        "optimizer: {enforce_config_shares: true, interval: -5}\n"
    )
    ask = ("selfplay", "--node", "n1", "--config-name", "square19_2p")
    done = coord("can-spawn", *ask)
    (warning,) = [x for x in done.stderr.splitlines() if "warning:" in x]
    assert "optimizer.interval" in warning and warning.endswith(USED_BELOW), warning
    # the switch fell back to off: the share rule does not refuse the other config
    assert done.returncode == 0 and _share_reasons(coord("--json", "can-spawn", *ask)) == []
    listed = coord("tasks")
    assert listed.stderr.rstrip("\n").endswith(UNUSED), listed.stderr


def _share_reasons(done: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    """The decision's config_share reasons (other rules may refuse too)."""
    return [r for r in json.loads(done.stdout)["reasons"] if r["rule"] == "config_share"]


def test_config_share_follows_the_optimizer_target(coord: Coord) -> None:
    """The node's slots are its optimizer target while one is in force, else the per-node
    limit bounded by its hardware cap."""
    coord.write_config(
        "selfplay_configs: {square8_2p: 3, hexagonal_2p: 1}\n"
        "optimizer: {enforce_config_shares: true}\n"
    )
    reported = coord("report", "--node", "n1", "--cpu", "20", "--gpu-name", "RTX 3070",
                     "--gpu-count", "1", "--cpus", "16")  # fmt: skip
    assert reported.returncode == 0, reported.stderr
    ask = ("--json", "can-spawn", "selfplay", "--node", "n1", "--config-name")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _fill(coord, holder.pid, "hexagonal_2p", 1)  # its share of the cap 4 is 1
        (reason,) = _share_reasons(coord(*ask, "hexagonal_2p"))
        assert reason["details"] == {
            "config": "hexagonal_2p",
            "share": 1,
            "slots": 4,
            "basis": "hardware cap",
        }
        # a negotiated rate of 1250 sets n1's target to ceil(4 × 1250 / 5000) = 1, all of
        # it square8_2p's (the larger weight)
        negotiated = coord("rate", "negotiate", "2000", "--reason", "r", "--requestor", "q")
        assert negotiated.returncode == 0, negotiated.stderr
        (reason,) = _share_reasons(coord(*ask, "hexagonal_2p"))
        assert (reason["used"], reason["limit"]) == (1, 0)
        assert reason["details"] == {
            "config": "hexagonal_2p",
            "share": 0,
            "slots": 1,
            "basis": "optimizer target",
        }
        assert _share_reasons(coord(*ask, "square8_2p")) == []  # 0 running of its share 1
    finally:
        holder.kill()
        holder.wait()


REFERENCE_WEIGHTS = {
    "square8_2p": 0.4,
    "square8_3p": 0.1,
    "square8_4p": 0.1,
    "square19_2p": 0.2,
    "hexagonal_2p": 0.2,
}


def test_a_nodes_salt_breaks_equal_remainders_its_own_way() -> None:
    """5 slots: 2, 0.5, 0.5, 1, 1: the last slot goes to square8_3p or square8_4p. By name it
    is square8_3p on every node (square8_4p could never run anywhere); salted by the node's
    name, each node breaks the tie its own way, the same way every time."""
    assert split(5, REFERENCE_WEIGHTS)["square8_3p"] == 1
    winners = set()
    for i in range(16):
        shares = split(5, REFERENCE_WEIGHTS, f"n{i}")
        assert sum(shares.values()) == 5 and shares["square8_2p"] == 2
        assert shares["square19_2p"] == shares["hexagonal_2p"] == 1
        assert shares == split(5, REFERENCE_WEIGHTS, f"n{i}")  # deterministic
        (winner,) = [c for c in ("square8_3p", "square8_4p") if shares[c] == 1]
        winners.add(winner)
    assert winners == {"square8_3p", "square8_4p"}


def test_distribution_of_a_node_is_the_split_its_rule_enforces(coord: Coord) -> None:
    coord.write_config(
        "task_limits: {selfplay: {per_node: 5}}\noptimizer: {enforce_config_shares: true}\n"
    )
    assert coord("tasks", "reap").returncode == 0  # a store (distribution only reads)
    seen = set()
    for i in range(8):
        node = f"n{i}"
        shown = coord("--json", "distribution", "--node", node)
        assert shown.returncode == 0, shown.stderr
        shares = {p["config"]: p["share"] for p in json.loads(shown.stdout)["parts"]}
        assert shares == split(5, REFERENCE_WEIGHTS, node)
        for config in ("square8_3p", "square8_4p"):
            done = coord("--json", "can-spawn", "selfplay", "--node", node, "--config-name", config)
            assert done.returncode == (0 if shares[config] else 1), (node, config, done.stdout)
            if shares[config] == 0:
                (reason,) = _share_reasons(done)
                assert reason["limit"] == 0 and json.loads(done.stdout)["retry_after"] is None
            else:
                seen.add(config)
    assert seen == {"square8_3p", "square8_4p"}  # each runs on some node
