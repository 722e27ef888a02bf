"""The alert rules and the Grafana dashboard under monitoring/: checked by promtool, unit-tested
by promtool with a case per alert, and every ringrift_* series they read is one the package
exports.

promtool is Debian's `prometheus` package (.ci/run installs it); the tests that run it skip
without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import Coord, wait_for
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "monitoring" / "prometheus" / "rules"
RULES = RULES_DIR / "coordinator_alerts.yml"
RULES_TEST = RULES_DIR / "coordinator_alerts_test.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "coordinators.json"
README = (ROOT / "README.md").read_text()

SEVERITIES = {"critical", "warning", "info"}
METRIC = re.compile(r"\bringrift_[a-z0-9_]+\b")


def populate(coord: Coord) -> None:
    """A store with something in every area the rules and the dashboard read."""
    pid = str(os.getpid())
    steps = [
        ("report", "--node", "gpu-1", "--cpu", "50", "--gpu", "90", "--mem", "40", "--disk", "30"),
        ("report", "--node", "gpu-2", "--cpu", "40", "--gpu", "60", "--mem", "30", "--disk", "20"),
        ("report", "--node", "cpu-1", "--cpu", "65", "--mem", "20", "--disk", "10"),
        *[
            ("register", "selfplay", "--node", "gpu-2", "--pid", pid, "--task-id", f"sp{i}")
            for i in range(4)
        ],
        ("unregister", "sp0", "--status", "oom"),
        ("unregister", "sp1", "--status", "oom"),  # the second OOM lowers gpu-2's cap
        ("halt", "--node", "cpu-2", "--reason", "maintenance"),
        *[("breakers", "record-failure", "--type", "training", "--node", "gpu-1")] * 3,
        ("bandwidth", "start", "backup-host", "--kind", "data"),
        ("adjust",),
    ]
    for args in steps:
        result = coord(*args)
        assert result.returncode == 0, (args, result.stderr)
    assert coord("can-spawn", "training", "--node", "gpu-1").returncode == 1  # a denial
    xfer = coord("bandwidth", "start", "backup-host", "--kind", "model").stdout.strip()
    assert coord("bandwidth", "end", xfer, "--bytes", "1000000").returncode == 0


def exported(coord: Coord) -> dict[str, list[dict[str, str]]]:
    """What `ringrift-coord metrics` exports: each name (a family's TYPE name, a counter's with
    its _total, and every sample's name) with the label sets of its samples."""
    result = coord("metrics")
    assert result.returncode == 0, result.stderr
    names: dict[str, list[dict[str, str]]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("# TYPE "):
            names.setdefault(line.split()[2], [])
    for family in text_string_to_metric_families(result.stdout):
        for sample in family.samples:
            names.setdefault(sample.name, []).append(dict(sample.labels))
    return names


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt install prometheus)")
    return found


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def load_rules(path: Path = RULES) -> list[dict]:
    doc = yaml.safe_load(path.read_text())
    assert len(doc["groups"]) == 1, "one group of ringrift-coord alerts"
    return list(doc["groups"][0]["rules"])


ALERTS = [rule["alert"] for rule in load_rules()]


def strings_in(node: object) -> list[str]:
    """Every string anywhere in a parsed YAML/JSON document."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings_in(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings_in(value)]
    return []


def readme_anchors() -> set[str]:
    """GitHub's anchors of README's headings: lower case, punctuation dropped, - for spaces."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", README, flags=re.S), re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


# --------------------------------------------------------------------------- alert rules


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_rules_pass_their_promtool_unit_tests(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", RULES_TEST.name, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_cover_every_alert_both_ways() -> None:
    doc = yaml.safe_load(RULES_TEST.read_text())
    assert doc["rule_files"] == [RULES.name]
    fires: set[str] = set()
    silent: set[str] = set()
    for group in doc["tests"]:
        for case in group["alert_rule_test"]:
            name = case["alertname"]
            # a case for a name that is not an alert passes without testing anything
            assert name in ALERTS, f"{RULES_TEST.name} tests {name}: no such alert"
            (fires if case["exp_alerts"] else silent).add(name)
    assert not set(ALERTS) - fires, f"no case where these fire: {set(ALERTS) - fires}"
    assert not set(ALERTS) - silent, f"no case where these stay silent: {set(ALERTS) - silent}"


@pytest.mark.parametrize("alert", ALERTS)
def test_firing_case_fails_when_the_alert_cannot_fire(
    promtool: str, tmp_path: Path, alert: str
) -> None:
    """Each alert's firing case really tests it: with its expression replaced by one that never
    returns anything, promtool's unit tests fail, and name that alert."""
    doc = yaml.safe_load(RULES.read_text())
    for rule in doc["groups"][0]["rules"]:
        if rule["alert"] == alert:
            rule["expr"] = "vector(1) == 0"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    result = run_promtool(promtool, "test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    failed = set(re.findall(r"alertname: (\w+),", result.stdout + result.stderr))
    assert failed == {alert}, result.stdout + result.stderr


@pytest.mark.parametrize("rule", load_rules(), ids=ALERTS)
def test_rule_labels_annotations_and_runbook(rule: dict) -> None:
    assert re.fullmatch(r"Ringrift[A-Za-z]+", rule["alert"])
    assert rule["labels"]["severity"] in SEVERITIES
    notes = rule["annotations"]
    assert notes["summary"].strip() and notes["description"].strip()
    page, _, anchor = notes["runbook"].partition("#")
    assert page == "README.md" and anchor in readme_anchors(), notes["runbook"]
    # `for:` short enough to matter, long enough not to page on one scrape
    if "for" in rule:
        minutes = int(re.fullmatch(r"(\d+)m", rule["for"]).group(1))  # type: ignore[union-attr]
        assert 1 <= minutes <= 30


def test_every_alert_explained_in_readme() -> None:
    body = re.split(r"\n##+ ", README.split("\n### Alerts and dashboard\n", 1)[1], maxsplit=1)[0]
    for alert in ALERTS:
        assert f"`{alert}`" in body, f"README's Alerts and dashboard does not explain {alert}"
    assert "promtool check rules" in body and "promtool test rules" in body


# --------------------------------------------------------------------------- dashboard


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return found


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = dashboard()
    assert board["title"] and board["uid"]
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    node = variables["node"]
    assert node["type"] == "query"
    assert node["definition"] == "label_values(ringrift_tasks, node)"
    assert node["query"]["query"] == node["definition"]
    assert node["includeAll"] and node["allValue"] == ".*"
    # every query goes to the chosen Prometheus, nothing names a data source of one install
    for where in [node, *panels(board)]:
        if "datasource" in where:
            assert where["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        for target in where.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_dashboard_panels_have_unique_ids_and_targets() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no target"
        assert all(t["expr"].strip() for t in targets), panel["title"]
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_dashboard_shows_every_area() -> None:
    """The panels the issue asks for, each by the series it reads."""
    exprs = " ".join(t["expr"] for p in panels(dashboard()) for t in p.get("targets", []))
    for name in [
        "ringrift_cluster_cpu_utilization",  # utilization vs target band
        "ringrift_cpu_in_target_range",
        "ringrift_task_cluster_limit",  # tasks vs limits per type
        "ringrift_tasks",  # tasks per node
        "ringrift_waiters",
        "ringrift_halt_active",
        "ringrift_breaker_state",
        "ringrift_denials_total",
        "ringrift_backpressure_factor",
        "ringrift_lowered_cap",
        "ringrift_selfplay_rate_games_per_hour",
        "ringrift_transfers",
        "ringrift_transfer_bandwidth_allocated_bytes_per_second",
        "ringrift_node_reading_age_seconds",
        "ringrift_optimization_action",
        "ringrift_optimization_confidence",
    ]:
        assert re.search(rf"\b{name}\b", exprs), f"no panel reads {name}"


def grafana_to_promql(expr: str) -> str:
    """A panel's query as Prometheus sees it once Grafana has put in its variables."""
    return (
        expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$node", ".*")
    )


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Every panel's query parses: promtool checks them as recording rules."""
    exprs = [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]
    rules = [
        {"record": f"ringrift:dashboard_query_{i}", "expr": grafana_to_promql(expr)}
        for i, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- the names


def queried_names() -> dict[str, set[str]]:
    """Each ringrift_* name the rules (expressions and annotation templates) and the dashboard
    (panel queries and template variables) read, with where."""
    found: dict[str, set[str]] = {}
    for text in strings_in(yaml.safe_load(RULES.read_text())):
        for name in METRIC.findall(text):
            found.setdefault(name, set()).add(RULES.name)
    board = dashboard()
    queries = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            queries += strings_in(variable["query"])
    for text in queries:
        for name in METRIC.findall(text):
            found.setdefault(name, set()).add(DASHBOARD.name)
    return found


def test_rules_and_dashboard_read_only_exported_series(coord: Coord) -> None:
    populate(coord)
    series = exported(coord)
    queried = queried_names()
    assert len(queried) >= 25, sorted(queried)  # the scan itself finds them
    missing = {name: sorted(where) for name, where in queried.items() if name not in series}
    assert not missing, f"queried but not exported by ringrift-coord metrics: {missing}"
    # the labels the alerts' templates and the dashboard's legends read are on real samples
    for name, labels in [
        ("ringrift_halt_active", {"scope", "type", "node"}),
        ("ringrift_breaker_opened_timestamp_seconds", {"type", "node"}),
        ("ringrift_breaker_state", {"type", "node", "state"}),
        ("ringrift_denials_total", {"rule", "type", "node"}),
        ("ringrift_node_critical", {"node", "resource"}),
        ("ringrift_node_utilization", {"node", "resource"}),
        ("ringrift_node_reading_age_seconds", {"node"}),
        ("ringrift_tasks", {"type", "node"}),
        ("ringrift_lowered_cap", {"type", "node"}),
        ("ringrift_transfer_bytes_total", {"remote"}),
        ("ringrift_transfers", {"remote"}),
        ("ringrift_optimization_action", {"action"}),
    ]:
        assert series[name], f"the populated store gives no {name} sample"
        assert all(set(sample) == labels for sample in series[name]), (name, series[name])
    for name in ["ringrift_halted", "ringrift_cpu_in_target_range", "ringrift_store_up"]:
        assert series[name] == [{}], (name, series[name])
    assert {"node": "cpu-2", "scope": "node", "type": "all"} in series["ringrift_halt_active"]


# --------------------------------------------------------------------------- a real Prometheus


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def prometheus(coord: Coord, tmp_path: Path):  # noqa: ANN201
    """A real Prometheus (loopback only) with the rules loaded, scraping the exposition of a
    populated store (`metrics --textfile`, served as a file) in the job `ringrift-coord`, and
    a target that is down in the job `ringrift-coord-down`. Yields its API's base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian: apt install prometheus)")
    populate(coord)
    served = tmp_path / "served"
    served.mkdir()
    assert coord("metrics", "--textfile", str(served / "ringrift.prom")).returncode == 0
    web, api = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "ringrift-coord",
                "metrics_path": "/ringrift.prom",
                "static_configs": [{"targets": [f"127.0.0.1:{web}"]}],
            },
            {
                "job_name": "ringrift-coord-down",
                "static_configs": [{"targets": [f"127.0.0.1:{free_port()}"]}],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(web)],
            cwd=served,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{api}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prometheus.log").open("w"),
        ),
    ]
    base = f"http://127.0.0.1:{api}"

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(ready, 60, "Prometheus to be ready")
        yield base
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def eventually(predicate: Callable[[], object], what: str, timeout: float = 60) -> object:
    """``wait_for`` at a pace a Prometheus on a busy 2-core box does not mind."""

    def paced() -> object:
        value = predicate()
        if not value:
            time.sleep(0.25)
        return value

    return wait_for(paced, timeout, what)


def query(base: str, expr: str) -> list[dict]:
    answer = get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


def test_real_prometheus_evaluates_the_rules_on_real_metrics(prometheus: str) -> None:
    """The store has a node halt, a GPU node at 90 % (critical; the GPU mean in the band and
    steered by, the CPU mean below its band: no alert for it) and a breaker just opened (not
    closed: pending for 30 minutes, not open too long); one ringrift target is down. Those
    alerts go pending (their `for:` has not passed), with the labels and descriptions the
    real series give; the others stay quiet."""

    def active() -> dict[str, list[dict]]:
        alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
        found: dict[str, list[dict]] = {}
        for alert in alerts:
            found.setdefault(alert["labels"]["alertname"], []).append(alert)
        return found

    # the CPU mean is below its band, but the optimizer steers by GPU here (GPU is the
    # resource furthest above its target): RingriftCpuOutOfTargetBand stays quiet
    expected = {
        "RingriftHaltActive",
        "RingriftNodeCritical",
        "RingriftBreakerReopening",
        "RingriftCoordinatorDown",
    }
    alerts = eventually(lambda: (found := active()).keys() >= expected and found, "alerts")
    assert isinstance(alerts, dict)
    assert set(alerts) == expected, sorted(alerts)
    rules = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"][0]["rules"]
    assert {rule["name"] for rule in rules} == set(ALERTS)
    assert all(rule["health"] == "ok" for rule in rules), rules

    (halt,) = alerts["RingriftHaltActive"]
    assert halt["state"] == "pending" and halt["labels"]["job"] == "ringrift-coord"
    assert "In force: [scope=node type=all node=cpu-2] (a" in halt["annotations"]["description"]
    (critical,) = alerts["RingriftNodeCritical"]
    assert critical["labels"]["node"] == "gpu-1" and critical["labels"]["resource"] == "gpu"
    assert "7 minutes, two reports in a row (now 90%)" in critical["annotations"]["description"]
    steered = query(prometheus, "ringrift_optimization_resource == 1")
    assert {r["metric"]["resource"] for r in steered} == {"gpu"}
    (breaker,) = alerts["RingriftBreakerReopening"]
    assert (breaker["labels"]["type"], breaker["labels"]["node"]) == ("training", "gpu-1")
    assert "state" not in breaker["labels"]
    (down,) = alerts["RingriftCoordinatorDown"]
    assert down["labels"]["job"] == "ringrift-coord-down"


def test_real_prometheus_answers_every_dashboard_query(prometheus: str) -> None:
    """Every panel's query runs on the real series of a populated store and returns data, but
    for the two series the store has nothing for."""
    wait_for(lambda: query(prometheus, "count(up) >= 2 and count(ringrift_tasks) > 0"), 60, "")
    # two scrapes at least, so rate() has two points
    wait_for(lambda: query(prometheus, "rate(ringrift_denials_total[1m])"), 60, "two scrapes")
    empty = set()
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            expr = grafana_to_promql(target["expr"]).replace("[5m]", "[1m]")
            if not query(prometheus, expr):
                empty.add(METRIC.search(expr).group(0))  # type: ignore[union-attr]
    # no launcher waits here, and a manual report has no GPU memory figure
    # no waiter, GPU memory figure, reservation or queued transfer in that store
    assert empty == {
        "ringrift_waiters",
        "ringrift_cluster_gpu_memory_utilization",
        "ringrift_reserved_slots",
        "ringrift_transfer_waiters",
    }, empty
