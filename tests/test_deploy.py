"""The image, the compose stack and the Kubernetes manifests, validated offline.

There is no Docker engine or cluster here: the Dockerfile is checked to build from files that exist
(the wheel stage is run for real), to run as a non-root user and to have a HEALTHCHECK; the compose
file against the Compose Specification's JSON Schema (vendored in deploy/compose-spec/); the manifests
against the Kubernetes schemas (kubernetes-validate). Every LBP_ variable they set must be one the
service reads, and every command they run one the CLI has.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import ROOT, free_port

from cds_service.app import create_app
from cds_service.cli import EXAMPLES_DIR
from cds_service.settings import _scalar_keys, env_name, load_settings, startup_problems

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "deploy" / "compose-spec" / "compose-spec.json"
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = kubernetes_validate.latest_version()

# Added today by the storage work (Alembic): the `lbp-redflags migrate` command and the
# `migrate_on_start` setting. The deployment files use them already; delete this once that is merged.
def variables_the_service_reads() -> set[str]:
    keys = set(_scalar_keys())
    return {env_name(key) for key in keys} | {"LBP_CONFIG"}


def cli_commands() -> set[str]:
    from cds_service import cli

    source = Path(cli.__file__).read_text()
    return set(re.findall(r'sub\.add_parser\("([a-z-]+)"', source))


# ================================================================ Dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, arguments)] per stage; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def copy_sources(stage: list[tuple[str, str]]) -> list[str]:
    sources = []
    for instruction, arguments in stage:
        if instruction == "COPY" and "--from=" not in arguments:
            words = [w for w in shlex.split(arguments) if not w.startswith("--")]
            sources += words[:-1]
    return sources


def test_the_dockerfile_has_a_build_stage_and_a_runtime_stage():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    assert any(i == "RUN" and "pip wheel" in a for i, a in stages[0]), "the build stage makes wheels"
    runtime = stages[-1]
    assert any(i == "COPY" and "--from=" in a for i, a in runtime)
    assert any(i == "RUN" and "pip install" in a and "--no-index" in a for i, a in runtime), \
        "the runtime installs the wheels built, and nothing from the network"


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    sources = [s for stage in dockerfile_stages() for s in copy_sources(stage)]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not any(Path(source).match(pattern.strip("/")) for pattern in ignored), f"{source} is .dockerignored"


def test_the_dockerfile_runtime_runs_as_a_non_root_user_it_creates():
    runtime = dockerfile_stages()[-1]
    users = [a for i, a in runtime if i == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_user = max(n for n, (i, _a) in enumerate(runtime) if i == "USER")
    assert not any(i == "RUN" for i, _a in runtime[last_user:]), "nothing runs as root after USER"
    assert any(i == "RUN" and "useradd" in a and f"--uid {user}" in a for i, a in runtime)


def test_the_dockerfile_health_check_probes_an_endpoint_the_service_has(tmp_path):
    runtime = dockerfile_stages()[-1]
    checks = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert len(checks) == 1 and " CMD " in f" {checks[0]} "
    path = re.search(r"127\.0\.0\.1:%s(/\w+)", checks[0])[1]
    app = create_app(load_settings(env={}, database_url=f"sqlite:///{tmp_path / 'h.db'}"))
    assert app.test_client().get(path).status_code == 200


def test_the_dockerfile_starts_a_command_the_cli_has():
    runtime = dockerfile_stages()[-1]
    entrypoint = json.loads(next(a for i, a in runtime if i == "ENTRYPOINT"))
    command = json.loads(next(a for i, a in runtime if i == "CMD"))
    assert entrypoint == ["lbp-redflags"] and command[0] in cli_commands()


def test_the_dockerfile_build_stage_makes_a_complete_wheel_from_the_files_it_copies(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    for source in copy_sources(dockerfile_stages()[0]):
        target = context / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / source, target)
    # Offline (no build isolation, no index): the build backend comes from the test extra.
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "--quiet", "--wheel-dir", str(tmp_path / "wheels"), str(context)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    wheel = next((tmp_path / "wheels").glob("lbp_redflags-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("cds_service/schemas/", "cds_service/example_patients/", "fhir_mappings/valuesets/",
                 "cards/knowledge/"):
        assert any(n.startswith(data) and n.endswith(".json") for n in names), f"{data} is missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lbp-redflags = cds_service.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


COMPILERS = ("build-essential", "gcc", "g++", "clang", "cc ")


def apt_installs(stage: list[tuple[str, str]]) -> str:
    return " ".join(a for i, a in stage if i == "RUN" and "apt-get install" in a)


def test_the_build_stage_has_a_c_toolchain_for_dependencies_without_a_wheel_on_the_platform():
    # PyRuSH, quicksectx, pysimstring and medspacy_unqlite publish no arm64 wheels: pip compiles them there.
    assert "build-essential" in apt_installs(dockerfile_stages()[0])


def test_the_runtime_stage_installs_no_compiler():
    runtime = apt_installs(dockerfile_stages()[-1])
    assert not [c for c in COMPILERS if c in f"{runtime} "]


def test_the_runtime_stage_smoke_tests_the_installed_service_with_a_command_the_cli_has():
    runtime = dockerfile_stages()[-1]
    install = next(a for i, a in runtime if i == "RUN" and "pip install" in a)
    command = re.search(r"lbp-redflags (\S+)", install.split("pip install", 1)[1])
    assert command and command[1] in cli_commands(), "the image runs the installed service once before it ships"


def test_the_smoke_command_reads_every_example_patient_offline_without_an_error():
    # The command the image runs after installing; the connect guard fails the test on any download.
    result = subprocess.run([sys.executable, "-m", "cds_service.cli", "demo"], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("\n=== ") == len(list(EXAMPLES_DIR.glob("[0-9]*.json")))
    assert "error" not in result.stdout.lower()


def dependency_closure(name: str) -> dict[str, list[str]]:
    """{distribution name: its requirements} for the project and everything it installs (extras left out)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    seen: dict[str, list[str]] = {}
    pending = [(name, set())]
    while pending:
        current, extras = pending.pop()
        key = current.lower().replace("_", "-").replace(".", "-")
        try:
            requires = distribution(current).requires or []
        except PackageNotFoundError:
            continue  # a requirement whose marker does not apply here (another Python or platform)
        if key in seen and not extras:
            continue
        seen.setdefault(key, [])
        for line in requires:
            requirement = Requirement(line)
            environment = [{"extra": extra} for extra in extras or {""}]
            if requirement.marker and not any(requirement.marker.evaluate(e) for e in environment):
                continue
            seen[key].append(line)
            pending.append((requirement.name, set(requirement.extras)))
    return seen


def test_the_project_installs_no_spacy_model_and_nothing_from_a_url():
    """Notes are read with a blank English pipeline: no model package, none fetched by URL at install."""
    from importlib.metadata import entry_points

    closure = dependency_closure("lbp-redflags")
    assert {"medspacy", "spacy", "pyrush"} <= set(closure)
    by_url = [line for lines in closure.values() for line in lines if "@" in line.split(";")[0]]
    assert by_url == []
    models = re.compile(r"^(en|xx)-core-|^en-ner-|-core-(web|sci|news)-")
    assert [name for name in closure if models.search(name)] == []
    assert list(entry_points(group="spacy_models")) == []  # where spaCy finds installed model packages


# ================================================================ docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_errors(document: dict) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_the_compose_file_follows_the_compose_specification(compose):
    assert compose_errors(compose) == []


def test_the_compose_schema_check_catches_a_mistake(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["lbp-redflags"]["depends_on"]["postgres"]["condition"] = "service_happy"
    assert compose_errors(broken)


def test_compose_starts_the_service_postgres_hapi_and_a_loading_job(compose):
    services = compose["services"]
    assert services["lbp-redflags"]["build"]["context"] == "."
    assert (ROOT / services["lbp-redflags"]["build"]["dockerfile"]).exists()
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["fhir"]["image"].startswith("hapiproject/hapi:")
    load = services["load-examples"]["command"]
    assert load[0] == "load-fhir" and "http://fhir:8080/fhir" in load
    examples = [word for word in load if word.endswith(".json")]
    assert sorted(examples) == sorted(p.name for p in EXAMPLES_DIR.glob("[0-9]*.json"))


def test_compose_publishes_ports_without_host_networking(compose):
    for name, service in compose["services"].items():
        assert "network_mode" not in service, f"{name} uses network_mode"
    assert "8080:8080" in compose["services"]["lbp-redflags"]["ports"]


def test_compose_waits_for_healthy_dependencies(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health: none defined"
    assert services["lbp-redflags"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["lbp-redflags"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "--wait" in services["load-examples"]["command"], "HAPI has no health check: the job waits for it"


def test_compose_runs_migrations_once_in_a_job(compose):
    services = compose["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["lbp-redflags"]["environment"]["LBP_MIGRATE_ON_START"] == "false"


def compose_environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in environment.items()}


def test_compose_sets_only_variables_the_service_reads(compose):
    for name, service in compose["services"].items():
        for variable in compose_environment(service):
            if variable.startswith("LBP_"):
                assert variable in variables_the_service_reads(), f"{name}: {variable} is read by nothing"


def test_compose_runs_only_commands_the_cli_has(compose):
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("lbp-redflags"):
            assert service["command"][0] in cli_commands(), f"{name}: {service['command'][0]}"


def mounted_host_file(service: dict, container_path: str) -> Path:
    for volume in service["volumes"]:
        host, target = volume.split(":")[:2]
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return ROOT / host / Path(container_path).relative_to(target) if container_path != target else ROOT / host
    raise AssertionError(f"{container_path} is not mounted")


def test_compose_configuration_file_is_mounted_and_starts_an_authenticated_service(compose):
    service = compose["services"]["lbp-redflags"]
    environment = compose_environment(service)
    config = mounted_host_file(service, environment["LBP_CONFIG"])
    settings = load_settings(config, env={"LBP_DATABASE_URL": "postgresql+psycopg://lbp@postgres/lbp"})
    assert settings.auth.required and settings.auth.clients and settings.public_base_url
    assert startup_problems(load_settings(config, env={}, host="0.0.0.0")) == []
    for client in settings.auth.clients:
        # The file names the key as the container sees it: relative to the mounted file.
        in_container = Path(environment["LBP_CONFIG"]).parent / Path(client.jwks_file).relative_to(config.parent)
        keys = json.loads(mounted_host_file(service, str(in_container)).read_text())
        assert keys["keys"], f"{client.issuer}: the mounted JWK Set has no key"


def test_load_fhir_waits_for_a_server_that_never_answers_and_says_so(tmp_path):
    port = free_port()
    result = subprocess.run([sys.executable, "-m", "cds_service.cli", "load-fhir", "--wait", "1",
                             f"http://127.0.0.1:{port}/fhir", "03-breast-cancer-history.json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "did not answer GET /metadata within 1 s" in result.stderr


def test_load_fhir_with_wait_loads_once_the_server_answers(fhir_server):
    result = subprocess.run([sys.executable, "-m", "cds_service.cli", "load-fhir", "--wait", "30",
                             fhir_server.base_url, "03-breast-cancer-history.json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "all stored" in result.stdout


# ================================================================ Kubernetes


def manifests() -> dict[str, dict]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return {name: yaml.safe_load((KUBERNETES / name).read_text()) for name in kustomization["resources"]}


def by_kind(kind: str) -> dict:
    return next(m for m in manifests().values() if m["kind"] == kind)


def test_kustomization_lists_every_manifest():
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(manifests()) == files


@pytest.mark.parametrize("name", sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_kubernetes_manifest_is_valid_against_the_kubernetes_schema(name):
    document = yaml.safe_load((KUBERNETES / name).read_text())
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validation_catches_a_mistake():
    broken = copy.deepcopy(by_kind("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpus"] = "2"
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def container() -> dict:
    return by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_kubernetes_probes_readiness_and_liveness():
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container()["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_kubernetes_replicas_have_requests_and_limits_and_run_as_non_root():
    resources = container()["resources"]
    assert set(resources["requests"]) >= {"cpu", "memory"} and set(resources["limits"]) >= {"cpu", "memory"}
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert pod["terminationGracePeriodSeconds"] > load_settings(env={}).graceful_timeout


def test_kubernetes_autoscaler_service_and_budget_point_at_the_deployment():
    deployment = by_kind("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert by_kind("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    for selector in (by_kind("Service")["spec"]["selector"],
                     by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()


def test_kubernetes_migrations_run_in_a_job_not_in_the_replicas():
    job = by_kind("Job")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["migrate"] and "migrate" in cli_commands()
    assert by_kind("ConfigMap")["data"]["LBP_MIGRATE_ON_START"] == "false"


def test_kubernetes_secret_holds_the_jwk_set_admin_token_and_database_url():
    secret = by_kind("Secret")["stringData"]
    assert {"LBP_ADMIN_TOKEN", "LBP_DATABASE_URL"} <= set(secret)
    mounted = {item["key"] for volume in by_kind("Deployment")["spec"]["template"]["spec"]["volumes"]
               if "secret" in volume for item in volume["secret"]["items"]}
    assert mounted and all("keys" in json.loads(secret[key]) for key in mounted)


def kubernetes_variables() -> set[str]:
    names = set(by_kind("ConfigMap")["data"]) | set(by_kind("Secret")["stringData"])
    for manifest in manifests().values():
        pod = manifest.get("spec", {}).get("template", {}).get("spec", {})
        names |= {env["name"] for c in pod.get("containers", []) for env in c.get("env", [])}
    return {name for name in names if name.startswith("LBP_")}


def test_kubernetes_sets_only_variables_the_service_reads():
    unknown = kubernetes_variables() - variables_the_service_reads()
    assert not unknown


def test_kubernetes_configuration_file_starts_an_authenticated_service(tmp_path):
    config = tmp_path / "lbp-redflags.toml"
    config.write_text(by_kind("ConfigMap")["data"]["lbp-redflags.toml"])
    settings = load_settings(config, env={}, host="0.0.0.0")
    assert settings.auth.required and not settings.fhir.allow_http
    assert startup_problems(settings) == []
    jwks_file = settings.auth.clients[0].jwks_file
    mount = next(m for m in container()["volumeMounts"] if m["name"] == "keys")
    assert jwks_file.startswith(mount["mountPath"] + "/")
