"""The queue manager (`jupyter launch queue up|down|status`, `agent-image build`) against real components: a real
`jupyter server` with jupyter-launch (no in-process agent: only the managed agents run jobs), real agent processes,
real Docker containers from an agent image built here. Waits have deadlines that only fail a test that hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from launch_server import LaunchServer

ROOT = Path(__file__).resolve().parents[1]
AGENT_IMAGE = "jupyter-launch-agent:fleet-test"
DEADLINE = 180.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LaunchServer]:
    s = LaunchServer(tmp_path / "server", agent_queues=[]).start()
    yield s
    s.stop()


class Cli:
    """`python -m jupyter_launch.cli` as a user runs it against ``server``, from its own launch home."""

    def __init__(self, server: LaunchServer, home: Path):
        self.env = dict(server.env, JUPYTER_LAUNCH_HOME=str(home), JUPYTER_LAUNCH_SERVER_URL=server.url,
                        JUPYTER_LAUNCH_TOKEN=server.token)
        self.home = home
        self.upped: set[str] = set()  # queues to bring down after the test, whatever it did

    def run(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
        if args[:2] == ("queue", "up"):
            self.upped.add(yaml.safe_load(Path(args[2]).read_text())["queue_name"])
        proc = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def status(self, queue: str) -> dict[str, Any] | None:
        return self.json("queue", "status", queue)

    def tokens(self, queue: str) -> list[dict[str, Any]]:
        return [t for t in self.json("token", "list", "--all") if t["name"].startswith(f"fleet:{queue}:")]

    def manager_log(self, queue: str) -> str:
        path = self.home / "fleet" / queue / "manager.log"
        return path.read_text(errors="replace") if path.exists() else "(no manager log)"


@pytest.fixture
def cli(server: LaunchServer, tmp_path: Path) -> Iterator[Cli]:
    c = Cli(server, tmp_path / "cli-home")
    yield c
    for queue in c.upped:  # before the server stops: a failed test leaves no manager, agent or token running
        c.run("queue", "down", queue, check=False)


def wait_for(check: Callable[[], Any], what: str, diagnose: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE:g} s: {what}\n{diagnose()}")
        time.sleep(0.3)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------ refusals


def test_up_refuses_what_it_cannot_start_naming_file_line_and_field(tmp_path: Path):
    env = dict(os.environ, JUPYTER_LAUNCH_HOME=str(tmp_path / "home"))
    for name in ("JUPYTER_LAUNCH_SERVER_URL", "JUPYTER_LAUNCH_TOKEN"):
        env.pop(name, None)

    def up(path: Path) -> str:
        proc = subprocess.run([sys.executable, "-m", "jupyter_launch.cli", "queue", "up", str(path)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc
        return proc.stderr.strip()

    # The seed's queue (aws), as written: refused as `queue create` refuses it.
    seed = ROOT / "examples" / "my_queue.yaml"
    line = next(i for i, text in enumerate(seed.read_text().splitlines(), 1) if "type: aws" in text)
    assert up(seed).startswith(f"jupyter launch: error: {seed}:{line}: provider.type: provider type 'aws' is not "
                               "supported here; supported providers are local, docker, kubernetes")
    slurm = write(tmp_path / "slurm.yaml", "queue_name: hpc\nprovider:\n  type: slurm\n  shared_dir: /tmp\n")
    assert f"{slurm}:3: provider.type: the queue manager cannot start agents for provider 'slurm'" in up(slurm)
    docker = write(tmp_path / "docker.yaml", "queue_name: d\nprovider:\n  type: docker\n  max_instances: 2\n")
    assert f"{docker}: agent_image: the docker provider starts its agents from agent_image" in up(docker)
    typo = write(tmp_path / "typo.yaml", "queue_name: q\nprovider:\n  type: local\n  max_instance: 2\n")
    assert f"{typo}:4: provider.max_instance: unknown field" in up(typo)
    # Its agents are remote agents: with no server (an embedded store named), it says what to give.
    local = write(tmp_path / "local.yaml", "queue_name: q\nprovider:\n  type: local\n")
    assert "give --server URL" in up(local)


# ------------------------------------------------------------------ local provider


def test_local_agents_run_a_job_and_down_leaves_no_process_or_token(cli: Cli, tmp_path: Path):
    queue_file = write(tmp_path / "q.yaml", "queue_name: loc\nprovider:\n  type: local\n  min_instances: 1\n"
                       "  max_instances: 1\n")
    out = cli.run("queue", "up", str(queue_file)).stdout
    assert "queue loc up (local): 1 agent(s) now" in out
    status = wait_for(lambda: (s := cli.status("loc")) and s["agents"] and s["agents"][0]["live"] and s,
                      "the agent serves the queue", lambda: cli.manager_log("loc"))
    (agent,) = status["agents"]
    assert agent["health"] == "running" and agent["where"].startswith("pid ")
    pid = int(agent["where"].split()[1])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--token" not in b" ".join(cmdline) and b"--token-file" not in cmdline  # its token is in its environment
    (token,) = cli.tokens("loc")
    assert (token["name"], token["queues"], token["revoked_at"]) == (f"fleet:loc:{agent['agent_id']}", ["loc"], None)

    job_file = write(tmp_path / "job" / "job.yaml", "kind: command\ncommand: [python3, -c, \"print('hi fleet')\"]\n")
    done = cli.run("submit", "--config", str(job_file), "--queue", "loc", "--follow")
    assert "hi fleet" in done.stdout
    (job,) = cli.json("jobs", "--queue", "loc")
    assert (job["state"], job["agent_id"]) == ("succeeded", agent["agent_id"])
    # `up` again while it is up: the queue's config is updated, the same manager follows it.
    again = cli.run("queue", "up", str(queue_file)).stdout
    assert again.startswith("queue loc updated; its manager (pid ")
    assert [a["agent_id"] for a in cli.status("loc")["agents"]] == [agent["agent_id"]]

    out = cli.run("queue", "down", "loc").stdout
    assert "queue loc down: 1 agent(s) stopped, 1 token(s) revoked" in out
    assert not alive(pid)
    assert all(t["revoked_at"] for t in cli.tokens("loc"))
    assert cli.status("loc") is None
    assert cli.json("queue", "show", "loc")["name"] == "loc"  # the queue and its jobs stay


def test_a_burst_scales_local_agents_to_max_and_idle_brings_them_back_to_min(cli: Cli, tmp_path: Path):
    queue_file = write(tmp_path / "q.yaml", "queue_name: burst\nprovider:\n  type: local\n  min_instances: 1\n"
                       "  max_instances: 3\n")
    cli.run("queue", "up", str(queue_file), "--Fleet.idle_seconds=1", "--Fleet.interval=0.5")
    wait_for(lambda: [a for a in cli.status("burst")["agents"] if a["live"]], "the first agent serves the queue",
             lambda: cli.manager_log("burst"))
    gate = tmp_path / "gate"
    job_file = write(tmp_path / "job" / "job.yaml", "kind: command\ncommand: [python3, -c, \"import os, time\\n"
                     f"while not os.path.exists({str(gate)!r}): time.sleep(0.1)\\nprint('released')\"]\n")
    ids = [cli.run("submit", "--config", str(job_file), "--queue", "burst").stdout.strip() for _ in range(4)]

    def three_running() -> bool:
        jobs = cli.json("jobs", "--queue", "burst", "--state", "running")
        return len(jobs) == 3 and len({j["agent_id"] for j in jobs}) == 3

    wait_for(three_running, "three jobs run at once, each on its own agent", lambda: cli.manager_log("burst"))
    status = cli.status("burst")
    assert len(status["agents"]) == 3  # max_instances: the fourth job waits
    assert len([t for t in cli.tokens("burst") if not t["revoked_at"]]) == 3
    (waiting,) = cli.json("jobs", "--queue", "burst", "--state", "queued")
    assert waiting["reason"] == "waiting_for_capacity"

    gate.write_text("go")
    wait_for(lambda: all(j["state"] == "succeeded" for j in cli.json("jobs", "--queue", "burst")),
             "every job succeeded", lambda: cli.manager_log("burst"))
    assert {j["id"] for j in cli.json("jobs", "--queue", "burst")} == set(ids)
    wait_for(lambda: len(cli.status("burst")["agents"]) == 1, "idle agents stopped down to min_instances",
             lambda: cli.manager_log("burst"))
    tokens = cli.tokens("burst")
    assert (len(tokens), len([t for t in tokens if not t["revoked_at"]])) == (3, 1)
    cli.run("queue", "down", "burst")
    assert all(t["revoked_at"] for t in cli.tokens("burst"))


# ------------------------------------------------------------------ docker provider


@pytest.fixture
def agent_image(docker_api: Any, cli: Cli) -> str:
    tag = cli.run("agent-image", "build", "--tag", AGENT_IMAGE, timeout=900).stdout.strip()
    assert tag == AGENT_IMAGE
    return tag


def test_docker_agents_run_a_job_are_restarted_by_the_engine_and_down_leaves_nothing(
        cli: Cli, docker_api: Any, agent_image: str, tmp_path: Path):
    label = "jupyter-launch.fleet=dock"
    queue_file = write(tmp_path / "q.yaml", "queue_name: dock\nprovider:\n  type: docker\n  min_instances: 1\n"
                       f"  max_instances: 2\nagent_image: {agent_image}\n")
    try:
        cli.run("queue", "up", str(queue_file))
        status = wait_for(lambda: (s := cli.status("dock")) and s["agents"] and s["agents"][0]["live"] and s,
                          "the agent container serves the queue", lambda: cli.manager_log("dock"))
        (agent,) = status["agents"]
        (container,) = docker_api.containers(filters={"label": label})
        info = docker_api.inspect_container(container["Id"])
        assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert info["Config"]["Image"] == agent_image
        assert not any("token" in word.lower() for word in info["Config"]["Cmd"])

        job_file = write(tmp_path / "job" / "job.yaml", "kind: command\nimage: launch-python:bookworm\n"
                         "command: [python3, -c, \"import pathlib, os; print('hi from a sibling container'); "
                         "pathlib.Path(os.environ['JUPYTER_LAUNCH_OUTPUT_DIR'], 'o.txt').write_text('out')\"]\n")
        done = cli.run("submit", "--config", str(job_file), "--queue", "dock", "--follow")
        assert "hi from a sibling container" in done.stdout
        (job,) = cli.json("jobs", "--queue", "dock")
        assert (job["state"], job["agent_id"]) == ("succeeded", agent["agent_id"])
        cli.run("outputs", job["id"], "--to", str(tmp_path / "outs"))
        assert (tmp_path / "outs" / "o.txt").read_text() == "out"

        # The agent process dies (killed from the host, not stopped through the engine): the engine starts the
        # container again, and the agent serves the queue again.
        os.kill(info["State"]["Pid"], signal.SIGKILL)
        wait_for(lambda: docker_api.inspect_container(container["Id"])["RestartCount"] >= 1,
                 "the engine restarts the agent container")
        wait_for(lambda: (s := cli.status("dock"))["agents"][0]["live"] and "running" in s["agents"][0]["health"],
                 "the restarted agent serves the queue", lambda: cli.manager_log("dock"))

        out = cli.run("queue", "down", "dock").stdout
        assert "queue dock down: 1 agent(s) stopped, 1 token(s) revoked" in out
        assert docker_api.containers(all=True, filters={"label": label}) == []
        assert all(t["revoked_at"] for t in cli.tokens("dock"))
    finally:
        for c in docker_api.containers(all=True, filters={"label": label}):
            docker_api.remove_container(c["Id"], force=True)


# ------------------------------------------------------------------ kubernetes provider

KUBECONFIG = Path(os.environ.get("K8S_RUN", "/tmp/launch-k8s")) / "admin.kubeconfig"
HELPER_IMAGE = "busybox:local"  # ci/k8s-start.sh makes it (no registry here)


@pytest.fixture
def k8s() -> Iterator[tuple[Any, Any, Any]]:
    """(AppsV1Api, CoreV1Api, RbacAuthorizationV1Api) of the local cluster (ci/k8s-start.sh), or a failure naming it."""
    from kubernetes import client, config

    try:
        api = config.new_client_from_config(str(KUBECONFIG))
        client.VersionApi(api).get_code(_request_timeout=5)
    except Exception as exc:
        pytest.fail(f"no Kubernetes cluster at {KUBECONFIG} ({exc}): run ci/k8s-start.sh", pytrace=False)
    yield client.AppsV1Api(api), client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    api.close()


def test_kubernetes_agents_run_a_job_with_a_scoped_role_and_down_leaves_nothing(
        cli: Cli, k8s: Any, agent_image: str, tmp_path: Path):
    from jupyter_launch.fleet.kubernetes import ROLE_RULES

    apps, core, rbac = k8s
    selector = "jupyter-launch.fleet=kube"
    # The one-node test cluster has no kube-proxy: the agent pod uses the node's network, to reach the server on
    # loopback and the API server at 127.0.0.1:6443 (its in-cluster Service address would not answer).
    config_dir = tmp_path / "jupyter-config"
    write(config_dir / "jupyter_launch_config.py",
          "c.KubernetesSupervisor.host_network = True\n"
          "c.KubernetesSupervisor.agent_env = {'KUBERNETES_SERVICE_HOST': '127.0.0.1', "
          "'KUBERNETES_SERVICE_PORT': '6443'}\n")
    cli.env.update(KUBECONFIG=str(KUBECONFIG), JUPYTER_CONFIG_DIR=str(config_dir))
    queue_file = write(tmp_path / "q.yaml", "queue_name: kube\nprovider:\n  type: kubernetes\n  namespace: default\n"
                       f"  min_instances: 1\n  max_instances: 1\n  helper_image: {HELPER_IMAGE}\n"
                       f"  image_pull_policy: Never\nagent_image: {agent_image}\n")

    def objects() -> dict[str, list[str]]:
        return {"deployments": [d.metadata.name for d in apps.list_namespaced_deployment(
                    "default", label_selector=selector).items],
                "pods": [p.metadata.name for p in core.list_namespaced_pod("default", label_selector=selector).items],
                "secrets": [s.metadata.name for s in core.list_namespaced_secret(
                    "default", label_selector=selector).items],
                "serviceaccounts": [s.metadata.name for s in core.list_namespaced_service_account(
                    "default", label_selector=selector).items],
                "roles": [r.metadata.name for r in rbac.list_namespaced_role("default", label_selector=selector).items],
                "rolebindings": [r.metadata.name for r in rbac.list_namespaced_role_binding(
                    "default", label_selector=selector).items]}

    try:
        cli.run("queue", "up", str(queue_file))
        status = wait_for(lambda: (s := cli.status("kube")) and s["agents"] and s["agents"][0]["live"] and s,
                          "the agent pod serves the queue", lambda: cli.manager_log("kube") + str(objects()))
        (agent,) = status["agents"]
        found = objects()
        assert len(found["deployments"]) == len(found["secrets"]) == 1
        assert found["serviceaccounts"] == found["roles"] == found["rolebindings"] == ["jupyter-launch-agent-kube"]
        role = rbac.read_namespaced_role("jupyter-launch-agent-kube", "default")
        assert [(r.api_groups, r.resources, r.verbs) for r in role.rules] == [
            (r["apiGroups"], r["resources"], r["verbs"]) for r in ROLE_RULES]
        (deployment,) = apps.list_namespaced_deployment("default", label_selector=selector).items
        pod_spec = deployment.spec.template.spec
        assert pod_spec.service_account_name == "jupyter-launch-agent-kube"
        (container,) = pod_spec.containers
        assert container.image == agent_image and not any("token" in w.lower() for w in container.command)
        assert [e.value_from.secret_key_ref.name for e in container.env if e.name == "JUPYTER_LAUNCH_TOKEN"] == \
            found["secrets"]

        job_file = write(tmp_path / "job" / "job.yaml", f"kind: command\nimage: {HELPER_IMAGE}\n"
                         "command: [sh, -c, 'echo hi from a pod the agent pod made']\n")
        done = cli.run("submit", "--config", str(job_file), "--queue", "kube", "--follow")
        assert "hi from a pod the agent pod made" in done.stdout
        (job,) = cli.json("jobs", "--queue", "kube")
        assert (job["state"], job["agent_id"]) == ("succeeded", agent["agent_id"])

        out = cli.run("queue", "down", "kube").stdout
        assert "queue kube down: 1 agent(s) stopped, 1 token(s) revoked" in out
        wait_for(lambda: not any(objects().values()), "every object of the queue's agents is gone",
                 lambda: str(objects()))
        assert all(t["revoked_at"] for t in cli.tokens("kube"))
    finally:
        for d in apps.list_namespaced_deployment("default", label_selector=selector).items:
            apps.delete_namespaced_deployment(d.metadata.name, "default")
