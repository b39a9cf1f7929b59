"""Every deployment file under cluster/deploy parses, validates where Ray ships a schema or model
for it, and agrees with attune and with the other files: images, entrypoints, ports, resources."""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "cluster" / "deploy"
KUBERAY = DEPLOY / "kuberay"
RAY_UP = DEPLOY / "aws" / "ray-cluster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000}
MLFLOW_PORT = 5000


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _kuberay(name: str) -> dict:
    return _load(KUBERAY / name)


def _cluster_specs() -> dict[str, dict]:
    """Every RayCluster spec in the KubeRay manifests, by file."""
    return {"raycluster.yaml": _kuberay("raycluster.yaml")["spec"],
            "rayjob-finetune.yaml": _kuberay("rayjob-finetune.yaml")["spec"]["rayClusterSpec"],
            "rayservice.yaml": _kuberay("rayservice.yaml")["spec"]["rayClusterConfig"]}


def _derived(name: str, spec: dict) -> dict:
    """The Ray autoscaler's reading of a RayCluster spec (it validates against Ray's cluster schema)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _derive_autoscaling_config_from_ray_cr({"metadata": {"name": name, "namespace": "attune"}, "spec": spec})


def _pods(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
        import tomli as tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _docker_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))


def _built_images() -> set[str]:
    """The tags the Dockerfile's build instructions produce (CPU and GPU)."""
    return set(re.findall(r"docker build -f cluster/deploy/Dockerfile .*?-t (\S+) \.$", DOCKERFILE.read_text(),
                          flags=re.M))


def _all_images() -> dict[str, set[str]]:
    images = {name: {c["image"] for c in _pods(spec)} for name, spec in _cluster_specs().items()}
    ray_up = _load(RAY_UP)
    images["aws/ray-cluster.yaml"] = {ray_up["docker"]["image"]} | {
        t["docker"]["worker_image"] for t in ray_up["available_node_types"].values() if "docker" in t}
    return images


# -- every file parses and validates ----------------------------------------------------------------

def test_every_deploy_file_is_covered_and_parses():
    files = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file()}
    assert files == {"Dockerfile", "Dockerfile.dockerignore", "aws/ray-cluster.yaml", "aws/attune.env.example",
                     "kuberay/attune-config.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-finetune.yaml",
                     "kuberay/rayservice.yaml"}
    kinds = [doc["kind"] for p in KUBERAY.glob("*.yaml") for doc in yaml.safe_load_all(p.read_text())]
    assert sorted(kinds) == ["ConfigMap", "Namespace", "PersistentVolumeClaim", "RayCluster", "RayJob",
                             "RayService"]


def test_ray_up_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(RAY_UP)
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's ray-schema.json and its own checks
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["resourcez"] = {}
    with pytest.raises(Exception, match="resourcez"):
        validate_config(prepare_config(broken))
    assert config["provider"]["type"] == "aws"
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert [(t["min_workers"], t["max_workers"]) for t in workers.values()] == [(2, 8)]  # autoscaling
    assert all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers.values())  # GPU types
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}


def test_ray_up_start_commands_are_valid_ray_start_invocations():
    config = _load(RAY_UP)
    head = _ray_start_options(config["head_start_ray_commands"])
    worker = _ray_start_options(config["worker_start_ray_commands"])
    assert head["head"] and head["port"] == PORTS["gcs-server"] and head["dashboard_port"] == PORTS["dashboard"]
    assert head["dashboard_host"] == "0.0.0.0" and head["num_cpus"] == 0
    assert worker["address"] == f"$RAY_HEAD_IP:{PORTS['gcs-server']}"
    env_file = config["file_mounts"]["/home/ubuntu/attune.env"]
    assert "--env-file /home/ubuntu/attune.env" in config["docker"]["run_options"] and env_file == "./attune.env"


def _ray_start_options(commands: list[str]) -> dict:
    """Parse the `ray start ...` among ``commands`` with Ray's own CLI definition (unknown flags fail)."""
    from ray.scripts.scripts import start

    line = next(c for c in commands if "ray start" in c)
    args = shlex.split(line.split("ray start", 1)[1])
    return start.make_context("start", args).params


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-finetune.yaml", "rayservice.yaml"])
def test_kuberay_cluster_specs_convert_to_valid_autoscaler_configs(name):
    spec = _cluster_specs()[name]
    config = _derived(name, spec)  # raises when Ray's autoscaler cannot read or validate it
    head = config["available_node_types"]["headgroup"]
    assert head["resources"]["CPU"] == 0  # the head only coordinates
    groups = [("--head", spec["headGroupSpec"])] + [("--address=head:6379", g) for g in spec["workerGroupSpecs"]]
    for role, group in groups:  # every param is a `ray start` flag, given as a string as KubeRay wants
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), f"{name}: rayStartParams values must be strings"
        _ray_start_options([f"ray start {role} " + " ".join(f"--{k}={v}" for k, v in params.items())])
    assert spec["rayVersion"] == _docker_args()["RAY_VERSION"]


def test_gpu_worker_groups_request_gpus_the_autoscaler_sees():
    for name in ("raycluster.yaml", "rayjob-finetune.yaml"):
        spec = _cluster_specs()[name]
        types = _derived(name, spec)["available_node_types"]
        group = spec["workerGroupSpecs"][0]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert types[group["groupName"]]["resources"]["GPU"] == limits["nvidia.com/gpu"] == 1
        assert group["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_training_clusters_always_hold_the_gpus_finetune_needs():
    """`attune finetune` picks GPUs only when the cluster has one per worker when it starts, so a GPU
    group must never scale below the default worker count (a RayJob's, its own --workers)."""
    from cluster._settings import Settings
    from cluster.cli import build_parser

    def min_gpus(types: dict) -> int:
        return sum(t["min_workers"] * t["resources"].get("GPU", 0) for t in types.values())

    assert min_gpus(_derived("c", _cluster_specs()["raycluster.yaml"])["available_node_types"]) >= \
        Settings().num_workers
    job = _kuberay("rayjob-finetune.yaml")["spec"]
    workers = build_parser().parse_args(shlex.split(job["entrypoint"])[1:]).workers
    assert min_gpus(_derived("j", job["rayClusterSpec"])["available_node_types"]) >= workers
    ray_up = _load(RAY_UP)
    gpu_types = [t for k, t in ray_up["available_node_types"].items() if k != ray_up["head_node_type"]]
    assert sum(t["min_workers"] for t in gpu_types) >= Settings().num_workers  # g5.2xlarge: 1 GPU each


# -- consistency with attune and across files ---------------------------------------------------------

def test_images_match_the_dockerfile_tags_and_the_project_version():
    version = _pyproject()["project"]["version"]
    built = _built_images()
    assert built == {f"registry.example.com/attune:{version}", f"registry.example.com/attune:{version}-gpu"}
    for name, images in _all_images().items():
        assert images <= built, f"{name} uses {images - built}, which cluster/deploy/Dockerfile does not build"
    gpu = {img for img in built if img.endswith("-gpu")}
    for name in ("raycluster.yaml", "rayjob-finetune.yaml"):  # GPU workers run the GPU build
        workers = _cluster_specs()[name]["workerGroupSpecs"]
        assert {c["image"] for g in workers for c in g["template"]["spec"]["containers"]} == gpu


def test_dockerfile_pins_torch_installs_the_project_and_matches_pyproject():
    from packaging.requirements import Requirement

    text = DOCKERFILE.read_text()
    args = _docker_args()
    deps = {Requirement(d).name: Requirement(d) for d in _pyproject()["project"]["dependencies"]}
    assert f"torch=={args['TORCH_VERSION']}" == str(deps["torch"])  # the same pin as pyproject.toml
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")  # CPU by default; the GPU build overrides it
    assert deps["ray"].specifier.contains(args["RAY_VERSION"])
    packages = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in packages):
        assert re.search(rf"^COPY {package} \./{package}$", text, flags=re.M), f"the image misses {package}/"
    assert re.search(r'^RUN pip install .*"torch==\$\{TORCH_VERSION\}".* "\.\[postgres\]" ', text, flags=re.M)
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, flags=re.M).group(1).split()}
    assert exposed == set(PORTS.values())
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert all(f"!{p.rstrip('*')}/**" in ignored for p in packages)


def test_image_can_train_on_cpu_nodes_without_compiling_at_run_time():
    """DeepSpeed's CPU process groups load a C++ op: the image carries the compiler and the built op,
    where its non-root runtime user can read it."""
    text = DOCKERFILE.read_text()
    apt = re.search(r"apt-get install -y --no-install-recommends (.+?) \\$", text, flags=re.M).group(1).split()
    assert "g++" in apt
    extensions = re.search(r"TORCH_EXTENSIONS_DIR=(\S+)", text).group(1)
    build = text.index("build_cpu_ops()")
    assert build > text.index("COPY train ./train") and "DS_ACCELERATOR=cpu python" in text[build - 200:build]
    assert re.search(r'chown -R ray "\$\{TORCH_EXTENSIONS_DIR\}"', text) and extensions.startswith("/opt/")
    assert text.index("chown -R ray") < text.index("USER ray")


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-finetune.yaml", "rayservice.yaml"])
def test_head_ports_and_settings_come_from_the_shared_config(name):
    spec = _cluster_specs()[name]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert {k: v for k, v in ports.items() if k in PORTS} == {k: v for k, v in PORTS.items()
                                                             if k != "serve" or name != "rayjob-finetune.yaml"}
    for container in _pods(spec):
        sources = [s.get("configMapRef", s.get("secretRef"))["name"] for s in container["envFrom"]]
        assert sources == ["attune-config", "attune-credentials"]


def test_shared_config_names_real_settings_and_the_mlflow_port():
    from cluster._settings import ENV_VARS

    config = next(d for d in yaml.safe_load_all((KUBERAY / "attune-config.yaml").read_text())
                  if d["kind"] == "ConfigMap")
    assert set(config["data"]) <= set(ENV_VARS)
    assert config["data"]["ATTUNE_MLFLOW_TRACKING_URI"].endswith(f":{MLFLOW_PORT}")
    env_example = dict(line.split("=", 1) for line in (DEPLOY / "aws" / "attune.env.example").read_text().splitlines()
                       if line and not line.startswith("#"))
    assert set(env_example) <= set(ENV_VARS)
    assert env_example["ATTUNE_MLFLOW_TRACKING_URI"].endswith(f":{MLFLOW_PORT}")
    # ATTUNE_HOME is where every pod mounts the shared volume
    for spec in _cluster_specs().values():
        for container in _pods(spec):
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert not mounts or mounts == {config["data"]["ATTUNE_HOME"]}


def test_rayjob_entrypoint_is_a_real_finetune_that_fits_the_gpu_group():
    from cluster.cli import build_parser

    job = _kuberay("rayjob-finetune.yaml")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[0] == "attune"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "finetune" and args.tenant == "john" and args.data.startswith("s3://")
    gpus = sum(t["max_workers"] * t["resources"].get("GPU", 0)
               for t in _derived("job", job["rayClusterSpec"])["available_node_types"].values())
    assert args.workers <= gpus, f"--workers {args.workers} needs more GPUs than the cluster can have ({gpus})"
    assert job["shutdownAfterJobFinishes"] is True


def _serve_config() -> dict:
    return yaml.safe_load(_kuberay("rayservice.yaml")["spec"]["serveConfigV2"])


def test_rayservice_serve_config_validates_with_rays_schema():
    from ray.serve.schema import ServeDeploySchema

    config = _serve_config()
    schema = ServeDeploySchema.model_validate(config)
    assert set(config) <= set(ServeDeploySchema.model_fields)  # no key Serve would silently ignore
    assert schema.http_options.port == PORTS["serve"] and schema.http_options.host == "0.0.0.0"
    from serve._app import APP_NAME

    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == (APP_NAME, "/", "serve:app_builder")


def test_rayservice_application_imports_and_builds_with_its_args(monkeypatch):
    """What Serve does with import_path + args, short of starting replicas."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    from serve._config import parse_config

    monkeypatch.setenv("ATTUNE_MLFLOW_TRACKING_URI", f"http://mlflow.attune.svc:{MLFLOW_PORT}")
    (app,) = _serve_config()["applications"]
    parse_config(app["args"])  # attune's own config model accepts the args
    builder = import_attr(app["import_path"])
    built = build_app(call_user_app_builder_with_args_if_necessary(builder, app["args"]), name=app["name"])
    from serve._app import DEPLOYMENT

    assert built.ingress_deployment_name == DEPLOYMENT  # one deployment serves HTTP and holds the models
    options = {d.name: d.ray_actor_options for d in built.deployments}
    assert list(options) == [DEPLOYMENT] and options[DEPLOYMENT]["num_cpus"] == app["args"]["model"]["num_cpus"]
    with pytest.raises(Exception, match="max_replicas"):
        call_user_app_builder_with_args_if_necessary(builder, {"model": {"autoscaling": {"max_replicas": 0}}})


def test_rayservice_autoscaling_fits_its_worker_group():
    spec = _kuberay("rayservice.yaml")["spec"]
    args = _serve_config()["applications"][0]["args"]
    types = _derived("svc", spec["rayClusterConfig"])["available_node_types"]
    group = spec["rayClusterConfig"]["workerGroupSpecs"][0]
    cpus_per_pod = types[group["groupName"]]["resources"]["CPU"]
    model = args["model"]
    assert model["autoscaling"]["min_replicas"] < model["autoscaling"]["max_replicas"]  # Serve autoscaling is on
    peak = model["autoscaling"]["max_replicas"] * model["num_cpus"]
    assert peak <= group["maxReplicas"] * cpus_per_pod, "max replicas need more CPUs than the group can add"
    assert model["num_cpus"] <= cpus_per_pod
