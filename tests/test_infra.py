"""infra/: every manifest parses and validates; the deployed Serve config is the tested one."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SERVE_CONFIG = ROOT / "serving" / "serve_config.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.json")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_parses(path):
    document = json.loads(path.read_text()) if path.suffix == ".json" else load(path)
    assert isinstance(document, dict) and document


def test_serve_config_validates_against_serves_schema():
    ServeDeploySchema.model_validate(load(SERVE_CONFIG))


def test_rayservice_serves_the_tested_application():
    service = load(INFRA / "kuberay" / "rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    deployed = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(deployed)
    (app,), (tested,) = deployed["applications"], load(SERVE_CONFIG)["applications"]
    assert app["import_path"] == tested["import_path"] == "serving.app:build_app"
    assert set(app["args"]) == set(tested["args"])  # same options, cluster values
    assert {d["name"] for d in app["deployments"]} == {d["name"] for d in tested["deployments"]}
    from serving.options import ServingOptions

    ServingOptions.from_args(app["args"])  # every option is one the application knows


@pytest.mark.parametrize("args, message", [
    ({"typo_k": 3}, "unknown serving option"),
    ({"default_aggregator": "median"}, "default_aggregator"),
    ({"default_rerank": "gemini"}, "rerank must be one of"),
    ({"default_k": 0}, "default_k"),
])
def test_bad_serving_options_fail_at_deploy(args, message):
    from serving.options import ServingOptions

    with pytest.raises(ValueError, match=message):
        ServingOptions.from_args({"memory": "/m", **args})


K8S_VERSION = "1.33.0"


def k8s_validate(document: dict) -> None:
    """Strict validation against Kubernetes' own OpenAPI schemas (shipped offline by
    kubernetes-validate): unknown or mistyped fields fail."""
    import kubernetes_validate

    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def _pod_templates(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]


def _containers(spec: dict) -> list[dict]:
    head = spec["headGroupSpec"]["template"]["spec"]["containers"]
    workers = [c for group in spec.get("workerGroupSpecs", []) for c in group["template"]["spec"]["containers"]]
    return head + workers


@pytest.mark.parametrize("name, cluster_key", [("rayservice.yaml", "rayClusterConfig"),
                                               ("rayjob-index-build.yaml", "rayClusterSpec")])
def test_ray_clusters_keep_the_dashboard_private_and_pin_ray(name, cluster_key):
    manifest = load(INFRA / "kuberay" / name)
    cluster = manifest["spec"][cluster_key]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    for container in _containers(cluster):
        assert container["image"] and "resources" in container
    # KubeRay's CRDs embed core pod templates: validate each as a v1 PodTemplate.
    for template in _pod_templates(cluster):
        k8s_validate({"apiVersion": "v1", "kind": "PodTemplate",
                      "metadata": {"name": "ray-pod"}, "template": template})
    for group in cluster.get("workerGroupSpecs", []):
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_rayjob_entrypoint_is_a_valid_index_build():
    from indexer.cli import build_parser

    job = load(INFRA / "kuberay" / "rayjob-index-build.yaml")
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "indexer"]
    args = build_parser().parse_args(words[3:])
    assert (args.command, args.ray_address) == ("build", "auto")


def cronjob_command(overrides: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The CronJob container's shell command and its literal env values (the token, which comes
    from a Secret, left out), with ``overrides`` applied: what tests/test_schedule.py runs."""
    cron = load(INFRA / "schedule" / "cronjob-update.yaml")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return container["args"][0], {**env, **(overrides or {})}


def test_cronjob_runs_an_idempotent_update_with_valid_options():
    cron = load(INFRA / "schedule" / "cronjob-update.yaml")
    k8s_validate(cron)
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    command, env = cronjob_command()
    assert command.startswith("set -f; exec vmem update ")
    # The words the container's shell passes to vmem (sh expands the variables).
    printed = subprocess.run(["/bin/sh", "-c", command.replace(
        "exec vmem", f"exec {sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'", 1)],
        env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, check=True)
    words = json.loads(printed.stdout)
    assert words[0] == "update"
    from vmem.update import build_parser

    parsed, beam_args = build_parser().parse_known_args(words[1:])
    assert (parsed.incoming, parsed.memory) == ("gs://CHANGE-ME/incoming/", "gs://CHANGE-ME/memory")
    assert parsed.reload_url == "http://vmem-serve-serve-svc:8000" and parsed.token_env == "VMEM_TOKEN"
    assert beam_args[:2] == ["--runner", "DataflowRunner"]  # the ingest runs on Dataflow
    assert beam_args == shlex.split(env["BEAM_ARGS"])  # every word intact, ';' and ':' included
    assert beam_args[-1] == "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    token = next(e for e in container["env"] if e["name"] == "VMEM_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token["name"] == "vmem-token"


@pytest.mark.parametrize("path", [SERVE_CONFIG, INFRA / "kuberay" / "rayservice.yaml"],
                         ids=lambda p: p.name)
def test_vmem_serve_check_validates_a_config_without_ray(path, capsys):
    from serving.serve import main

    assert main(["--check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "is valid (deployments: Router" in out
    # The packaged config searches in the routers (searcher_groups 0); the RayService in 2 groups.
    assert ("serve deploy refuses them): Searcher0, Searcher1" in out) == (path == SERVE_CONFIG)


def test_vmem_serve_check_names_what_is_wrong(tmp_path):
    from serving.serve import main

    service = load(INFRA / "kuberay" / "rayservice.yaml")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    config["applications"][0]["deployments"][0]["name"] = "Searchr1"  # a typo
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="Searchr1"):
        main(["--check", "--config", str(tmp_path / "bad.yaml")])
    config["applications"][0]["deployments"][0]["name"] = "Router"
    config["applications"][0]["deployments"][0]["num_replicas"] = "two"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="num_replicas"):
        main(["--check", "--config", str(tmp_path / "bad.yaml")])
    config["applications"][0]["deployments"][0]["num_replicas"] = 2
    config["applications"][0]["args"]["default_k"] = "100"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="default_k"):
        main(["--check", "--config", str(tmp_path / "bad.yaml")])
    # A RayService is deployed as `serve deploy` does: a deployment the app does not build fails.
    config["applications"][0]["args"]["default_k"] = 100
    config["applications"][0]["args"]["searcher_groups"] = 1  # Searcher1 is then not built
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    (tmp_path / "service.yaml").write_text(yaml.safe_dump(service))
    with pytest.raises(ValueError, match="serve deploy refuses .*Searcher1"):
        main(["--check", "--config", str(tmp_path / "service.yaml")])


def test_flex_template_parameters_are_ingest_options():
    from pipelines.ingest import build_parser

    metadata = json.loads((INFRA / "dataflow" / "flex-template-metadata.json").read_text())
    assert metadata["name"] and metadata["parameters"]
    # the launcher passes each parameter as --<name>=<value>: it must be an option string as spelt
    options = {string for action in build_parser()._actions for string in action.option_strings}
    for parameter in metadata["parameters"]:
        assert {"name", "label", "helpText"} <= set(parameter)
        assert f"--{parameter['name']}" in options, parameter["name"]
    args, beam_args = build_parser().parse_known_args(
        [f"--{p['name']}=8" for p in metadata["parameters"]])
    assert args.batch_size == 8 and beam_args == []  # none left over for Beam to ignore


def test_capacity_plan_is_consistent():
    import importlib.util

    spec = importlib.util.spec_from_file_location("capacity", INFRA / "capacity.py")
    capacity = importlib.util.module_from_spec(spec)
    sys.modules["capacity"] = capacity  # dataclasses look their module up here
    spec.loader.exec_module(capacity)
    inputs = capacity.Inputs()
    one, five = (capacity.plan(n, "dinov2-vit-l14", inputs) for n in (1e9, 5e9))
    assert five["embedding_gpu_hours"] == pytest.approx(5 * one["embedding_gpu_hours"], rel=1e-3)
    assert one["index_bytes_per_vector"] == 64 + 8 + 6 + 2 * 1024 + 120  # codes, ids, lists, fp16, metadata
    assert one["ram_bytes_per_vector"] == pytest.approx((64 + 8 + 6) * 1.2)  # resident: codes + ids
    assert 4 * one["shards"] <= five["shards"] <= 5 * one["shards"]  # ceil(N * B / node) per N
    assert one["serving_nodes"] == one["shards"] * one["replicas_per_shard"]
    from indexer.factory import choose_factory

    assert one["factory"] == choose_factory(10**9, 1024, 64) and one["nlist"] == 65536  # the build's rule, capped


def test_kubernetes_validation_catches_a_typo():
    import kubernetes_validate

    cron = load(INFRA / "schedule" / "cronjob-update.yaml")
    cron["spec"]["concurrencyPolicyy"] = cron["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(cron)


def test_the_image_locks_satisfy_the_project_pins():
    """infra/docker/requirements*.lock (make lock) hold every pin of pyproject.toml at its
    version; the GPU lock swaps faiss-cpu for faiss-gpu of the same version."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def lock(name: str) -> dict[str, str]:
        lines = (INFRA / "docker" / name).read_text().splitlines()
        pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
        return {canonicalize_name(n): v for n, v in pairs}

    cpu, gpu = lock("requirements.lock"), lock("requirements-gpu.lock")
    extras = project["optional-dependencies"]
    for text in project["dependencies"] + extras["gcp"] + extras["aws"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in cpu, f"{name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(cpu[name], prereleases=True), (name, cpu[name])
        if name != "faiss-cpu":
            assert gpu.get(name) == cpu[name], (name, gpu.get(name), cpu[name])
    (faiss_gpu,) = [Requirement(text) for text in extras["gpu"]]
    assert "faiss-cpu" not in gpu and faiss_gpu.specifier.contains(gpu["faiss-gpu"])
    assert gpu["faiss-gpu"] == cpu["faiss-cpu"]  # the same FAISS, GPU build
    assert "visual-memory" not in cpu  # the project goes in as its own wheel, at its commit
