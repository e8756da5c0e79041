"""The deployment recipes in deploy/ (docs/deploy.md).

Every `lucidity` command line in every recipe is taken out of its file the way its tool would read it
(systemd's variable expansion, Kubernetes' $(VAR), the image's ENTRYPOINT plus compose's `command:`, fly's
process command, what start-cluster.sh really runs) and parsed by the real CLI parser, then checked for
what an operator relies on: an address the daemons accept, a secret, a memory cap, a worker port range
that holds every worker. Each file is also checked as its tool sees it (systemd-analyze, YAML, TOML,
Dockerfile instructions, `kubectl kustomize`, `bash -n`) where the tool is here, and the Slurm start-up
script starts a real cluster on test hosts (tests/testhosts.py) and runs a program against it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import yaml

from lucidity import addresses
from lucidity.cli import _parser
from lucidity.security import write_secret_file
from testhosts import Network

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
FLY = DEPLOY / "fly" / "fly.toml"
SLURM = DEPLOY / "slurm"
START_CLUSTER = SLURM / "start-cluster.sh"
SBATCH = SLURM / "lucidity.sbatch"
#: Where the lucidity of this test run lives: its console script stands in for /opt/lucidity/bin/lucidity.
BIN = Path(sys.executable).parent

#: What the platforms put in the variables the recipes use, as an operator's machine would.
SAMPLE_CREDENTIALS_DIRECTORY = "/run/credentials/lucidity-node@n1.service"
SAMPLE_POD_IPS = ("10.244.1.7", "fd00:10:244::7")
SAMPLE_POD_NAME = "lucidity-nodes-5d8f7c9b4-x2k8q"
#: The instance name used for lucidity-node@.service.
INSTANCE = "n1"


# ------------------------------------------------------------------------------------------ the CLI check


def parse(argv: list[str], where: str) -> argparse.Namespace:
    """`lucidity ARGV` through the real parser, or a test failure naming the recipe and argparse's message."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return _parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `lucidity {shlex.join(argv)}` does not parse: {errors.getvalue().strip()}")


def check_daemon(argv: list[str], where: str, secret_in_environment: bool = False) -> argparse.Namespace:
    """Parse a daemon's command line and check what a deployment needs beyond parsing."""
    args = parse(argv, where)
    assert args.command in ("control", "node"), f"{where}: not a daemon: {argv}"
    assert not args.insecure, f"{where}: a recipe must not use --insecure"
    assert args.secret_file or secret_in_environment, f"{where}: {args.command} gets no cluster secret"
    bind = addresses.parse(args.bind, what=f"{where}: --bind", allow_port_zero=True)
    assert bind.scheme == "tcp", f"{where}: --bind {args.bind}"
    if args.command == "control":
        assert bind.port == addresses.CONTROL_PORT, f"{where}: the control node listens on {bind.port}, not 3030"
        return args
    addresses.parse(args.control_address, what=f"{where}: the control address")
    if args.advertise:
        addresses.parse(args.advertise, what=f"{where}: --advertise")
    assert args.memory_limit, f"{where}: the node sets no --memory-limit for its workers"
    if args.worker_ports:
        low, high = addresses.parse_port_range(args.worker_ports)
        assert high - low + 1 >= (args.processes or 1), f"{where}: --worker-ports {args.worker_ports} < --processes"
        assert not low <= bind.port <= high, f"{where}: the node's port {bind.port} is in the workers' range"
    return args


# ---------------------------------------------------------------------------------------------- systemd


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]}, keeping repeated keys in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: Optional[list[tuple[str, str]]] = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: not KEY=VALUE in a section: {raw!r}"
        assert not line.endswith("\\"), f"{path.name}:{number}: keep each setting on one line"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict[str, list[tuple[str, str]]], key: str, section: str = "Service") -> list[str]:
    return [value for k, value in unit.get(section, []) if k == key]


def specifiers(text: str) -> str:
    """systemd's specifiers used by the units, for instance `INSTANCE`."""
    return re.sub(r"%(.)", lambda m: {"i": INSTANCE, "S": "/var/lib", "t": "/run", "%": "%"}[m.group(1)], text)


def read_environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as systemd's EnvironmentFile= reads these (no quotes are used in ours)."""
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and line[0] not in "#;":
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}: bad line {raw!r}"
            found[key] = value
    return found


def unit_environment(unit: dict[str, list[tuple[str, str]]], with_files: bool) -> dict[str, str]:
    """Environment= defaults, then (if `with_files`) the example EnvironmentFile= that deploy/systemd ships."""
    env = {"CREDENTIALS_DIRECTORY": SAMPLE_CREDENTIALS_DIRECTORY}
    for value in unit_values(unit, "Environment"):
        for assignment in shlex.split(specifiers(value)):
            key, _, val = assignment.partition("=")
            env[key] = val
    if with_files:
        for value in unit_values(unit, "EnvironmentFile"):
            example = SYSTEMD / Path(specifiers(value).lstrip("-")).name
            if example.exists():
                env.update(read_environment_file(example))
            else:
                assert value.startswith("-"), f"EnvironmentFile={value} has no example and is not optional (-)"
    return env


def expand_exec(line: str, env: dict[str, str], where: str) -> list[str]:
    """An Exec line as systemd runs it: ${VAR} inside a word, $VAR alone split at white space."""
    argv = []
    for word in shlex.split(specifiers(line)):
        alone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if alone:
            argv += env.get(alone.group(1), "").split()
            continue

        def braced(match: re.Match[str]) -> str:
            assert match.group(1) in env, f"{where}: ${{{match.group(1)}}} has no default in Environment="
            return env[match.group(1)]

        argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", braced, word))
    return argv


UNITS = ["lucidity-control.service", "lucidity-node@.service"]


def systemd_commands() -> list[tuple[str, list[str], bool]]:
    commands = []
    for name in UNITS:
        unit = read_unit(SYSTEMD / name)
        for with_files in (False, True):
            where = f"{name} ExecStart ({'example environment files' if with_files else 'defaults'})"
            (line,) = unit_values(unit, "ExecStart")
            argv = expand_exec(line, unit_environment(unit, with_files), where)
            assert argv[0] == "/opt/lucidity/bin/lucidity", f"{where}: runs {argv[0]}"
            commands.append((where, argv[1:], False))
    return commands


@pytest.mark.timeout(30)
def test_systemd_units_are_hardened_and_pass_the_secret_as_a_credential() -> None:
    for name in UNITS:
        unit = read_unit(SYSTEMD / name)

        def one(key: str) -> str:
            values = unit_values(unit, key)
            assert len(values) == 1, f"{name}: {key}= is set {len(values)} times"
            return values[0]

        assert one("LoadCredential") == "secret:/etc/lucidity/secret"
        assert "--secret-file ${CREDENTIALS_DIRECTORY}/secret" in one("ExecStart")
        assert one("Restart") == "on-failure"
        assert one("MemoryMax")
        assert any(v.startswith("-/etc/lucidity/") for v in unit_values(unit, "EnvironmentFile"))
        for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                           "PrivateTmp": "yes"}.items():
            assert one(key) == value, f"{name}: {key}={one(key)}"
        assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(one("RestrictAddressFamilies").split())
        assert unit_values(unit, "DynamicUser") == ["yes"] or unit_values(unit, "User"), f"{name}: runs as root"
        assert unit_values(unit, "WantedBy", "Install") == ["multi-user.target"]
    node = read_unit(SYSTEMD / "lucidity-node@.service")
    # What the node's workers need: to fork and exec (no seccomp filter without @process), a writable /tmp.
    assert unit_values(node, "KillMode") == ["mixed"]  # SIGTERM to the daemon, which stops its workers
    assert unit_values(node, "OOMPolicy") == ["continue"]
    assert unit_values(node, "MemoryDenyWriteExecute") == []  # JIT compilers in tasks
    assert unit_values(node, "SystemCallFilter") == ["@system-service"]
    assert "--memory-limit ${LUCIDITY_MEMORY_LIMIT}" in unit_values(node, "ExecStart")[0]
    assert "--name %i" in unit_values(node, "ExecStart")[0]


@pytest.mark.timeout(60)
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    lucidity = BIN / "lucidity"
    assert lucidity.exists(), f"no lucidity console script next to {sys.executable}"
    # verify checks that the executable exists: use this run's lucidity instead of /opt/lucidity's.
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/lucidity/bin/lucidity", str(lucidity))
        (tmp_path / name).write_text(text)
    for name in ["lucidity-control.service", f"lucidity-node@{INSTANCE}.service"]:
        done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=30)
        # verify exits 0 after mere warnings (an unknown key, a bad value ignored): any output is a failure.
        assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
            f"systemd-analyze verify {name}: exit {done.returncode}\n{done.stdout}{done.stderr}")


# ---------------------------------------------------------------------------------------------- Docker

DOCKERFILE_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                           "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def read_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined; comments and blanks skipped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction is dropped, as Docker does
        pending += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        word, _, arguments = pending.partition(" ")
        assert word in DOCKERFILE_INSTRUCTIONS, f"Dockerfile:{number}: {word!r} is not an instruction"
        instructions.append((word, arguments.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued instruction"
    return instructions


def exec_form(instruction: str, arguments: str) -> list[str]:
    assert arguments.startswith("["), f"{instruction} {arguments}: use the JSON (exec) form, so signals reach lucidity"
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{instruction} {arguments}"
    return value


def dockerfile_commands() -> list[tuple[str, list[str], bool]]:
    instructions = dict(read_dockerfile(DOCKERFILE))  # the last of each, as Docker uses
    entrypoint = exec_form("ENTRYPOINT", instructions["ENTRYPOINT"])
    assert entrypoint == ["lucidity"]
    return [("Dockerfile ENTRYPOINT + CMD", exec_form("CMD", instructions["CMD"]), False)]


@pytest.mark.timeout(30)
def test_dockerfile_is_well_formed_and_runs_lucidity_as_a_non_root_user() -> None:
    instructions = read_dockerfile(DOCKERFILE)
    words = [word for word, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    for word, arguments in instructions:
        if word in ("CMD", "ENTRYPOINT", "SHELL") or (word in ("RUN", "COPY", "ADD") and arguments.startswith("[")):
            exec_form(word, arguments)
        if word in ("COPY", "ADD"):
            *sources, _target = shlex.split(arguments)
            for source in sources:
                assert (REPO / source).exists(), f"{word} {source}: not in the build context (the repository root)"
        if word == "EXPOSE":
            for port in arguments.split():
                addresses.parse_port_range(port.split("/")[0])
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore, "Dockerfile.dockerignore sends only what it lists"
    sent = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, arguments in instructions:
        if word == "COPY":
            *sources, _target = shlex.split(arguments)
            assert set(sources) <= sent, f"COPY {sources}: excluded by Dockerfile.dockerignore (sent: {sent})"
    (user,) = [arguments for word, arguments in instructions if word == "USER"]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, "USER must be a numeric non-root uid"
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "USER must follow every RUN"
    assert any(w == "RUN" and "pip install" in a for w, a in instructions)


def has_docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


def compose_commands() -> list[tuple[str, list[str], bool]]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    commands = []
    for name, service in services.items():
        if "entrypoint" in service:
            continue  # not the image's `lucidity` (the client service runs python)
        assert isinstance(service.get("command"), list), f"compose {name}: command: as a list, no shell in between"
        commands.append((f"compose.yaml service {name}", service["command"], False))
    return commands


@pytest.mark.timeout(60)
def test_compose_runs_control_and_replicated_nodes_that_find_it_by_service_name(tmp_path: Path) -> None:
    document = yaml.safe_load(COMPOSE.read_text())
    services = document["services"]
    assert {"control", "nodes"} <= set(services)
    build = services["nodes"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert services["nodes"]["deploy"]["replicas"] >= 1
    (secret_name,) = document["secrets"]
    assert document["secrets"][secret_name]["file"]
    for name in ("control", "nodes"):
        service = services[name]
        args = parse(service["command"], f"compose {name}")
        assert secret_name in service["secrets"]
        assert args.secret_file == f"/run/secrets/{secret_name}"
        assert service["deploy"]["resources"]["limits"]["memory"]
        assert "/tmp" in service.get("tmpfs", []) or not service.get("read_only"), f"{name}: no writable /tmp"
    node = parse(services["nodes"]["command"], "compose nodes")
    control = addresses.parse(node.control_address)
    assert control.host == "control" and control.port == addresses.CONTROL_PORT
    assert addresses.parse(services["client"]["environment"]["LUCIDITY_ADDRESS"]).host == "control"
    if not has_docker_compose():
        pytest.skip("`docker compose` is not installed here; the file was checked with PyYAML only")
    # compose refuses a file secret that does not exist: check a copy next to a made-up secret.
    copy = tmp_path / "compose.yaml"
    copy.write_text(COMPOSE.read_text().replace("context: ../..", f"context: {REPO}"))
    write_secret_file(str(tmp_path / "cluster.secret"))
    done = subprocess.run(["docker", "compose", "-f", str(copy), "config", "--quiet"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------- Kubernetes


def kubernetes_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container_argv(container: dict[str, Any], env_values: dict[str, str], where: str) -> list[str]:
    """A container's args with $(VAR) replaced from its env, as the kubelet does."""
    values = {}
    for variable in container.get("env", []):
        if "value" in variable:
            values[variable["name"]] = variable["value"]
        else:
            field = variable["valueFrom"]["fieldRef"]["fieldPath"]
            values[variable["name"]] = env_values[field]

    def replace(match: re.Match[str]) -> str:
        # The kubelet leaves an unknown $(VAR) as it is, which would reach lucidity as text.
        assert match.group(1) in values, f"{where}: $({match.group(1)}) is not in the container's env"
        return str(values[match.group(1)])

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, arg) for arg in container["args"]]


def kubernetes_commands() -> list[tuple[str, list[str], bool]]:
    commands = []
    for document in kubernetes_documents():
        if document["kind"] != "Deployment":
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            assert "command" not in container, "run the image's ENTRYPOINT (lucidity); give args"
            for pod_ip in SAMPLE_POD_IPS:
                where = f"{document['metadata']['name']} container {container['name']} (pod IP {pod_ip})"
                argv = container_argv(container, {"status.podIP": pod_ip, "metadata.name": SAMPLE_POD_NAME}, where)
                commands.append((where, argv, False))
    return commands


@pytest.mark.timeout(30)
def test_kubernetes_control_service_and_nodes_that_find_it_through_its_dns_name() -> None:
    documents = kubernetes_documents()
    control = find(documents, "Deployment", "lucidity-control")
    service = find(documents, "Service", "lucidity-control")
    nodes = find(documents, "Deployment", "lucidity-nodes")
    assert control["spec"]["replicas"] == 1 and control["spec"]["strategy"]["type"] == "Recreate"
    assert nodes["spec"]["replicas"] >= 1
    (port,) = service["spec"]["ports"]
    assert port["port"] == addresses.CONTROL_PORT
    control_pod = control["spec"]["template"]
    assert service["spec"]["selector"].items() <= control_pod["metadata"]["labels"].items()
    assert port["targetPort"] in [p["name"] for c in control_pod["spec"]["containers"] for p in c.get("ports", [])]
    for deployment in (control, nodes):
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"]: v for v in pod["volumes"]}
        (secret_volume,) = [v for v in volumes.values() if "secret" in v]
        assert secret_volume["secret"]["secretName"] == "lucidity-secret"
        (copier,) = pod["initContainers"]
        assert copier["command"][:3] == ["install", "-m", "0400"], f"{name}: the secret is copied to a 0400 file"
        for container in pod["containers"]:
            args = parse(container_argv(container, {"status.podIP": SAMPLE_POD_IPS[0],
                                                    "metadata.name": SAMPLE_POD_NAME}, name), name)
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            secret_mount = os.path.dirname(args.secret_file)
            assert secret_mount in mounts, f"{name}: --secret-file {args.secret_file} is on no mounted volume"
            assert copier["command"][-1] == args.secret_file
            assert mounts[secret_mount] in {m["name"] for m in copier["volumeMounts"]}
            assert container["resources"]["limits"]["memory"]
            if container["securityContext"].get("readOnlyRootFilesystem"):
                assert "/tmp" in mounts, f"{name}: a read-only root needs a /tmp volume (the node's slot table)"
    (node_container,) = nodes["spec"]["template"]["spec"]["containers"]
    node = parse(container_argv(node_container, {"status.podIP": SAMPLE_POD_IPS[0], "metadata.name": "x"},
                                "nodes"), "nodes")
    control_address = addresses.parse(node.control_address)
    # The Service's name, alone (same namespace) or as SERVICE.NAMESPACE.svc.cluster.local.
    service_name = service["metadata"]["name"]
    assert control_address.host == service_name or re.fullmatch(
        rf"{re.escape(service_name)}\.[a-z0-9-]+\.svc\.cluster\.local", control_address.host), control_address
    assert control_address.port == port["port"]
    assert node.advertise == SAMPLE_POD_IPS[0]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in node_container["env"]
    assert addresses.parse(node.bind, allow_port_zero=True).is_wildcard


@pytest.mark.timeout(60)
def test_kustomize_builds_the_manifests() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in KUBERNETES.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed here; the manifests were checked with PyYAML only")
    done = subprocess.run(["kubectl", "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(done.stdout) if d)
    assert kinds == [("Deployment", "lucidity-control"), ("Deployment", "lucidity-nodes"), ("Service", "lucidity-control")]


# ----------------------------------------------------------------------------------------------- fly.io


def fly_commands() -> list[tuple[str, list[str], bool]]:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    config = tomllib.loads(FLY.read_text())
    commands = [(f"fly.toml [processes] {name}", shlex.split(command), True)
                for name, command in config.get("processes", {}).items()]
    commands += [("fly.toml [experimental] cmd", config["experimental"]["cmd"], True)] if "cmd" in config.get("experimental", {}) else []
    return commands


@pytest.mark.timeout(30)
def test_fly_toml_runs_one_private_control_node() -> None:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    config = tomllib.loads(FLY.read_text())
    assert config["app"]
    assert "http_service" not in config and "services" not in config, "the control node is on the private network only"
    ((name, command),) = config["processes"].items()
    args = parse(shlex.split(command), "fly.toml")
    assert args.command == "control" and addresses.parse(args.bind, allow_port_zero=True).is_wildcard
    assert [name] == config["vm"][0]["processes"]
    assert "docs/fly.md" in FLY.read_text()


# --------------------------------------------------------------------------- every command line, parsed

EXTRACTORS: dict[str, Callable[[], list[tuple[str, list[str], bool]]]] = {
    "systemd": systemd_commands, "dockerfile": dockerfile_commands, "compose": compose_commands,
    "kubernetes": kubernetes_commands, "fly": fly_commands,
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("recipe", sorted(EXTRACTORS))
def test_every_daemon_command_line_parses_with_the_real_cli(recipe: str) -> None:
    commands = EXTRACTORS[recipe]()
    assert commands, f"no lucidity command line found in the {recipe} recipe"
    for where, argv, secret_in_environment in commands:
        check_daemon(argv, where, secret_in_environment)


# ------------------------------------------------------------------------------------------------ Slurm


@pytest.mark.timeout(30)
@pytest.mark.parametrize("script", [START_CLUSTER, SBATCH], ids=lambda p: p.name)
def test_slurm_scripts_are_valid_bash(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("bash -n passed; shellcheck is not installed here")
    done = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stdout


@pytest.mark.timeout(30)
def test_sbatch_hands_over_to_start_cluster() -> None:
    text = SBATCH.read_text()
    directives = re.findall(r"^#SBATCH (\S+)", text, re.MULTILINE)
    assert "--ntasks-per-node=1" in directives and any(d.startswith("--nodes=") for d in directives)
    assert 'exec "$deploy/start-cluster.sh" -- "$@"' in text
    assert os.access(START_CLUSTER, os.X_OK)


def write_script(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(0o755)
    return path


#: `lucidity` that only records how it was called: control and node wait for SIGTERM; status lists one
#: answering node per node started so far.
STUB_LUCIDITY = """
    #!{python}
    import json, os, signal, sys
    log = os.environ["STUB_LOG"]
    with open(log, "a") as out:
        out.write(json.dumps({{"argv": sys.argv[1:], "SLURMD_NODENAME": os.environ.get("SLURMD_NODENAME")}}) + "\\n")
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "status":
        with open(log) as records:
            started = sum(json.loads(line).get("argv", [])[:1] == ["node"] for line in records)
        for index in range(started):
            print(f"node n{{index}}  tcp://192.0.2.{{index}}:3031  workers 1  running 0  tasks done 0")
        sys.exit(0 if started else 1)
    if command in ("control", "node"):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        while True:
            signal.pause()
"""

#: `scontrol show hostnames LIST` for a plain comma-separated LIST.
STUB_SCONTROL = """
    #!/bin/bash
    [[ $1 == show && $2 == hostnames ]] || exit 1
    tr ',' '\\n' <<< "$3"
"""

#: `srun [OPTIONS] COMMAND...`: records its options, runs COMMAND once per host of $SLURM_JOB_NODELIST with
#: SLURMD_NODENAME set (in the host's network namespace when $STUB_NAMESPACES maps it to one), passes
#: SIGTERM on to them and waits for them, as srun does.
STUB_SRUN = """
    #!{python}
    import json, os, signal, subprocess, sys
    args = sys.argv[1:]
    options = []
    while args and args[0].startswith("-"):
        options.append(args.pop(0))
    with open(os.environ["STUB_LOG"], "a") as out:
        out.write(json.dumps({{"srun": options}}) + "\\n")
    namespaces = json.loads(os.environ.get("STUB_NAMESPACES", "{{}}"))
    children = []
    for host in os.environ["SLURM_JOB_NODELIST"].split(","):
        prefix = ["ip", "netns", "exec", namespaces[host]] if host in namespaces else []
        children.append(subprocess.Popen(prefix + args, env=dict(os.environ, SLURMD_NODENAME=namespaces.get(host + "/name", host))))
    signal.signal(signal.SIGTERM, lambda signum, frame: [child.send_signal(signum) for child in children])
    sys.exit(max(child.wait() for child in children))
"""


def slurm_environment(tmp_path: Path, stubs: dict[str, str], **variables: str) -> dict[str, str]:
    """The environment of a Slurm job on hosts `SLURM_JOB_NODELIST`, with stub commands first on PATH."""
    stub_bin = tmp_path / "stub-bin"
    stub_bin.mkdir(exist_ok=True)
    for name, text in stubs.items():
        write_script(stub_bin / name, text.format(python=sys.executable))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LUCIDITY_", "SLURM"))}
    env.update(PATH=os.pathsep.join([str(stub_bin), str(BIN), env.get("PATH", "")]), STUB_LOG=str(tmp_path / "calls.log"))
    env.update(variables)
    return env


@pytest.mark.timeout(60)
def test_slurm_start_up_runs_control_here_a_node_per_host_then_the_program(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    write_secret_file(str(secret))
    env = slurm_environment(tmp_path, {"lucidity": STUB_LUCIDITY, "scontrol": STUB_SCONTROL, "srun": STUB_SRUN},
                            SLURM_JOB_NODELIST="cn1,cn2,cn3", SLURM_JOB_NUM_NODES="3", SLURM_CPUS_ON_NODE="8",
                            LUCIDITY_SECRET_FILE=str(secret), LUCIDITY_MEMORY_LIMIT="3GiB",
                            LUCIDITY_STARTUP_TIMEOUT="20")
    seen = tmp_path / "address"
    program = ["bash", "-c", f'echo "$LUCIDITY_ADDRESS" > {seen}; exit 3']
    done = subprocess.run([str(START_CLUSTER), "--", *program], env=env, capture_output=True, text=True, timeout=50)
    assert done.returncode == 3, f"exit {done.returncode}, not the program's 3:\n{done.stderr}"
    assert seen.read_text().strip() == "tcp://cn1:3030"
    calls = [json.loads(line) for line in (tmp_path / "calls.log").read_text().splitlines()]
    (srun,) = [c["srun"] for c in calls if "srun" in c]
    assert {"--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--cpus-per-task=8", "--overlap"} <= set(srun)
    daemons = [c for c in calls if "argv" in c and c["argv"][0] in ("control", "node")]
    assert sorted(c["argv"][0] for c in daemons) == ["control", "node", "node", "node"]
    for call in daemons:
        args = check_daemon(call["argv"], "start-cluster.sh")
        assert args.secret_file == str(secret)
        if args.command == "node":
            assert args.control_address == "tcp://cn1:3030"
            assert args.name == call["SLURMD_NODENAME"]
            assert args.processes == len(os.sched_getaffinity(0))  # `nproc`
            assert args.worker_ports == "3100-3199" and args.memory_limit == 3 * 2**30
    assert sorted(c["SLURMD_NODENAME"] for c in daemons if c["argv"][0] == "node") == ["cn1", "cn2", "cn3"]
    for call in calls:
        if "argv" in call and call["argv"][0] == "status":
            assert parse(call["argv"], "start-cluster.sh status").secret_file == str(secret)


@pytest.mark.timeout(60)
def test_slurm_start_up_refuses_to_start_without_a_secret_or_a_control_host(tmp_path: Path) -> None:
    env = slurm_environment(tmp_path, {"lucidity": STUB_LUCIDITY}, LUCIDITY_CONTROL_HOST="cn1")
    done = subprocess.run([str(START_CLUSTER), "--", "true"], env=env, capture_output=True, text=True, timeout=20)
    assert done.returncode == 2 and "no cluster secret" in done.stderr
    env = slurm_environment(tmp_path, {"lucidity": STUB_LUCIDITY}, LUCIDITY_SECRET="x" * 32)
    done = subprocess.run([str(START_CLUSTER), "--", "true"], env=env, capture_output=True, text=True, timeout=20)
    assert done.returncode == 2 and "LUCIDITY_CONTROL_HOST" in done.stderr
    assert not (tmp_path / "calls.log").exists(), "nothing may start before the checks pass"


#: The user's program: `lucidity status` as an operator runs it, then a Pool over the whole cluster.
POOL_PROGRAM = """
    import json
    import time

    import lucidity


    def where(x):
        time.sleep(0.02)
        return lucidity.current_node()


    if __name__ == "__main__":
        with lucidity.Pool() as pool:
            print(json.dumps(sorted(set(pool.map(where, range(60), chunksize=1)))))
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_slurm_start_up_starts_a_cluster_on_test_hosts(test_hosts: Network, tmp_path: Path, family: str) -> None:
    hosts = [test_hosts.add_host(name) for name in ("a", "b", "c")]
    address = {host.name: host.ipv4 if family == "ipv4" else host.ipv6 for host in hosts}
    secret = tmp_path / "secret"
    write_secret_file(str(secret))
    namespaces = {address[h.name]: h.ns for h in hosts} | {f"{address[h.name]}/name": h.name for h in hosts}
    env = slurm_environment(tmp_path, {"scontrol": STUB_SCONTROL, "srun": STUB_SRUN},
                            SLURM_JOB_NODELIST=",".join(address[h.name] for h in hosts), SLURM_JOB_NUM_NODES="3",
                            SLURM_CPUS_ON_NODE="1", STUB_NAMESPACES=json.dumps(namespaces),
                            LUCIDITY_SECRET_FILE=str(secret), LUCIDITY_PROCESSES="1", LUCIDITY_LOG_LEVEL="WARNING")
    program = write_script(tmp_path / "program.py", POOL_PROGRAM)
    status_file, pool_file = tmp_path / "status.json", tmp_path / "pool.json"
    steps = f"lucidity status --json > {status_file} && {shlex.quote(sys.executable)} {program} > {pool_file}"
    # The batch script runs on the first host of the allocation: so does start-cluster.sh.
    done = hosts[0].run([str(START_CLUSTER), "--", "bash", "-c", steps], timeout=150, env=env)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr}"
    report = json.loads(status_file.read_text())
    assert sorted(node["name"] for node in report["nodes"]) == ["a", "b", "c"], report
    for node in report["nodes"]:
        assert "error" not in node, node
        # Bound to a wildcard, each node advertised its own address on the route to the control node.
        assert addresses.parse(node["address"]).host == address[node["name"]]
        assert addresses.parse(node["address"]).port == 3031
        (worker,) = node["workers"]
        worker_address = addresses.parse(worker["address"])
        assert worker_address.host == address[node["name"]] and 3100 <= worker_address.port <= 3199
    assert json.loads(pool_file.read_text()) == ["a", "b", "c"]
    # start-cluster.sh stopped the nodes and the control node before it exited.
    deadline = time.monotonic() + 5
    while any(host.pids() for host in hosts) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(host.pids() for host in hosts), {host.name: host.pids() for host in hosts}


# ------------------------------------------------------------------------------------------------ docs


@pytest.mark.timeout(30)
def test_deploy_md_covers_every_recipe_and_links_the_other_pages() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    for path in [*UNITS, "Dockerfile", "compose.yaml", "kubernetes/", "fly.toml", "lucidity.sbatch",
                 "start-cluster.sh", "fly.md", "security.md"]:
        assert path in text, f"docs/deploy.md does not mention {path}"
    for topic in ["--worker-ports", "--memory-limit", "MemoryMax", "--advertise", "IPv6", "3030", "3031"]:
        assert topic in text, f"docs/deploy.md does not mention {topic}"
    assert "docs/deploy.md" in (REPO / "README.md").read_text()
