"""Validates rendered Kubernetes manifests; run by validate.sh.

Each rendered stream is checked object by object against the Kubernetes JSON
schemas bundled by kubernetes-validate, strictly (an unknown field is an
error, as is a kind or apiVersion the schema set does not know), for every
Kubernetes version asked for. Then the references schemas cannot see are
checked within the stream: selectors match pod labels, Services, Ingresses,
HPAs and PDBs point at something that exists, named ports exist, every
ConfigMap and Secret a pod uses is rendered (or named as provided by the
operator), and the node's settings file parses as TOML.

Usage: validate.py --k8s 1.30 --k8s 1.37 [--external-secret NAME ...] LABEL=FILE ...
Exit status 1 when anything is wrong.
"""

import argparse
import collections
import sys

import yaml
import kubernetes_validate
from kubernetes_validate import utils as kv

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def load(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def name_of(obj):
    return "%s/%s" % (obj.get("kind", "?"), obj.get("metadata", {}).get("name", "?"))


def schema_errors(obj, versions):
    errors = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            errors.append("Kubernetes %s: %s: %s" % (e.version, path, e.message))
        except (kv.SchemaNotFoundError, kv.VersionNotSupportedError, kv.InvalidSchemaError) as e:
            errors.append("Kubernetes %s: %s" % (version, e.message))
    return errors


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_specs(objs):
    """(workload, pod template) for every workload in the stream."""
    for obj in objs:
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]


def reference_errors(objs, external_secrets):
    errors = []
    seen = collections.Counter(
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs
    )
    for (kind, ns, name), n in seen.items():
        if n > 1:
            errors.append("%s/%s rendered %d times" % (kind, name, n))

    by_kind = collections.defaultdict(dict)
    for o in objs:
        by_kind[o["kind"]][o["metadata"]["name"]] = o
    templates = list(pod_specs(objs))

    def port_names(template):
        return {
            p["name"]
            for c in template["spec"].get("containers", [])
            for p in c.get("ports", [])
            if "name" in p
        }

    for wl, tpl in templates:
        who = name_of(wl)
        labels = tpl.get("metadata", {}).get("labels", {})
        sel = wl["spec"].get("selector", {}).get("matchLabels", {})
        if wl["kind"] != "Job" and not matches(sel, labels):
            errors.append("%s: selector %s does not match its pod labels %s" % (who, sel, labels))
        spec = tpl["spec"]
        containers = spec.get("containers", []) + spec.get("initContainers", [])
        names = port_names(tpl)
        for c in containers:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in names:
                    errors.append("%s: %s of %s uses unknown port %r" % (who, probe, c["name"], port))
            refs = []
            for env in c.get("env", []):
                src = env.get("valueFrom", {})
                for key in ("configMapKeyRef", "secretKeyRef"):
                    if key in src:
                        refs.append((key, src[key]))
            for src in c.get("envFrom", []):
                for key in ("configMapRef", "secretRef"):
                    if key in src:
                        refs.append((key, src[key]))
            for key, ref in refs:
                kind = "ConfigMap" if key.startswith("configMap") else "Secret"
                target = by_kind[kind].get(ref["name"])
                if target is None:
                    if ref.get("optional") or (kind == "Secret" and ref["name"] in external_secrets):
                        continue
                    errors.append("%s: %s refers to missing %s %s" % (who, c["name"], kind, ref["name"]))
                elif "key" in ref and not ref.get("optional"):
                    data = dict(target.get("data") or {}, **(target.get("stringData") or {}))
                    if ref["key"] not in data:
                        errors.append("%s: %s refers to missing key %s of %s %s"
                                      % (who, c["name"], ref["key"], kind, ref["name"]))
        for vol in spec.get("volumes", []):
            for key, kind, field in (("configMap", "ConfigMap", "name"), ("secret", "Secret", "secretName")):
                if key in vol:
                    ref = vol[key]
                    if ref.get(field) not in by_kind[kind] and not ref.get("optional") \
                            and not (kind == "Secret" and ref.get(field) in external_secrets):
                        errors.append("%s: volume %s refers to missing %s %s"
                                      % (who, vol["name"], kind, ref.get(field)))

    for svc in by_kind["Service"].values():
        sel = svc["spec"].get("selector")
        if not sel:
            continue
        backing = [tpl for _, tpl in templates if matches(sel, tpl["metadata"].get("labels", {}))]
        if not backing:
            errors.append("%s: selector %s matches no pod template" % (name_of(svc), sel))
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            if isinstance(tp, str) and not any(tp in port_names(t) for t in backing):
                errors.append("%s: targetPort %r is no container port name" % (name_of(svc), tp))

    for ing in by_kind["Ingress"].values():
        backends = [ing["spec"].get("defaultBackend")] + [
            path.get("backend")
            for rule in ing["spec"].get("rules", [])
            for path in rule.get("http", {}).get("paths", [])
        ]
        for b in filter(None, backends):
            ref = b.get("service")
            if not ref:
                continue
            svc = by_kind["Service"].get(ref["name"])
            if svc is None:
                errors.append("%s: backend Service %s is not rendered" % (name_of(ing), ref["name"]))
                continue
            port = ref.get("port", {})
            ports = svc["spec"].get("ports", [])
            if "name" in port and port["name"] not in {p.get("name") for p in ports}:
                errors.append("%s: Service %s has no port named %r" % (name_of(ing), ref["name"], port["name"]))
            if "number" in port and port["number"] not in {p.get("port") for p in ports}:
                errors.append("%s: Service %s has no port %s" % (name_of(ing), ref["name"], port["number"]))

    for hpa in by_kind["HorizontalPodAutoscaler"].values():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind[ref["kind"]]:
            errors.append("%s: scale target %s/%s is not rendered" % (name_of(hpa), ref["kind"], ref["name"]))

    for pdb in by_kind["PodDisruptionBudget"].values():
        sel = pdb["spec"].get("selector", {}).get("matchLabels", {})
        if not any(matches(sel, tpl["metadata"].get("labels", {})) for _, tpl in templates):
            errors.append("%s: selector %s matches no pod template" % (name_of(pdb), sel))

    # The node's settings: valid TOML, and nothing production refuses.
    for cm in by_kind["ConfigMap"].values():
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith(".toml"):
                continue
            try:
                settings = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                errors.append("%s: %s is not valid TOML: %s" % (name_of(cm), key, e))
                continue
            if key == "production.toml" and settings.get("auth", {}).get("dev_tokens", False):
                errors.append("%s: production.toml enables auth.dev_tokens" % name_of(cm))
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k8s", action="append", required=True, help="Kubernetes minor version, e.g. 1.30")
    ap.add_argument("--external-secret", action="append", default=[],
                    help="a Secret the operator creates (not rendered)")
    ap.add_argument("renders", nargs="+", metavar="LABEL=FILE")
    args = ap.parse_args()

    failed = False
    for item in args.renders:
        label, _, path = item.partition("=")
        try:
            objs = load(path)
        except yaml.YAMLError as e:
            print("FAIL %s: not YAML: %s" % (label, e))
            failed = True
            continue
        problems = []
        for obj in objs:
            if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
                problems.append("a document without kind/apiVersion")
                continue
            problems += ["%s: %s" % (name_of(obj), e) for e in schema_errors(obj, args.k8s)]
        if not problems:
            problems = reference_errors(objs, set(args.external_secret))
        kinds = collections.Counter(o.get("kind", "?") for o in objs if isinstance(o, dict))
        summary = ", ".join("%s %d" % pair for pair in sorted(kinds.items()))
        if problems:
            failed = True
            print("FAIL %s: %d objects (%s)" % (label, len(objs), summary))
            for p in problems:
                print("  - %s" % p)
        else:
            print("ok   %s: %d objects valid against Kubernetes %s (strict): %s"
                  % (label, len(objs), ", ".join(args.k8s), summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
