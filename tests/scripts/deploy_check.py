#!/usr/bin/env python3
"""Checks of deploy/ that need a YAML parser, for tests/tests/deploy.rs. Run with the Python of
the kubernetes-validate venv that `cargo xtask setup` makes (it has PyYAML and jsonschema).

  deploy_check.py groups RULES_FILE PROMETHEUSRULE   the PrometheusRule's spec.groups == the file's groups
  deploy_check.py crd CRD_FILE RESOURCE              the resource against the CRD's openAPIV3Schema
  deploy_check.py daemonset DAEMONSET                its container's facts as JSON (image, args,
                                                     capabilities, mounts, security context)

Exit 0 when the check holds, 1 with the reason on stderr when it does not."""

import json
import sys

import jsonschema
import yaml


def load_one(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    if len(docs) != 1:
        sys.exit(f"{path}: expected one YAML document, found {len(docs)}")
    return docs[0]


def groups(rules_path, rule_path):
    rules = load_one(rules_path)
    resource = load_one(rule_path)
    if resource.get("kind") != "PrometheusRule":
        sys.exit(f"{rule_path}: kind is {resource.get('kind')}, not PrometheusRule")
    got = resource.get("spec", {}).get("groups")
    want = rules.get("groups")
    if got != want:
        sys.exit(
            f"{rule_path}: spec.groups differ from the groups of {rules_path}; "
            "regenerate it with deploy/prometheus/to-prometheusrule.sh\n"
            f"rules file: {json.dumps(want, sort_keys=True)}\n"
            f"PrometheusRule: {json.dumps(got, sort_keys=True)}"
        )
    print(f"{rule_path}: spec.groups == groups of {rules_path} ({len(want)} groups)")


def strict(schema):
    """What the API server's pruning would drop is an error here: every object schema with
    properties and no x-kubernetes-preserve-unknown-fields gets additionalProperties: false."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd(crd_path, resource_path):
    definition = load_one(crd_path)
    resource = load_one(resource_path)
    group = definition["spec"]["group"]
    kind = definition["spec"]["names"]["kind"]
    api_version = resource.get("apiVersion", "")
    if resource.get("kind") != kind or not api_version.startswith(group + "/"):
        sys.exit(f"{resource_path}: {api_version} {resource.get('kind')} is not a {group} {kind}")
    version = api_version.split("/", 1)[1]
    served = [v for v in definition["spec"]["versions"] if v["name"] == version and v["served"]]
    if not served:
        sys.exit(f"{resource_path}: {crd_path} serves no version {version}")
    schema = strict(served[0]["schema"]["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, not described by the CRD: the name and namespace
    # are what matter here.
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name", "namespace"],
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(resource), key=lambda e: list(e.path)
    )
    if errors:
        sys.exit(
            f"{resource_path}: does not validate against {crd_path}:\n"
            + "\n".join(f"  {'.'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors)
        )
    print(f"{resource_path}: valid {kind} {version} against {crd_path}")


def daemonset(path):
    ds = load_one(path)
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container.get("securityContext", {})
    json.dump(
        {
            "image": container["image"],
            "args": container.get("args", []),
            "cap_add": sc.get("capabilities", {}).get("add", []),
            "cap_drop": sc.get("capabilities", {}).get("drop", []),
            "privileged": sc.get("privileged", False),
            "read_only_root": sc.get("readOnlyRootFilesystem", False),
            "allow_privilege_escalation": sc.get("allowPrivilegeEscalation", True),
            "host_network": pod.get("hostNetwork", False),
            "host_pid": pod.get("hostPID", False),
            "mounts": {m["mountPath"]: m.get("readOnly", False) for m in container.get("volumeMounts", [])},
        },
        sys.stdout,
    )
    print()


def main():
    cmd, *args = sys.argv[1:] or [""]
    commands = {"groups": (groups, 2), "crd": (crd, 2), "daemonset": (daemonset, 1)}
    if cmd not in commands or len(args) != commands[cmd][1]:
        sys.exit(__doc__)
    commands[cmd][0](*args)


if __name__ == "__main__":
    main()
