"""The fly.io launcher against a stand-in Machines API that checks every request against fly's documentation.

Every test ends with the stand-in reporting no violation (the `fly_api` fixture checks), so passing here
means the launcher sent only requests the real API documents, at the documented rates.
"""

from __future__ import annotations

import argparse
import json
import pickle
import socket
import time
import urllib.error
import urllib.request

import pytest
from fly_api import StandIn

import lucidity.fly as fly
from lucidity.errors import LucidityError

SECRET = "s3cret-" + "x" * 30
CONTROL = "e2865013e00d68.vm.lucidity-test.internal:3030"
IMAGE = "registry.fly.io/lucidity-test:deployment-01H9RK9EYO9PGNBYAKGXSHV0PH"
FLY_VARIABLES = ["FLY_APP_NAME", "FLY_MACHINE_ID", "FLY_IMAGE_REF", "FLY_REGION", "FLY_API_HOSTNAME", "FLY_API_TOKEN",
                 "LUCIDITY_ADDRESS", "LUCIDITY_SECRET", "LUCIDITY_SECRET_FILE"]


@pytest.fixture
def fly_api(monkeypatch):
    """The stand-in, with the environment a caller would have: token, API URL, app, control and secret."""
    for name in FLY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with StandIn() as api:
        monkeypatch.setenv("FLY_API_HOSTNAME", api.url)
        monkeypatch.setenv("FLY_API_TOKEN", api.token)
        monkeypatch.setenv("FLY_APP_NAME", api.app)
        monkeypatch.setenv("LUCIDITY_ADDRESS", CONTROL)
        monkeypatch.setenv("LUCIDITY_SECRET", SECRET)
        yield api
        assert api.violations == []


def cli(*argv: str) -> int:
    """`lucidity fly ...` through a parser built the way lucidity/cli.py builds its own."""
    parser = argparse.ArgumentParser(prog="lucidity")
    commands = parser.add_subparsers(dest="command", required=True)
    fly.add_command(commands)
    return fly.run(parser.parse_args(["fly", *argv]))


@pytest.mark.timeout(30)
def test_ensure_nodes_creates_n_machines_with_the_node_config(fly_api):
    nodes = fly.ensure_nodes(3, image=IMAGE)

    assert [n.name for n in nodes] == ["lucidity-node-1", "lucidity-node-2", "lucidity-node-3"]
    assert all(n.state == "started" and n.outcome is fly.Outcome.CREATED for n in nodes)
    machines = fly_api.node_machines()
    assert [m["name"] for m in machines] == [n.name for n in nodes]
    assert all(m["state"] == "started" for m in machines)
    for node, machine in zip(nodes, machines):
        assert node.id == machine["id"] and node.private_ip == machine["private_ip"]
        assert node.address == f"{machine['id']}.vm.{fly_api.app}.internal:3031"
        config = machine["config"]
        assert config["image"] == IMAGE
        assert config["init"] == {"entrypoint": ["lucidity"], "cmd": [
            "node", CONTROL, "--bind", "tcp://fly-local-6pn:3031",
            "--advertise", "$FLY_MACHINE_ID.vm.$FLY_APP_NAME.internal", "--name", node.name]}
        assert config["env"] == {"LUCIDITY_SECRET": SECRET}
        assert config["metadata"] == {"lucidity": "node"}
        assert config["restart"] == {"policy": "on-failure"}
        assert config["guest"] == {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1024}
    # Each machine was waited for once, on the wait endpoint, for the instance created; nothing polled.
    waits = fly_api.calls("wait")
    assert sorted(w.machine_id for w in waits) == sorted(n.id for n in nodes)
    by_id = {m["id"]: m for m in machines}
    assert all(w.query["instance_id"] == [by_id[w.machine_id]["instance_id"]] for w in waits)
    assert all(w.query["state"] == ["started"] for w in waits)
    assert fly_api.calls("get") == []


@pytest.mark.timeout(30)
def test_a_second_run_creates_nothing(fly_api):
    first = fly.ensure_nodes(3, image=IMAGE)
    second = fly.ensure_nodes(3, image=IMAGE)

    assert len(fly_api.calls("create")) == 3
    assert len(fly_api.node_machines()) == 3
    assert [n.id for n in second] == [n.id for n in first]
    assert all(n.outcome is fly.Outcome.RUNNING for n in second)
    assert fly_api.calls("start") == []


@pytest.mark.timeout(30)
def test_a_stopped_node_is_started_and_only_the_missing_one_created(fly_api):
    stopped = fly_api.seed("lucidity-node-1", state="stopped", metadata={"lucidity": "node"})

    nodes = fly.ensure_nodes(2, image=IMAGE)

    assert [(n.name, n.outcome) for n in nodes] == [("lucidity-node-1", fly.Outcome.STARTED),
                                                     ("lucidity-node-2", fly.Outcome.CREATED)]
    assert nodes[0].id == stopped["id"]
    assert [s.machine_id for s in fly_api.calls("start")] == [stopped["id"]]
    assert [s.body["name"] for s in fly_api.calls("create")] == ["lucidity-node-2"]
    assert all(m["state"] == "started" for m in fly_api.node_machines())


@pytest.mark.timeout(30)
def test_a_stopping_node_is_waited_for_with_its_instance_id_then_started(fly_api):
    fly_api.start_delay = 0.3
    stopping = fly_api.seed("lucidity-node-1", state="stopping", metadata={"lucidity": "node"})

    [node] = fly.ensure_nodes(1, image=IMAGE)

    assert node.outcome is fly.Outcome.STARTED
    waits = fly_api.calls("wait")
    assert [w.query["state"] for w in waits] == [["stopped"], ["started"]]
    assert waits[0].query["instance_id"] == [stopping["instance_id"]]


@pytest.mark.timeout(30)
def test_a_foreign_machine_holding_a_node_name_is_refused(fly_api):
    fly_api.seed("lucidity-node-1", state="started", metadata={})

    with pytest.raises(fly.FlyError, match="is named lucidity-node-1 but is not a lucidity node"):
        fly.ensure_nodes(1, image=IMAGE)
    assert fly_api.calls("create") == []


@pytest.mark.timeout(30)
def test_destroy_removes_only_our_node_machines(fly_api):
    control = fly_api.seed("control", image=IMAGE)
    impostor = fly_api.seed("lucidity-node-9", metadata={})  # our prefix, not our metadata
    tagged = fly_api.seed("worker-1", metadata={"lucidity": "node"})  # our metadata, not our prefix
    fly.ensure_nodes(2, image=IMAGE)
    ours = {m["id"] for m in fly_api.node_machines() if m["name"] in ("lucidity-node-1", "lucidity-node-2")}

    gone = fly.destroy_nodes()

    assert {n.id for n in gone} == ours and all(n.outcome is fly.Outcome.DESTROYED for n in gone)
    deletes = fly_api.calls("delete")
    assert {d.machine_id for d in deletes} == ours
    assert all(d.query == {"force": ["true"]} for d in deletes)
    assert {m["id"] for m in fly_api.node_machines()} == {control["id"], impostor["id"], tagged["id"]}


@pytest.mark.timeout(30)
def test_a_429_is_honoured_by_waiting_for_retry_after(fly_api):
    fly_api.rate_limit_next("create", retry_after="1")

    nodes = fly.ensure_nodes(1, image=IMAGE)

    creates = fly_api.calls("create")
    assert [c.status for c in creates] == [429, 200]
    assert creates[1].at - creates[0].at >= 0.95
    assert len(nodes) == 1 and len(fly_api.node_machines()) == 1


@pytest.mark.timeout(30)
def test_creates_keep_to_the_documented_rate_limit(fly_api):
    started = time.monotonic()
    nodes = fly.ensure_nodes(5, image=IMAGE)

    assert len(nodes) == 5
    creates = fly_api.calls("create")
    assert all(c.status == 200 for c in creates)  # the stand-in answers 429 to anything over 1/s, bursts of 3
    assert time.monotonic() - started >= 1.9  # creates 4 and 5 waited for their tokens


@pytest.mark.timeout(30)
def test_a_slow_start_is_waited_out_over_several_wait_requests(fly_api, monkeypatch):
    monkeypatch.setattr(fly.api, "WAIT_REQUEST_SECONDS", 1)
    fly_api.start_delay = 1.6

    [node] = fly.ensure_nodes(1, image=IMAGE)

    assert node.state == "started"
    assert [w.status for w in fly_api.calls("wait")] == [408, 200]
    assert all(w.query["timeout"] == ["1"] for w in fly_api.calls("wait"))


@pytest.mark.timeout(30)
def test_a_machine_that_does_not_start_in_time_is_a_fly_error(fly_api):
    fly_api.start_delay = 30

    with pytest.raises(fly.FlyError, match=r"lucidity-node-1 \(\w+\) did not reach started in time"):
        fly.ensure_nodes(1, image=IMAGE, timeout=1)


@pytest.mark.timeout(30)
def test_an_api_error_is_a_fly_error_with_the_api_message(fly_api):
    fly_api.fail_next("create", 422, "invalid config.image: manifest unknown")

    with pytest.raises(fly.FlyError) as caught:
        fly.ensure_nodes(1, image=IMAGE)

    assert isinstance(caught.value, LucidityError)
    assert caught.value.status == 422
    assert "answered 422: invalid config.image: manifest unknown" in str(caught.value)


@pytest.mark.timeout(30)
def test_the_cli_reports_an_api_error_in_one_line_with_status_1(fly_api, capsys):
    fly_api.fail_next("create", 422, "invalid config.image: manifest unknown")

    assert cli("nodes", "--count", "2", "--image", IMAGE) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("lucidity fly nodes: fly Machines API: POST /v1/apps/lucidity-test/machines answered 422")
    assert "manifest unknown" in err


@pytest.mark.timeout(30)
def test_the_cli_prints_the_machines_and_never_the_secret(fly_api, capsys):
    assert cli("nodes", "--count", "2", "--image", IMAGE) == 0

    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2
    for line, machine in zip(lines, fly_api.node_machines()):
        assert line.split() == [machine["name"], machine["id"], "started", machine["region"], machine["private_ip"],
                                f"{machine['id']}.vm.lucidity-test.internal:3031", "(created)"]
    assert SECRET not in out + err

    assert cli("nodes", "--destroy") == 0
    assert fly_api.node_machines() == []


@pytest.mark.timeout(30)
def test_app_secret_sends_no_secret_in_the_machine_config(fly_api, monkeypatch):
    monkeypatch.delenv("LUCIDITY_SECRET")

    assert cli("nodes", "--count", "1", "--image", IMAGE, "--app-secret") == 0

    [machine] = fly_api.node_machines()
    assert machine["config"]["env"] == {}


@pytest.mark.timeout(30)
def test_the_image_is_the_running_apps_own(fly_api, monkeypatch):
    fly_api.seed("control", image="registry.fly.io/lucidity-test:deployment-7")
    [node] = fly.ensure_nodes(1)  # off fly: the one image the app's other machines run
    assert fly_api.machines[node.id]["config"]["image"] == "registry.fly.io/lucidity-test:deployment-7"

    monkeypatch.setenv("FLY_MACHINE_ID", "e2865013e00d68")  # on a fly machine (of any app): its own image
    monkeypatch.setenv("FLY_IMAGE_REF", IMAGE)
    [_, node] = fly.ensure_nodes(2, app=fly_api.app)
    assert fly_api.machines[node.id]["config"]["image"] == IMAGE


@pytest.mark.timeout(30)
def test_an_app_of_nodes_only_keeps_the_image_its_nodes_run(fly_api):
    fly.ensure_nodes(1, image=IMAGE)
    [_, node] = fly.ensure_nodes(2)
    assert fly_api.machines[node.id]["config"]["image"] == IMAGE


@pytest.mark.timeout(30)
def test_a_node_running_another_command_or_image_is_kept_with_a_warning(fly_api, caplog):
    fly.ensure_nodes(1, image=IMAGE)

    with caplog.at_level("WARNING", logger="lucidity.fly"):
        [node] = fly.ensure_nodes(1, "other-control.internal:3030", image=IMAGE + "-new")

    assert node.outcome is fly.Outcome.RUNNING and len(fly_api.calls("create")) == 1
    assert "runs another command and image than this run asks for" in caplog.text


@pytest.mark.timeout(30)
def test_a_fly_error_pickles_with_its_facts():
    error = pickle.loads(pickle.dumps(fly.FlyError("no", status=422, request="POST /v1/apps/a/machines")))
    assert (str(error), error.status, error.request) == ("no", 422, "POST /v1/apps/a/machines")


@pytest.mark.timeout(30)
def test_no_image_to_take_is_a_fly_error_naming_image(fly_api):
    fly_api.seed("web-1", image="registry.fly.io/lucidity-test:deployment-1")
    fly_api.seed("web-2", image="registry.fly.io/lucidity-test:deployment-2")

    with pytest.raises(fly.FlyError, match="runs? 2 images.*pass --image"):
        fly.ensure_nodes(1)


@pytest.mark.timeout(30)
def test_the_cli_without_a_token_says_so_in_one_line(fly_api, monkeypatch, capsys):
    monkeypatch.delenv("FLY_API_TOKEN")

    assert cli("nodes", "--count", "1", "--image", IMAGE) == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no fly API token: set $FLY_API_TOKEN" in err
    assert fly_api.seen == []


@pytest.mark.timeout(30)
def test_a_wrong_token_is_a_401_with_a_hint(fly_api, monkeypatch, capsys):
    monkeypatch.setenv("FLY_API_TOKEN", "fm2_wrong")

    assert cli("nodes", "--count", "1", "--image", IMAGE) == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "answered 401" in err and "check $FLY_API_TOKEN" in err


@pytest.mark.timeout(30)
def test_an_unreachable_api_is_one_line(fly_api, monkeypatch, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("FLY_API_HOSTNAME", f"http://127.0.0.1:{port}")

    assert cli("nodes", "--count", "1", "--image", IMAGE) == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot reach the fly Machines API at http://127.0.0.1:{port}" in err


@pytest.mark.timeout(30)
def test_on_a_fly_machine_the_internal_api_is_the_default(monkeypatch):
    for name in FLY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    on_fly = fly.MachinesAPI.from_environment(
        environ={"FLY_APP_NAME": "a", "FLY_MACHINE_ID": "m", "FLY_API_TOKEN": "t"})
    off_fly = fly.MachinesAPI.from_environment(app="a", token="t", environ={})
    assert (on_fly.app, on_fly.base_url) == ("a", "http://_api.internal:4280")
    assert off_fly.base_url == "https://api.machines.dev"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("argv, message", [
    ((), "give --count N"),
    (("--count", "2", "--destroy"), "not both"),
    (("--count", "0"), "at least 1"),
    (("--count", "1", "--control", "tcp://127.0.0.1:3030"), "loopback"),
    (("--count", "1", "--control", "ipc:///tmp/control"), "not a network address"),
    (("--count", "1", "--memory-mb", "1000"), "multiple of 256"),
])
def test_usage_errors_are_one_line_with_status_2(fly_api, capsys, argv, message):
    assert cli("nodes", *argv) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert fly_api.seen == []


@pytest.mark.timeout(30)
def test_no_secret_is_a_usage_error(fly_api, monkeypatch, capsys):
    monkeypatch.delenv("LUCIDITY_SECRET")

    assert cli("nodes", "--count", "1", "--image", IMAGE) == 2

    assert "no cluster secret" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_the_stand_in_catches_what_the_api_would_refuse(fly_api):
    """The checker itself: requests outside fly's documentation are refused (400) and recorded."""
    def send(method, path, body=None, auth=f"Bearer {fly_api.token}"):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        request = urllib.request.Request(fly_api.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    machines = f"/v1/apps/{fly_api.app}/machines"
    bad_create = {"name": "x", "count": 3,
                  "config": {"image": "", "init": {"cmd": "lucidity node"}, "guest": {"memory_mb": 1000}}}
    assert send("POST", machines, bad_create) == 400
    assert send("POST", machines, {"name": "y", "config": {"image": IMAGE}}) == 200
    machine_id = fly_api.node_machines()[0]["id"]
    assert send("GET", f"{machines}/{machine_id}/wait?state=running&timeout=120") == 400
    assert send("GET", f"{machines}/{machine_id}/wait?state=stopped") == 400
    assert send("DELETE", f"{machines}/{machine_id}?force=yes") == 400
    assert send("PATCH", f"{machines}/{machine_id}", {}) == 404
    assert send("GET", machines, auth=fly_api.token) == 401
    found = "\n".join(fly_api.violations)
    for expected in ["'count' is not documented", "config.image (a non-empty string) is required",
                     "config.init.cmd must be a list of strings", "memory_mb must be a multiple of 256",
                     "state='running' is not one of", "timeout='120'", "stopped requires instance_id",
                     "force='yes' is not a boolean", "no such endpoint", "not 'Bearer <token>'"]:
        assert expected in found
    fly_api.violations.clear()


@pytest.mark.timeout(30)
def test_the_node_command_is_one_the_node_cli_accepts():
    """What a node machine runs parses as `lucidity node` (the private _parser is the CLI's own)."""
    from lucidity.cli import _parser

    args = _parser().parse_args(fly.node_command("lucidity-node-1", CONTROL))
    assert (args.command, args.control_address, args.bind) == ("node", CONTROL, "tcp://fly-local-6pn:3031")
    assert (args.advertise, args.name) == ("$FLY_MACHINE_ID.vm.$FLY_APP_NAME.internal", "lucidity-node-1")
