#!/usr/bin/env bash
# Validates everything under deploy/ offline:
#   - renders every kustomization (base and overlays) with a small built-in renderer (below) and, when a
#     `kustomize` or `kubectl` binary is on PATH, with it too, and fails if the two disagree;
#   - validates every rendered object, and deploy/k8s/base/secret.example.yaml, against the Kubernetes
#     $K8S_VERSION OpenAPI schemas in strict mode (kubernetes-validate; the ServiceMonitor CRD against a
#     built-in subset schema);
#   - checks hookgate-specific rules (non-root, read-only root, probes, no service links, known HOOKGATE_* sections,
#     ConfigMap/Secret references resolve, the TOML configurations parse);
#   - checks that deploy/compose.yaml parses and has the expected shape, and that the Dockerfile is what we expect.
# Exits non-zero on any failure.
#
# The Python dependencies go into a venv under ${XDG_CACHE_HOME:-$HOME/.cache}/hookgate-venv, installed from PyPI
# only when missing; after that the script works offline.
#   Environment: K8S_VERSION (default 1.30.0), HOOKGATE_VENV (venv path), NO_KUSTOMIZE=1 (skip the binary check).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${HOOKGATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hookgate-venv}
PY_REQS=("kubernetes-validate==1.37.0" "pyyaml>=6,<7" "tomli>=2; python_version<'3.11'")

if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import kubernetes_validate, yaml, sys
if sys.version_info < (3, 11): import tomli' 2>/dev/null; }; then
    echo "validate-manifests: installing ${PY_REQS[*]} into $VENV" >&2
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian ships venv support separately.
        echo "validate-manifests: installing python3-venv" >&2
        if [ "$(id -u)" = 0 ]; then apt-get install -y -qq python3-venv >/dev/null; else sudo apt-get install -y -qq python3-venv >/dev/null; fi
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQS[@]}"
fi

KUSTOMIZE_CMD=""
if [ -z "${NO_KUSTOMIZE:-}" ]; then
    if command -v kustomize >/dev/null 2>&1; then
        KUSTOMIZE_CMD="kustomize build"
    elif command -v kubectl >/dev/null 2>&1 && timeout 30 kubectl kustomize --help >/dev/null 2>&1; then
        KUSTOMIZE_CMD="kubectl kustomize"
    fi
fi

export ROOT KUSTOMIZE_CMD K8S_VERSION=${K8S_VERSION:-1.30.0}
exec "$VENV/bin/python" - <<'PY'
import base64, copy, hashlib, json, os, re, shlex, subprocess, sys
from pathlib import Path

import yaml
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
import jsonschema

ROOT = Path(os.environ["ROOT"])
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = os.environ["K8S_VERSION"]
KUSTOMIZE_CMD = os.environ.get("KUSTOMIZE_CMD", "")

failures = []
def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")
def ok(msg):
    print(f"ok   {msg}")

# ---------------------------------------------------------------------------------------------------------------
# A small kustomize renderer: only the features deploy/k8s uses. Anything else is refused, never ignored.
# ---------------------------------------------------------------------------------------------------------------
class RenderError(Exception):
    pass

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "namespace", "images", "patches",
                      "configMapGenerator", "secretGenerator"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}
# Strategic-merge keys of the lists we merge (everything else is replaced), as in the Kubernetes API.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
              "topologySpreadConstraints": "topologyKey", "envFrom": None}

def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

def load_kustomization(d):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (d / name).is_file():
            docs = load_yaml_docs(d / name)
            if len(docs) != 1:
                raise RenderError(f"{d / name}: expected one document")
            return d / name, docs[0]
    raise RenderError(f"{d}: no kustomization file")

class Res:
    """A resource plus what kustomize tracks about it: its name before any hash suffix."""
    def __init__(self, obj, generated=False):
        self.obj = obj
        self.orig_name = obj["metadata"]["name"]
        self.generated = generated  # gets a content-hash suffix at the end
    @property
    def kind(self):
        return self.obj["kind"]

def find(resources, kind, name):
    return [r for r in resources if r.kind == kind and r.orig_name == name]

def smp(base, patch, path="spec"):
    """Strategic merge patch, restricted to maps, keyed lists (MERGE_KEYS) and replaced lists."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if k.startswith("$"):
            raise RenderError(f"patch directive {k} at {path} is not supported by this renderer")
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = smp(out[k], v, f"{path}.{k}")
        elif isinstance(v, list) and isinstance(out.get(k), list) and MERGE_KEYS.get(k):
            key = MERGE_KEYS[k]
            merged, new = copy.deepcopy(out[k]), []
            for item in v:
                if not isinstance(item, dict) or key not in item:
                    raise RenderError(f"patch list {path}.{k}: every item needs {key!r}")
                idx = [i for i, b in enumerate(merged) if isinstance(b, dict) and b.get(key) == item[key]]
                if idx:
                    merged[idx[0]] = smp(merged[idx[0]], item, f"{path}.{k}[{item[key]}]")
                else:
                    new.append(copy.deepcopy(item))
            out[k] = new + merged  # kustomize puts items only the patch has first
        else:
            out[k] = copy.deepcopy(v)
    return out

def pod_specs(obj):
    spec = obj.get("spec") or {}
    if obj["kind"] == "Pod":
        yield spec
    elif obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield spec.get("template", {}).get("spec", {})
    elif obj["kind"] == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})

def containers(podspec):
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in podspec.get(key) or []:
            yield c

def b64_kyaml(raw):
    """base64 as kustomize (kyaml) stores it, and hashes it: lines of 70 characters when longer than that."""
    enc = base64.b64encode(raw).decode()
    if len(enc) <= 70:
        return enc
    return "".join(enc[i:i + 70] + "\n" for i in range(0, len(enc), 70))

def generate(gen, d, kind):
    allowed = {"name", "behavior", "files", "literals", "envs", "options"} | ({"type"} if kind == "Secret" else set())
    extra = set(gen) - allowed
    if extra:
        raise RenderError(f"{kind} generator {gen.get('name')}: unsupported keys {sorted(extra)}")
    data = {}
    for f in gen.get("files") or []:
        key, _, src = f.partition("=") if "=" in f else (Path(f).name, "", f)
        data[key] = (d / src).read_text()
    for lit in gen.get("literals") or []:
        key, sep, value = lit.partition("=")
        if not sep:
            raise RenderError(f"literal {lit!r} has no '='")
        data[key] = value
    for envfile in gen.get("envs") or []:
        for line in (d / envfile).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                data[key] = value
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
    options = gen.get("options") or {}
    extra = set(options) - {"labels", "annotations", "disableNameSuffixHash"}
    if extra:
        raise RenderError(f"{kind} generator {gen.get('name')}: unsupported options {sorted(extra)}")
    for key in ("labels", "annotations"):
        if options.get(key):
            obj["metadata"][key] = {str(k): str(v) for k, v in options[key].items()}
    # Read by apply_generated (and removed there): no hash suffix for this object.
    obj["__hash__"] = not options.get("disableNameSuffixHash", False)
    if kind == "Secret":
        obj["type"] = gen.get("type", "Opaque")
        obj["data"] = {k: b64_kyaml(v.encode()) for k, v in data.items()}
    else:
        obj["data"] = data
    return obj

def apply_generated(resources, new, behavior):
    hashed = new.pop("__hash__", True)
    existing = find(resources, new["kind"], new["metadata"]["name"])
    if behavior == "create":
        if existing:
            raise RenderError(f"{new['kind']} {new['metadata']['name']} already exists (use behavior: replace)")
        resources.append(Res(new, generated=hashed))
    elif behavior in ("replace", "merge"):
        if len(existing) != 1:
            raise RenderError(f"{new['kind']} {new['metadata']['name']}: behavior {behavior} needs exactly one")
        target = existing[0].obj
        if behavior == "replace":
            target["data"] = new["data"]
        else:
            target.setdefault("data", {}).update(new["data"])
    else:
        raise RenderError(f"unknown generator behavior {behavior!r}")

def kustomize(d, resources=None, component=False):
    kpath, k = load_kustomization(d)
    want = ("kustomize.config.k8s.io/v1alpha1", "Component") if component else \
           ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    if (k.get("apiVersion"), k.get("kind")) != want:
        raise RenderError(f"{kpath}: expected {want[1]} {want[0]}")
    extra = set(k) - KUSTOMIZATION_KEYS
    if extra:
        raise RenderError(f"{kpath}: fields {sorted(extra)} are not implemented by the offline renderer")
    resources = resources if resources is not None else []
    for r in k.get("resources") or []:
        p = (d / r).resolve()
        if p.is_dir():
            resources.extend(kustomize(p))
        elif p.is_file():
            resources.extend(Res(o) for o in load_yaml_docs(p))
        else:
            raise RenderError(f"{kpath}: resource {r} not found")
    for c in k.get("components") or []:
        resources = kustomize((d / c).resolve(), resources, component=True)
    for gen in k.get("configMapGenerator") or []:
        apply_generated(resources, generate(gen, d, "ConfigMap"), gen.get("behavior", "create"))
    for gen in k.get("secretGenerator") or []:
        apply_generated(resources, generate(gen, d, "Secret"), gen.get("behavior", "create"))
    for p in k.get("patches") or []:
        if set(p) != {"path"}:
            raise RenderError(f"{kpath}: only `patches: - path: FILE` (strategic merge) is implemented")
        for patch in load_yaml_docs(d / p["path"]):
            targets = find(resources, patch["kind"], patch["metadata"]["name"])
            if len(targets) != 1:
                raise RenderError(f"{kpath}: patch {p['path']} matches {len(targets)} resources")
            t = targets[0]
            t.obj = smp(t.obj, patch, patch["kind"])
    if "namespace" in k:
        for r in resources:
            if r.kind not in CLUSTER_SCOPED:
                r.obj["metadata"]["namespace"] = k["namespace"]
    for img in k.get("images") or []:
        extra = set(img) - {"name", "newName", "newTag", "digest"}
        if extra:
            raise RenderError(f"{kpath}: images keys {sorted(extra)} not implemented")
        for r in resources:
            for ps in pod_specs(r.obj):
                for c in containers(ps):
                    m = re.match(r"^(?P<name>[^@]+?)(?::(?P<tag>[^:/@]+))?(?:@(?P<digest>.+))?$", c["image"])
                    if m and m["name"] == img["name"]:
                        name = img.get("newName", m["name"])
                        if "digest" in img:
                            c["image"] = f"{name}@{img['digest']}"
                        elif "newTag" in img:
                            c["image"] = f"{name}:{img['newTag']}"
                        else:
                            c["image"] = name + (f":{m['tag']}" if m["tag"] else "") + \
                                         (f"@{m['digest']}" if m["digest"] else "")
    return resources

def go_json(obj):
    """encoding/json.Marshal of a map: sorted keys, no spaces, HTML characters escaped."""
    s = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
             .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))

def kustomize_hash(obj):
    """kustomize's name suffix for generated ConfigMaps and Secrets (api/hasher): the first 10 hex digits of the
    SHA-256 of Go's JSON of {data, kind, name: "", type (Secret) / binaryData (ConfigMap, if any)}, with 0 1 3 a e
    replaced by g h k m t. (kustomize hashes before it sets the name, so the name is empty.)"""
    m = {"kind": obj["kind"], "name": "", "data": obj.get("data") or ""}
    if obj["kind"] == "Secret":
        m["type"] = obj.get("type", "")
    elif obj.get("binaryData"):
        m["binaryData"] = obj["binaryData"]
    h = hashlib.sha256(go_json(m).encode()).hexdigest()[:10]
    return h.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))

def finish(resources):
    """Hash suffixes on generated objects, and references to them rewritten (pod specs only)."""
    renames = {}
    for r in resources:
        if r.generated:
            new = f"{r.orig_name}-{kustomize_hash(r.obj)}"
            r.obj["metadata"]["name"] = new
            renames[(r.kind, r.orig_name)] = new
    def ren(kind, holder, key):
        if holder and (kind, holder.get(key)) in renames:
            holder[key] = renames[(kind, holder[key])]
    for r in resources:
        for ps in pod_specs(r.obj):
            for v in ps.get("volumes") or []:
                ren("ConfigMap", v.get("configMap"), "name")
                ren("Secret", v.get("secret"), "secretName")
                for src in (v.get("projected") or {}).get("sources") or []:
                    ren("ConfigMap", src.get("configMap"), "name")
                    ren("Secret", src.get("secret"), "name")
            for s in ps.get("imagePullSecrets") or []:
                ren("Secret", s, "name")
            for c in containers(ps):
                for e in c.get("env") or []:
                    vf = e.get("valueFrom") or {}
                    ren("ConfigMap", vf.get("configMapKeyRef"), "name")
                    ren("Secret", vf.get("secretKeyRef"), "name")
                for e in c.get("envFrom") or []:
                    ren("ConfigMap", e.get("configMapRef"), "name")
                    ren("Secret", e.get("secretRef"), "name")
    return [r.obj for r in resources]

def render(d):
    return finish(kustomize(d))

# ---------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------
def key_of(o):
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])

# The Prometheus Operator CRD is not in the Kubernetes schemas: a strict subset of monitoring.coreos.com/v1.
SERVICEMONITOR_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                 "properties": {
            "jobLabel": {"type": "string"},
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                "matchExpressions": {"type": "array"}}},
            "namespaceSelector": {"type": "object"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": {"type": "string"}, "targetPort": {"type": ["string", "integer"]},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                    "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                    "honorLabels": {"type": "boolean"},
                    "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}}}}}}}

DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
# The same for PrometheusRule (alerting and recording rules). The PromQL of each `expr` is parsed, and its metric
# names checked against the README, by the Rust test `monitoring::` (tests/api/monitoring.rs).
PROMETHEUSRULE_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": SERVICEMONITOR_SCHEMA["properties"]["metadata"],
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False, "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": DURATION},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": DURATION},
                            "keep_firing_for": {"type": "string", "pattern": DURATION},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object",
                                            "additionalProperties": {"type": "string"}}}}}}}}}}}}

def check_alerts(o, where):
    """Every alert says how bad it is and what happened."""
    for g in o["spec"]["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            if (r.get("labels") or {}).get("severity") not in ("info", "warning", "critical"):
                fail(f"{where}: alert {r['alert']}: labels.severity must be info, warning or critical")
            if not {"summary", "description"} <= set(r.get("annotations") or {}):
                fail(f"{where}: alert {r['alert']}: annotations need summary and description")

def check_dashboard(o, where):
    """A Grafana dashboard ConfigMap: each JSON document parses, its panels have unique ids, every query has an
    expression and uses the dashboard's data source variable."""
    for key, text in (o.get("data") or {}).items():
        try:
            dash = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"{where}: {key}: not JSON: {e}")
            continue
        panels = [p for top in dash.get("panels", []) for p in [top] + top.get("panels", [])]
        ids = [p.get("id") for p in panels]
        if len(ids) != len(set(ids)) or None in ids:
            fail(f"{where}: {key}: panel ids must be present and unique")
        for p in panels:
            for t in p.get("targets", []):
                if not t.get("expr") or (t.get("datasource") or {}).get("uid") != "${datasource}":
                    fail(f"{where}: {key}: panel {p.get('title')!r}: every target needs an expr and the $datasource")
        if not dash.get("uid") or not dash.get("title"):
            fail(f"{where}: {key}: the dashboard needs a uid and a title")
        ok(f"{where}: {key}: Grafana dashboard with {len(panels)} panels")

def schema_validate(o, where):
    try:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        ok(f"{where}: {o['kind']}/{o['metadata']['name']} valid (Kubernetes {K8S_VERSION}, strict)")
    except SchemaNotFoundError:
        crd = {"ServiceMonitor": SERVICEMONITOR_SCHEMA, "PrometheusRule": PROMETHEUSRULE_SCHEMA}.get(o.get("kind"))
        if crd:
            try:
                jsonschema.validate(o, crd)
                ok(f"{where}: {o['kind']}/{o['metadata']['name']} valid (built-in CRD subset)")
            except jsonschema.ValidationError as e:
                fail(f"{where}: {o['kind']}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
            if o["kind"] == "PrometheusRule":
                check_alerts(o, where)
        else:
            fail(f"{where}: no schema for {o.get('apiVersion')} {o.get('kind')}")
    except kubernetes_validate.ValidationError as e:
        fail(f"{where}: {o['kind']}/{o['metadata']['name']}: {e.message} at {'/'.join(map(str, e.path))}")

# Top-level sections of hookgate's Settings (src/config.rs); HOOKGATE_CONFIG names the file.
SECTIONS = {"server", "database", "redis", "writer", "supervision", "sources", "delivery", "destinations", "routes", "admin",
            "retention", "telemetry", "notifications"}

def check_env_name(name, where):
    if not name.startswith("HOOKGATE_") or name == "HOOKGATE_CONFIG":
        return
    section = name[len("HOOKGATE_"):].split("__")[0].lower()
    if "__" not in name or section not in SECTIONS:
        fail(f"{where}: {name} is not a hookgate setting (hookgate ignores it: a typo would silently not apply)")

def check_toml(text, where):
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(f"{where}: TOML: {e}")
        return
    unknown = set(cfg) - SECTIONS
    if unknown:
        fail(f"{where}: unknown top-level keys {sorted(unknown)}")
    else:
        ok(f"{where}: TOML parses, sections {sorted(cfg)}")

def check_statefulset(o, objs, where, external_secrets):
    ps = o["spec"]["template"]["spec"]
    name = f"{where}: StatefulSet/{o['metadata']['name']}"
    problems = []
    if ps.get("enableServiceLinks") is not False:
        problems.append("enableServiceLinks must be false (Service env vars would collide with HOOKGATE_*)")
    psc = ps.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 10001:
        problems.append("pod must run as non-root UID 10001")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile must be RuntimeDefault")
    grace = ps.get("terminationGracePeriodSeconds", 30)
    names = {(x["kind"], x["metadata"]["name"]) for x in objs}
    for c in ps["containers"]:
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True: problems.append(f"{c['name']}: readOnlyRootFilesystem")
        if sc.get("allowPrivilegeEscalation") is not False: problems.append(f"{c['name']}: allowPrivilegeEscalation")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []): problems.append(f"{c['name']}: drop ALL")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", None)):
            p = c.get(probe)
            if not p:
                problems.append(f"{c['name']}: missing {probe}")
            elif path and (p.get("httpGet") or {}).get("path") != path:
                problems.append(f"{c['name']}: {probe} must GET {path}")
        res = c.get("resources") or {}
        if not res.get("requests") or not res.get("limits"):
            problems.append(f"{c['name']}: resources need requests and limits")
        sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
        if not sleep:
            problems.append(f"{c['name']}: preStop sleep missing")
        elif grace <= sleep + 30:
            problems.append(f"{c['name']}: terminationGracePeriodSeconds {grace} leaves no time to drain after preStop")
        if not any(m.get("mountPath") == "/tmp" for m in c.get("volumeMounts") or []):
            problems.append(f"{c['name']}: /tmp must be a writable volume")
        envs = {e["name"]: e for e in c.get("env") or []}
        for n in envs:
            check_env_name(n, f"{name} env")
        if (envs.get("HOOKGATE_SERVER__HOST") or {}).get("value") != "0.0.0.0":
            problems.append(f"{c['name']}: HOOKGATE_SERVER__HOST must be 0.0.0.0")
        for n in ("HOOKGATE_DATABASE__URL", "HOOKGATE_REDIS__URL"):
            if "secretKeyRef" not in ((envs.get(n) or {}).get("valueFrom") or {}):
                problems.append(f"{c['name']}: {n} must come from a Secret")
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ("Secret", ref["name"]) not in names and ref["name"] not in external_secrets:
                problems.append(f"{c['name']}: Secret {ref['name']} is neither rendered nor a documented external one")
    for v in ps.get("volumes") or []:
        if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in names:
            problems.append(f"volume {v['name']}: ConfigMap {v['configMap']['name']} is not rendered")
    svc = o["spec"].get("serviceName")
    headless = [x for x in objs if x["kind"] == "Service" and x["metadata"]["name"] == svc]
    if not headless or headless[0]["spec"].get("clusterIP") != "None":
        problems.append(f"serviceName {svc} must be a rendered headless Service")
    for p in problems:
        fail(f"{name}: {p}")
    if not problems:
        ok(f"{name}: hookgate rules hold")

def normalize(objs):
    """Keyed by kind/namespace/name; Secret data without the line breaks some encoders put in base64."""
    out = {}
    for o in objs:
        o = copy.deepcopy(o)
        if o.get("kind") == "Secret":
            o["data"] = {k: re.sub(r"\s", "", v) for k, v in (o.get("data") or {}).items()}
        out[key_of(o)] = o
    return out

def check_overlay(d):
    where = str(d.relative_to(ROOT))
    try:
        objs = render(d)
    except (RenderError, OSError, KeyError, yaml.YAMLError) as e:
        fail(f"{where}: render: {e}")
        return
    ok(f"{where}: rendered {len(objs)} objects with the built-in renderer")
    if KUSTOMIZE_CMD:
        proc = subprocess.run(shlex.split(KUSTOMIZE_CMD) + [str(d)], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            fail(f"{where}: {KUSTOMIZE_CMD} failed: {proc.stderr.strip()}")
        else:
            theirs, mine = normalize(list(yaml.safe_load_all(proc.stdout))), normalize(objs)
            if theirs == mine:
                ok(f"{where}: identical to `{KUSTOMIZE_CMD}` output")
            else:
                for k in sorted(set(theirs) | set(mine)):
                    if theirs.get(k) != mine.get(k):
                        fail(f"{where}: {k} differs from `{KUSTOMIZE_CMD}`:\n  kustomize: "
                             f"{json.dumps(theirs.get(k), sort_keys=True)}\n  renderer:  {json.dumps(mine.get(k), sort_keys=True)}")
    seen = set()
    for o in objs:
        if key_of(o) in seen:
            fail(f"{where}: duplicate {key_of(o)}")
        seen.add(key_of(o))
        schema_validate(o, where)
    for o in objs:
        if o["kind"] == "StatefulSet":
            # "hookgate" may be created outside kustomize (prod); see deploy/k8s/base/secret.example.yaml.
            check_statefulset(o, objs, where, external_secrets={"hookgate"})
        if o["kind"] == "ConfigMap":
            for fname, text in (o.get("data") or {}).items():
                if fname.endswith(".toml"):
                    check_toml(text, f"{where}: ConfigMap/{o['metadata']['name']}/{fname}")
            if (o["metadata"].get("labels") or {}).get("grafana_dashboard") == "1":
                check_dashboard(o, f"{where}: ConfigMap/{o['metadata']['name']}")
        if o["kind"] == "PodDisruptionBudget" and o["spec"].get("maxUnavailable") != 1:
            fail(f"{where}: PodDisruptionBudget must have maxUnavailable 1")
    kinds = {o["kind"] for o in objs}
    for need in ("StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"):
        if need not in kinds:
            fail(f"{where}: no {need} rendered")
    return objs

def check_compose():
    p = DEPLOY / "compose.yaml"
    try:
        c = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(f"deploy/compose.yaml: {e}")
        return
    s = (c or {}).get("services") or {}
    problems = []
    for name in ("hookgate", "postgres", "redis"):
        if name not in s:
            problems.append(f"service {name} missing")
    if problems:
        for pr in problems: fail(f"deploy/compose.yaml: {pr}")
        return
    if not str(s["postgres"].get("image", "")).startswith("postgres:15"): problems.append("postgres must be postgres:15")
    if not str(s["redis"].get("image", "")).startswith("redis:7"): problems.append("redis must be redis:7")
    for name in ("postgres", "redis"):
        if "healthcheck" not in s[name]: problems.append(f"{name} needs a healthcheck")
    hg = s["hookgate"]
    build = hg.get("build") or {}
    if not (p.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve().is_file():
        problems.append("hookgate build context/dockerfile does not point at a file")
    env = hg.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    for n in ("HOOKGATE_DATABASE__URL", "HOOKGATE_REDIS__URL", "HOOKGATE_SERVER__HOST", "HOOKGATE_CONFIG"):
        if n not in env: problems.append(f"hookgate environment lacks {n}")
    for n in env:
        check_env_name(n, "deploy/compose.yaml hookgate environment")
    mounts = [v.split(":") for v in hg.get("volumes") or [] if isinstance(v, str)]
    cfg_mount = [m for m in mounts if len(m) >= 2 and m[1] == env.get("HOOKGATE_CONFIG")]
    if not cfg_mount or not (p.parent / cfg_mount[0][0]).is_file():
        problems.append("the file named by HOOKGATE_CONFIG must be mounted from an existing file")
    else:
        check_toml((p.parent / cfg_mount[0][0]).read_text(), f"deploy/compose.yaml: {cfg_mount[0][0]}")
    deps = hg.get("depends_on") or {}
    for name in ("postgres", "redis"):
        if not isinstance(deps, dict) or (deps.get(name) or {}).get("condition") != "service_healthy":
            problems.append(f"hookgate should wait for {name} to be healthy")
    for pr in problems:
        fail(f"deploy/compose.yaml: {pr}")
    if not problems:
        ok("deploy/compose.yaml: parses; hookgate + postgres:15 + redis:7 with healthchecks")

def check_dockerfile():
    p = DEPLOY / "Dockerfile"
    if not p.is_file():
        fail("deploy/Dockerfile missing")
        return
    text = p.read_text()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    problems = []
    if len(froms) < 2: problems.append("must be multi-stage")
    if not any(re.match(r"FROM rust:1-bookworm AS builder", l, re.I) for l in froms):
        problems.append("builder must be FROM rust:1-bookworm AS builder")
    if not froms or not froms[-1].lower().startswith("from debian:bookworm-slim"):
        problems.append("final stage must be debian:bookworm-slim")
    final = lines[lines.index(froms[-1]):] if froms else []
    if not any("cargo build --release --locked -p hookgate" in l for l in lines):
        problems.append("must build with cargo build --release --locked -p hookgate")
    if any("cargo" in l or "build-essential" in l or "gcc" in l for l in final if not l.upper().startswith("COPY")):
        problems.append("no build tools in the runtime stage")
    users = [l for l in final if l.upper().startswith("USER ")]
    if not users or users[-1].split()[1].split(":")[0] != "10001":
        problems.append("runtime stage must end as USER 10001")
    if 'ENTRYPOINT ["hookgate"]' not in final: problems.append('ENTRYPOINT ["hookgate"] missing')
    if 'CMD ["serve"]' not in final: problems.append('CMD ["serve"] missing')
    if "EXPOSE 8080" not in final: problems.append("EXPOSE 8080 missing")
    if not (DEPLOY / "Dockerfile.dockerignore").is_file():
        problems.append("deploy/Dockerfile.dockerignore missing")
    else:
        ignored = {l.strip() for l in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()}
        for need in (".git", "target/"):
            if need not in ignored: problems.append(f"Dockerfile.dockerignore must exclude {need}")
        for keep in ("src", "actors", "bench", "tests", "Cargo.toml", "Cargo.lock"):
            if keep in ignored or keep + "/" in ignored: problems.append(f"Dockerfile.dockerignore excludes {keep}")
    for pr in problems:
        fail(f"deploy/Dockerfile: {pr}")
    if not problems:
        ok("deploy/Dockerfile: multi-stage, non-root 10001, hookgate serve (static checks only)")

def main():
    print(f"validate-manifests: Kubernetes {K8S_VERSION} schemas (strict); "
          f"kustomize cross-check: {KUSTOMIZE_CMD or 'none (no kustomize/kubectl on PATH)'}")
    check_dockerfile()
    check_compose()
    dirs = [K8S / "base"] + sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    for d in dirs:
        check_overlay(d)
    for p in sorted(K8S.rglob("*.example.yaml")):
        for o in load_yaml_docs(p):
            schema_validate(o, str(p.relative_to(ROOT)))
    # Every YAML file under deploy/k8s must at least parse.
    for p in sorted(K8S.rglob("*.y*ml")):
        try:
            load_yaml_docs(p)
        except yaml.YAMLError as e:
            fail(f"{p.relative_to(ROOT)}: {e}")
    if failures:
        print(f"\nvalidate-manifests: {len(failures)} failure(s)")
        sys.exit(1)
    print("\nvalidate-manifests: all checks passed")

main()
PY
