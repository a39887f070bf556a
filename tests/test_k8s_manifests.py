"""deploy/k8s, checked offline: schemas (kubernetes-validate --strict), KubeRay's rules, and the cross-references
between the manifests that no schema sees (Secret/ConfigMap/Service names, images, ports, Ray resources)."""
from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
VALIDATE = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION]

# Fields of KubeRay's ray.io/v1 RayCluster (ray-operator/apis/ray/v1/raycluster_types.go, v1.6.2; v1.7.0 only adds
# fields). kubernetes-validate has no schema for custom resources, so a misspelt key here would otherwise pass.
RAYCLUSTER_SPEC_FIELDS = {
    "upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs",
}
HEAD_GROUP_FIELDS = {"template", "headService", "enableIngress", "resources", "labels", "rayStartParams", "serviceType"}
WORKER_GROUP_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "resources", "labels",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}
GCS_FT_FIELDS = {"redisUsername", "redisPassword", "externalStorageNamespace", "redisAddress"}
REDIS_CREDENTIAL_FIELDS = {"valueFrom", "value"}
AUTH_OPTIONS_FIELDS = {"enableK8sTokenAuth", "secretName", "mode"}
# KubeRay's names: the head Service `<cluster>-head-svc`, the labels of its pods, the token Secret's key.
KUBERAY_HEAD_LABELS = {"ray.io/node-type": "head"}
KUBERAY_AUTH_TOKEN_KEY = "auth_token"
# The Ray resource a pipeline worker needs (the controller places workers with it) and the controller's own.
WORKER_RESOURCE = "rpn_worker"
CONTROLLER_RESOURCE = "rpn_controller"


@functools.cache
def load_docs(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file (cached: copy before changing them)."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))


def applied_docs() -> list[dict[str, Any]]:
    """Every resource `kubectl apply -k deploy/k8s` creates, in the kustomization's order."""
    return [d for name in kustomization()["resources"] for d in load_docs(K8S / name)]


def secret_docs() -> list[dict[str, Any]]:
    return load_docs(K8S / "secrets.template.yaml")


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in applied_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def ray_cluster() -> dict[str, Any]:
    return one("RayCluster")


def ray_groups(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("head", headGroupSpec), then (groupName, workerGroupSpec) for each worker group."""
    yield "head", cluster["spec"]["headGroupSpec"]
    for group in cluster["spec"].get("workerGroupSpecs", []):
        yield group["groupName"], group


def pod_template_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, PodTemplateSpec) of every pod the manifests make: workloads' templates and the RayCluster's groups."""
    for doc in applied_docs():
        if doc["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]
        elif doc["kind"] == "RayCluster":
            for group, spec in ray_groups(doc):
                yield f"RayCluster/{doc['metadata']['name']} group {group}", spec["template"]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod the manifests make."""
    for where, template in pod_template_specs():
        yield where, template["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def pod_templates(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """The RayCluster's pod templates as core PodTemplates, which kubernetes-validate knows."""
    return [{"apiVersion": "v1", "kind": "PodTemplate",
             "metadata": {"name": f"{cluster['metadata']['name']}-{group}"}, "template": spec["template"]}
            for group, spec in ray_groups(cluster)]


def core_manifest_files() -> list[Path]:
    """Every file of core kinds: what the kustomization applies, but the RayCluster, plus the Secrets template."""
    files = [K8S / name for name in kustomization()["resources"]]
    files = [f for f in files if not any(d["kind"] == "RayCluster" for d in load_docs(f))]
    return [*files, K8S / "secrets.template.yaml"]


def kubernetes_validate(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VALIDATE, *map(str, files)], capture_output=True, text=True, timeout=120)


def write_docs(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    return path


def kuberay_problems(cluster: dict[str, Any]) -> list[str]:
    """What KubeRay (v1.6) would refuse or ignore in the RayCluster: unknown fields and its validation rules."""
    problems: list[str] = []

    def unknown(where: str, value: dict[str, Any], allowed: set[str]) -> None:
        problems.extend(f"{where}.{key}: not a KubeRay field" for key in sorted(set(value) - allowed))

    name = cluster["metadata"]["name"]
    if len(name) > 53 or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        problems.append(f"metadata.name {name!r}: KubeRay wants a DNS-1035 label of at most 53 characters")
    spec = cluster["spec"]
    unknown("spec", spec, RAYCLUSTER_SPEC_FIELDS)
    unknown("spec.headGroupSpec", spec["headGroupSpec"], HEAD_GROUP_FIELDS)
    unknown("spec.authOptions", spec.get("authOptions", {}), AUTH_OPTIONS_FIELDS)
    ft = spec.get("gcsFaultToleranceOptions")
    if ft is not None:
        unknown("spec.gcsFaultToleranceOptions", ft, GCS_FT_FIELDS)
        for key in ("redisUsername", "redisPassword"):
            unknown(f"spec.gcsFaultToleranceOptions.{key}", ft.get(key, {}), REDIS_CREDENTIAL_FIELDS)
        if "ray.io/ft-enabled" in cluster["metadata"].get("annotations", {}):
            problems.append("the ray.io/ft-enabled annotation and gcsFaultToleranceOptions are both set")
        head = spec["headGroupSpec"]
        if "redis-password" in head.get("rayStartParams", {}):
            problems.append("rayStartParams.redis-password with gcsFaultToleranceOptions (use redisPassword)")
        env = {e["name"] for e in head["template"]["spec"]["containers"][0].get("env", [])}
        problems.extend(f"head container sets {var}, which KubeRay sets from gcsFaultToleranceOptions"
                        for var in sorted(env & {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS", "REDIS_USERNAME"}))
    names = [g["groupName"] for g in spec.get("workerGroupSpecs", [])]
    if len(names) != len(set(names)):
        problems.append(f"worker group names repeat: {names}")
    for group, g in ray_groups(cluster):
        where = f"group {group}"
        if group != "head":
            unknown(f"spec.workerGroupSpecs[{group}]", g, WORKER_GROUP_FIELDS)
            low, high, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas", 0)
            if low is None or high is None:
                problems.append(f"{where}: minReplicas and maxReplicas are required without autoscaling")
            elif not 0 <= low <= n <= high:
                problems.append(f"{where}: needs 0 <= minReplicas <= replicas <= maxReplicas")
        if not g["template"]["spec"].get("containers"):
            problems.append(f"{where}: no container")
        start = g.get("rayStartParams", {})
        if g.get("resources") and {"num-cpus", "num-gpus", "memory", "resources"} & set(start):
            problems.append(f"{where}: resources set both in rayStartParams and in the group's resources")
        if "labels" in start:
            problems.append(f"{where}: rayStartParams.labels is not supported (use the group's labels)")
    return problems


# --- the kustomization -------------------------------------------------------------------------------------------


def test_kustomization_applies_every_manifest_once() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    # The Secrets stay out (`apply -k` must never overwrite real credentials); everything else is applied.
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secrets.template.yaml"}
    assert set(listed) == on_disk
    assert not any(d["kind"] == "Secret" for d in applied_docs())
    names = [(d["kind"], d["metadata"]["name"]) for d in applied_docs()]
    assert len(names) == len(set(names)), f"a resource is defined twice: {names}"
    # kustomization.yaml sets the namespace; the manifests do not pin another one.
    namespace = kustomization()["namespace"]
    assert one("Namespace")["metadata"]["name"] == namespace
    for doc in applied_docs():
        assert doc["metadata"].get("namespace", namespace) == namespace


# --- schemas -------------------------------------------------------------------------------------------------------


def test_core_manifests_and_ray_pod_templates_pass_strict_validation(tmp_path: Path) -> None:
    templates = write_docs(tmp_path / "raycluster-pod-templates.yaml", pod_templates(ray_cluster()))
    files = [*core_manifest_files(), templates]
    result = kubernetes_validate(*files)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Every resource was checked against a schema: none skipped for an unknown kind.
    assert "WARN" not in output and "ERROR" not in output, output
    expected = [(d["kind"].lower(), d["metadata"]["name"]) for f in files for d in load_docs(f)]
    for kind, name in expected:
        assert f"passed for resource {kind}/{name} against version 1.30" in output, output
    assert {"podtemplate/rpn-head", "podtemplate/rpn-cpu", "podtemplate/rpn-gpu"} <= {
        f"{k}/{n}" for k, n in expected}


def misspell(docs: list[dict[str, Any]], kind: str, path: tuple[Any, ...], wrong: str) -> list[dict[str, Any]]:
    """A copy of `docs` whose `kind` resource has the key at `path` renamed to `wrong`."""
    docs = copy.deepcopy(docs)
    node = next(d for d in docs if d["kind"] == kind)
    for step in path[:-1]:
        node = node[step]
    node[wrong] = node.pop(path[-1])
    return docs


def test_strict_validation_refuses_misspelt_fields(tmp_path: Path) -> None:
    """The checks above can fail: copies with one misspelt field each are refused, naming the field."""
    redis = load_docs(K8S / "redis.yaml")
    job = load_docs(K8S / "controller-job.yaml")
    container = ("spec", "template", "spec", "containers", 0)
    broken = {
        "redis.yaml": (misspell(redis, "StatefulSet", (*container, "readinessProbe"), "readinesProbe"),
                       "readinesProbe"),
        "job.yaml": (misspell(job, "Job", (*container, "env", 0, "valueFrom", "secretKeyRef"), "secretKeyref"),
                     "secretKeyref"),
        # A RayCluster's pod template, checked as a PodTemplate as above.
        "templates.yaml": (misspell(pod_templates(ray_cluster()), "PodTemplate",
                                    ("template", "spec", "securityContext"), "securityContex"), "securityContex"),
    }
    files = [write_docs(tmp_path / name, docs) for name, (docs, _) in broken.items()]
    result = kubernetes_validate(*files)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for path, (_, wrong) in zip(files, broken.values()):
        errors = [line for line in output.splitlines() if line.startswith(f"ERROR {path} ")]
        assert errors and f"'{wrong}' was unexpected" in errors[0], output
    # Without --strict the same copies pass: --strict is what catches them.
    loose = subprocess.run([sys.executable, "-m", "kubernetes_validate", "-k", KUBERNETES_VERSION, *map(str, files)],
                           capture_output=True, text=True, timeout=120)
    assert loose.returncode == 0, loose.stdout + loose.stderr


def test_raycluster_follows_kuberay_rules() -> None:
    cluster = ray_cluster()
    assert cluster["apiVersion"] == "ray.io/v1"
    assert kuberay_problems(cluster) == []


@pytest.mark.parametrize("break_it, problem", [
    (lambda c: c["spec"].__setitem__("gcsFaultToleranceOption", c["spec"].pop("gcsFaultToleranceOptions")),
     "spec.gcsFaultToleranceOption: not a KubeRay field"),
    (lambda c: c["spec"]["workerGroupSpecs"][0].__setitem__("maxReplica", 3), "maxReplica: not a KubeRay field"),
    (lambda c: c["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "REDIS_PASSWORD", "value": "x"}), "head container sets REDIS_PASSWORD"),
    (lambda c: c["spec"]["workerGroupSpecs"][0]["rayStartParams"].__setitem__("num-cpus", "2"),
     "resources set both in rayStartParams"),
    (lambda c: c["spec"]["workerGroupSpecs"][1].__setitem__("replicas", 99), "minReplicas <= replicas <= maxReplicas"),
])
def test_kuberay_rules_catch_mistakes(break_it: Any, problem: str) -> None:
    cluster = copy.deepcopy(ray_cluster())
    break_it(cluster)
    assert any(problem in p for p in kuberay_problems(cluster)), kuberay_problems(cluster)


# --- cross-references ----------------------------------------------------------------------------------------------


def secret_refs() -> Iterator[tuple[str, str, str | None]]:
    """(where, Secret name, key or None for the whole Secret) for every Secret the manifests use."""
    for where, pod in pod_specs():
        for c in containers(pod):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield f"{where} {c['name']} env {env['name']}", ref["name"], ref["key"]
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    yield f"{where} {c['name']} envFrom", source["secretRef"]["name"], None
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                yield f"{where} volume {volume['name']}", volume["secret"]["secretName"], None
    spec = ray_cluster()["spec"]
    ref = spec["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]["secretKeyRef"]
    yield "RayCluster gcsFaultToleranceOptions.redisPassword", ref["name"], ref["key"]
    yield "RayCluster authOptions.secretName", spec["authOptions"]["secretName"], KUBERAY_AUTH_TOKEN_KEY


def test_every_secret_a_pod_uses_is_in_the_template() -> None:
    secrets = {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {})) for d in secret_docs()}
    used: set[str] = set()
    for where, name, key in secret_refs():
        assert name in secrets, f"{where} uses Secret {name}, which secrets.template.yaml does not define"
        assert key is None or key in secrets[name], f"{where} uses key {key} of Secret {name}: not in the template"
        used.add(name)
    assert used == set(secrets), f"secrets.template.yaml defines unused Secrets: {set(secrets) - used}"


def test_secrets_template_holds_no_values() -> None:
    for doc in secret_docs():
        assert "data" not in doc, f"Secret {doc['metadata']['name']}: the template must not carry data"
        for key, value in doc["stringData"].items():
            assert value == "", f"Secret {doc['metadata']['name']} key {key}: the template must stay empty"


def test_every_config_map_a_pod_uses_exists() -> None:
    maps = {d["metadata"]["name"]: set(d["data"]) for d in applied_docs() if d["kind"] == "ConfigMap"}
    used = set()
    for where, pod in pod_specs():
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                assert name in maps, f"{where} mounts ConfigMap {name}, which is not in deploy/k8s"
                for item in volume["configMap"].get("items", []):
                    assert item["key"] in maps[name]
                used.add(name)
        for c in containers(pod):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in maps.get(ref["name"], set()), f"{where}: ConfigMap {ref['name']}/{ref['key']}"
                    used.add(ref["name"])
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in {v["name"] for v in pod.get("volumes", [])} | {"data"}, (
                    f"{where} {c['name']} mounts volume {mount['name']}, which the pod does not define")
    assert used == set(maps)


def services() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in applied_docs() if d["kind"] == "Service"}


def service_port(name: str, port: int) -> dict[str, Any]:
    svc = services().get(name)
    assert svc is not None, f"no Service {name} in deploy/k8s"
    ports = [p for p in svc["spec"]["ports"] if p["port"] == port]
    assert ports, f"Service {name} has no port {port}"
    return ports[0]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pipeline_config_text() -> str:
    return one("ConfigMap", "rpn-pipeline-config")["data"]["pipeline.yaml"]


def job_container() -> dict[str, Any]:
    return one("Job")["spec"]["template"]["spec"]["containers"][0]


def test_redis_statefulset_service_and_urls_agree() -> None:
    sts = one("StatefulSet", "rpn-redis")
    svc = services()[sts["spec"]["serviceName"]]
    assert svc["spec"]["clusterIP"] == "None", "the StatefulSet's governing Service must be headless"
    template = sts["spec"]["template"]
    assert labels_match(svc["spec"]["selector"], template["metadata"]["labels"])
    assert labels_match(sts["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    redis = template["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in redis["ports"]}
    target = service_port(svc["metadata"]["name"], 6379)["targetPort"]
    assert named[target] == 6379
    # AOF on, eviction off, and a password that must be set.
    conf = one("ConfigMap", "rpn-redis-config")["data"]["redis.conf"]
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert settings["appendonly"] == "yes" and settings["maxmemory-policy"] == "noeviction"
    assert "requirepass" not in settings, "the password belongs in the Secret, not in the ConfigMap"
    assert '--requirepass "${REDIS_PASSWORD:?' in " ".join(redis["command"])
    assert {"name": "data", "mountPath": "/data"} in redis["volumeMounts"]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]

    # The pipeline's Redis URL and Ray's GCS fault tolerance both point at that Service.
    host, port = svc["metadata"]["name"], 6379
    url = urlsplit(re.search(r"url: (redis://\S+)", pipeline_config_text()).group(1))
    assert (url.hostname, url.port) == (host, port)
    assert ray_cluster()["spec"]["gcsFaultToleranceOptions"]["redisAddress"] == f"{host}:{port}"
    # A NetworkPolicy lets every pipeline pod in, and they all carry the label it selects.
    policy = one("NetworkPolicy", "rpn-redis")
    assert labels_match(policy["spec"]["podSelector"]["matchLabels"], template["metadata"]["labels"])
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    for where, template in pod_template_specs():
        assert labels_match(allowed, template["metadata"]["labels"]), f"{where}: shut out of Redis by the policy"


def test_controller_job_reaches_the_ray_head_and_the_api_service_reaches_the_controller() -> None:
    cluster = ray_cluster()
    name = cluster["metadata"]["name"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    args = job_container()["args"]
    assert args[0] == "run"
    address = urlsplit(args[args.index("--cluster") + 1])
    # KubeRay names the head's Service <cluster>-head-svc and gives it the head container's ports.
    assert address.scheme == "ray" and address.hostname == f"{name}-head-svc"
    assert address.port == head_ports["client"] == 10001

    http_port = int(args[args.index("--http") + 1].rsplit(":", 1)[1])
    api = services()["rpn-api"]
    assert labels_match(api["spec"]["selector"], {"ray.io/cluster": name, **KUBERAY_HEAD_LABELS})
    assert head_ports[api["spec"]["ports"][0]["targetPort"]] == http_port
    # Ray's metrics agent defaults to 8080 under KubeRay: every group moves it off the API's port.
    for group, spec in ray_groups(cluster):
        ports = {p["name"]: p["containerPort"] for p in spec["template"]["spec"]["containers"][0]["ports"]}
        assert int(spec["rayStartParams"]["metrics-export-port"]) == ports["metrics"] != http_port, group
        assert len(set(ports.values())) == len(ports), f"group {group} uses a port twice"
    # The Job mounts the config where it reads it.
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["mountPath"]: m["name"] for m in job_container()["volumeMounts"]}
    volumes = {v["name"]: v for v in one("Job")["spec"]["template"]["spec"]["volumes"]}
    cm = volumes[mounts[str(config_path.parent)]]["configMap"]
    assert cm["name"] == "rpn-pipeline-config" and config_path.name in one("ConfigMap", cm["name"])["data"]


def test_the_config_map_is_a_valid_pipeline_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = pipeline_config_text()
    # Every ${VAR} of the config is set in the Job that loads it, from a Secret.
    env = {e["name"]: e for e in job_container()["env"]}
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used and used <= set(env), f"the Job does not set {used - set(env)}"
    for var in used:
        assert "secretKeyRef" in env[var]["valueFrom"], f"{var} should come from a Secret"
        monkeypatch.setenv(var, f"{var.lower()}-value")
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    assert config.cameras and all("${" not in c.url for c in config.cameras)
    assert config.redis.url == "redis://:redis_password-value@rpn-redis:6379/0"
    assert config.engine.backend == "auto"


def test_one_image_everywhere_and_the_kustomization_maps_it() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1))
    version = re.search(r'version="([^"]+)"', (ROOT / "setup.py").read_text(encoding="utf-8")).group(1)
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text(encoding="utf-8"))
    name = compose["services"]["pipeline"]["image"].split(":")[0]
    images = {(where, c["name"]): c["image"] for where, pod in pod_specs() for c in containers(pod)
              if not where.startswith("StatefulSet/rpn-redis")}
    # Ray needs the same Ray and Python on every node, and the Job's Ray client the same again: one image.
    assert set(images.values()) == {f"{name}:{version}"}, images
    mapped = [i["name"] for i in kustomization()["images"]]
    assert mapped == [name]
    # The Job relies on the image's entrypoint; KubeRay replaces the Ray containers' command with `ray start`.
    assert entrypoint == ["rpn-pipeline"] and "command" not in job_container()
    for where, pod in pod_specs():
        if where.startswith("RayCluster"):
            assert "command" not in pod["containers"][0] and "args" not in pod["containers"][0], where


def test_ray_resources_place_workers_and_the_controller() -> None:
    groups = dict(ray_groups(ray_cluster()))
    head = groups.pop("head")
    assert head["resources"] == {"CPU": "0", CONTROLLER_RESOURCE: "1"}
    assert set(groups) == {"cpu", "gpu"}
    for group, spec in groups.items():
        assert spec["resources"] == {WORKER_RESOURCE: "1"}, group
        limits = spec["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == (group == "gpu"), group
    # The disruption budget covers the worker pods (KubeRay's labels) and no others; workers spread over machines.
    budget = one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert budget == {"ray.io/cluster": ray_cluster()["metadata"]["name"], "ray.io/node-type": "worker"}
    for group, spec in groups.items():
        template = spec["template"]
        for spread in template["spec"]["topologySpreadConstraints"]:
            assert labels_match(spread["labelSelector"]["matchLabels"], template["metadata"]["labels"]), group
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert not any("nvidia.com/gpu" in str(c.get("resources")) for where, p in pod_specs()
                   for c in containers(p) if not where.endswith("group gpu"))


def test_pods_are_locked_down_probed_and_bounded() -> None:
    for where, pod in pod_specs():
        assert pod["automountServiceAccountToken"] is False, where
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0, where
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in containers(pod):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"], (where, c["name"])
            if not where.startswith("Job/"):  # long-running servers are probed
                assert "readinessProbe" in c and "livenessProbe" in c, (where, c["name"])
        # With a read-only root, /tmp must be a volume (Ray's session files live there).
        if not where.startswith("StatefulSet/rpn-redis"):
            assert any(m["mountPath"] == "/tmp" for m in pod["containers"][0]["volumeMounts"]), where


# --- Prometheus ----------------------------------------------------------------------------------------------------


def test_prometheus_scrape_config_targets_the_api_with_the_token() -> None:
    config = yaml.safe_load((K8S / "prometheus" / "scrape-config.yaml").read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    job = jobs["rpn-pipeline"]
    namespace = kustomization()["namespace"]
    api = services()["rpn-api"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    secret = Path(job["authorization"]["credentials_file"])
    token = next(d for d in secret_docs() if d["metadata"]["name"] == secret.parent.name)
    assert secret.name in token["stringData"]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [namespace]
    keep = next(r for r in job["relabel_configs"] if r["action"] == "keep")
    assert keep["regex"] == f"{api['metadata']['name']};{api['spec']['ports'][0]['name']}"
    ray = jobs["rpn-ray"]
    keep = next(r for r in ray["relabel_configs"] if r["action"] == "keep")
    assert keep["regex"] == f"{ray_cluster()['metadata']['name']};metrics"

    monitor = load_docs(K8S / "prometheus" / "servicemonitor.yaml")[0]
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], api["metadata"]["labels"])
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == api["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": token["metadata"]["name"], "key": secret.name}
