#!/usr/bin/env python3
"""Every example in README.md and docs/*.md is checked, and so is every
link between them. Fenced blocks by their info string:

- ```yaml: must parse. StoragePools are validated against the CRD's schema
  (charts/pool-csi/crds/), VolumeSnapshots for the fields the snapshot
  controller needs, every other object against the schemas of Kubernetes
  1.29 (the chart's kubeVersion floor) and the newest kubernetes_validate
  carries (strict). A StorageClass of this driver may only use
  parameter keys common/src/params.rs knows. A document without `kind`
  whose keys are chart values is rendered with the chart exactly as
  dev/chart_check.py renders values, and every rendered object validated.
- ```sh: every command is looked up: `dev/...` scripts exist; `cargo`
  packages and `--test` targets exist; `helm` charts exist and every
  `--set` names a key of charts/pool-csi/values.yaml; `kubectl -f FILE`
  files exist; `poolctl` subcommands and their flags exist in
  controller/src/bin/poolctl.rs; the flags given to pool-csi-node and
  pool-csi-controller are documented in docs/cli.md; `kubectl taint` must
  set or remove the out-of-service taint the leader acts on; `sg_persist`
  options must be ones the installed sg_persist lists. Heredocs
  (`<<'YAML'`) are checked as YAML blocks. Any other command must be a
  known external tool (buildah, kind, csi-sanity, cat, echo).
- ```text: deliberately unchecked (diagrams, file layouts, output).
- any other info string, or none, fails: nothing goes unchecked silently.
  Blocks indented in lists are checked the same way.

Also: every Event and condition reason the leader writes (a CamelCase
string literal in controller/src/leader/) has an entry in
docs/troubleshooting.md, and every package of the image's list is named in
docs/install.md's image section.

Links `[..](path#anchor)` to local files must name a file that exists and,
with an anchor, a heading of that file (GitHub's slugs).

docs/design.md and docs/claims.md are checked for links only (their blocks
are diagrams; claims.md is checked by dev/check_claims.py).

Prints one line per page and every failure; exits non-zero on any."""

import glob
import os
import re
import shlex
import subprocess
import sys

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CHART = os.path.join(ROOT, "charts", "pool-csi")
# The chart's kubeVersion floor and the newest schemas kubernetes_validate has.
K8S_VERSIONS = (
    re.search(r'kubeVersion: ">=(\d+\.\d+\.\d+)', open(os.path.join(ROOT, "charts/pool-csi/Chart.yaml")).read()).group(1),
    kubernetes_validate.latest_version(),
)
DRIVER = "pool-csi.io"
LINKS_ONLY = {"docs/design.md", "docs/claims.md"}
EXTERNAL = {"buildah", "kind", "csi-sanity", "cat", "echo"}


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


# ------------------------------------------------------------- what exists

def crd_schema():
    crd = yaml.safe_load(read("charts/pool-csi/crds/storagepools.pool-csi.io.yaml"))
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


SP_SCHEMA = crd_schema()
VALUES = yaml.safe_load(read("charts/pool-csi/values.yaml"))


def param_keys():
    src = read("common/src/params.rs")
    keys = set(re.findall(r'pub const KEY_\w+: &str = "([^"]+)";', src))
    meta = re.search(r"PROVISIONER_METADATA: \[&str; \d+\] = \[(.*?)\];", src, re.S)
    keys |= set(re.findall(r'"([^"]+)"', meta.group(1)))
    assert "pool" in keys and "csi.storage.k8s.io/fstype" in keys, keys
    return keys


PARAM_KEYS = param_keys()


def poolctl():
    src = read("controller/src/bin/poolctl.rs")
    body = re.search(r"enum Command \{(.*?)\n\}", src, re.S).group(1)
    variants = re.findall(r"^    ([A-Z]\w*)", body, re.M)
    kebab = {re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower() for v in variants}
    # Options: `#[arg(long = "x")]`, or `#[arg(long ...)]` on field `x`,
    # here and in the TLS flags it flattens in.
    flags = set(re.findall(r'long = "([\w-]+)"', src))
    for text in (src, read("controller/src/agents/tls.rs")):
        flags |= {f.replace("_", "-") for f in re.findall(r"#\[arg\(long\b(?! =)[^\]]*\]\s*(?:pub )?(\w+):", text)}
    assert "agent" in flags and "agent-tls-ca" in flags and "wipe" in flags, flags
    return kebab, flags


POOLCTL_COMMANDS, POOLCTL_FLAGS = poolctl()


def packages():
    names, tests = set(), {}
    for toml in glob.glob(os.path.join(ROOT, "*", "Cargo.toml")):
        m = re.search(r'^\[package\]\s*\nname = "([^"]+)"', open(toml).read(), re.M)
        if m:
            d = os.path.dirname(toml)
            names.add(m.group(1))
            tests[m.group(1)] = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(d, "tests", "*.rs"))}
    return names, tests


PACKAGES, TEST_TARGETS = packages()
CLI_TEXT = read("docs/cli.md")


# ------------------------------------------------------------ YAML checks

def no_unknown_fields(doc, schema, path="$"):
    """What the API server's strict field validation refuses (kubectl's
    default) and jsonschema lets through: a field the schema does not name."""
    if isinstance(doc, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        if props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            extra = set(doc) - set(props) - ({"apiVersion", "kind", "metadata"} if path == "$" else set())
            assert not extra, f"{path}: unknown field(s) {sorted(extra)}"
            for k, v in doc.items():
                if k in props:
                    no_unknown_fields(v, props[k], f"{path}.{k}")
        elif isinstance(schema.get("additionalProperties"), dict):
            for k, v in doc.items():
                no_unknown_fields(v, schema["additionalProperties"], f"{path}.{k}")
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(doc):
            no_unknown_fields(v, schema["items"], f"{path}[{i}]")


def validate_object(doc):
    api, kind = doc.get("apiVersion", ""), doc.get("kind")
    if kind == "StoragePool":
        assert api == "pool-csi.io/v1alpha1", f"StoragePool apiVersion {api}"
        jsonschema.validate(doc, SP_SCHEMA)
        no_unknown_fields(doc, SP_SCHEMA)
    elif api.startswith("snapshot.storage.k8s.io/"):
        spec = doc.get("spec") or {}
        if kind == "VolumeSnapshot":
            src = spec.get("source") or {}
            assert len(src) == 1 and set(src) <= {"persistentVolumeClaimName", "volumeSnapshotContentName"}, doc
        elif kind == "VolumeSnapshotClass":
            assert doc["driver"] and doc["deletionPolicy"] in ("Delete", "Retain"), doc
        else:
            raise AssertionError(f"unchecked snapshot kind {kind}")
    elif api == "cert-manager.io/v1":
        spec = doc["spec"]
        assert kind == "Certificate" and spec["secretName"] and spec["dnsNames"] and spec["issuerRef"]["name"], doc
    else:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    if kind == "StorageClass" and doc.get("provisioner") == DRIVER:
        unknown = set(doc.get("parameters") or {}) - PARAM_KEYS
        assert not unknown, f"StorageClass {doc['metadata']['name']}: unknown parameters {sorted(unknown)}"
    if kind == "ConfigMap" and "pools.yaml" in doc.get("data", {}):
        for pool in yaml.safe_load_all(doc["data"]["pools.yaml"]):
            if pool:
                jsonschema.validate(pool, SP_SCHEMA)
                no_unknown_fields(pool, SP_SCHEMA)


def is_values(doc):
    return isinstance(doc, dict) and "kind" not in doc and doc and set(doc) <= set(VALUES)


def render_values(values):
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    rendered = chart.render(values, name="pool-csi", namespace="kube-system", is_install=True)
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                validate_object(doc)
    for sc in values.get("storageClasses") or []:
        unknown = set(sc.get("parameters") or {}) - PARAM_KEYS
        assert not unknown, f"values storageClasses {sc.get('name')}: unknown parameters {sorted(unknown)}"


def check_yaml(text, hint=""):
    """Checks a YAML block (or heredoc); answers how many objects it held."""
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs, "empty YAML"
    n = 0
    for doc in docs:
        if isinstance(doc, dict) and "kind" in doc:
            validate_object(doc)
        elif is_values(doc) or "values" in hint:
            render_values(doc)
        else:
            raise AssertionError(f"YAML that is neither a Kubernetes object nor chart values: {str(doc)[:80]}")
        n += 1
    return n


# -------------------------------------------------------------- sh checks

def value_path_exists(path):
    node = VALUES
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def commands(block):
    """(command tokens, heredocs) of a sh block: continuation lines joined,
    comments dropped, heredoc bodies taken out as (target, text)."""
    lines, heredocs, out = block.split("\n"), [], []
    i, logical = 0, []
    while i < len(lines):
        line = lines[i]
        m = re.search(r"<<-?\s*'?(\w+)'?", line)
        if m:
            end = lines.index(m.group(1), i + 1)
            target = re.search(r">\s*(\S+)", line[: m.start()])
            heredocs.append((target.group(1) if target else "", "\n".join(lines[i + 1:end])))
            line = line[: m.start()] + line[m.end():]
            i = end
        if line.endswith("\\"):
            logical.append(line[:-1])
        else:
            logical.append(line)
            out.append(" ".join(logical))
            logical = []
        i += 1
    cmds = []
    for line in out:
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>()")
        lex.whitespace_split = True
        lex.commenters = "#"
        cur, outer = [], []
        for tok in lex:
            if tok in (">", "<", ">>"):
                cur.append(tok)
            elif tok in ("<(", "("):  # a command inside a command
                outer.append(cur)
                cur = []
            elif tok == ")":
                if cur:
                    cmds.append(cur)
                cur = outer.pop()
            elif tok in (";", "&", "&&", "|", "||"):
                if cur:
                    cmds.append(cur)
                cur = []
            else:
                cur.append(tok)
        if cur:
            cmds.append(cur)
    return cmds, heredocs


def without_redirections(cmd):
    out, skip = [], False
    for t in cmd:
        if skip:
            skip = False
        elif t in (">", "<", ">>"):
            skip = True
        else:
            out.append(t)
    return out


def check_command(cmd):
    cmd = without_redirections(cmd)
    while cmd and re.match(r"^[A-Z_][A-Z0-9_]*=", cmd[0]):
        cmd = cmd[1:]
    if not cmd:
        return
    prog, args = cmd[0], cmd[1:]
    base = os.path.basename(prog)
    if prog.startswith("dev/"):
        assert os.path.isfile(os.path.join(ROOT, prog)), f"{prog} does not exist"
    elif prog.startswith("target/"):
        assert base in ("poolctl", "pool-csi-node", "pool-csi-controller"), f"{prog}: not a binary of this workspace"
        if base == "poolctl":
            check_poolctl(args)
        else:
            check_daemon(base, args)
    elif prog == "poolctl":
        check_poolctl(args)
    elif prog in ("pool-csi-node", "pool-csi-controller"):
        check_daemon(prog, args)
    elif prog == "cargo":
        check_cargo(args)
    elif prog == "helm":
        check_helm(args)
    elif prog == "kubectl":
        check_kubectl(args)
    elif prog == "sg_persist":
        check_sg_persist(args)
    elif prog in EXTERNAL:
        pass
    else:
        raise AssertionError(f"unknown command {prog!r}: check it here or mark the block ```text")


def check_poolctl(args):
    i = 0
    while i < len(args) and args[i].startswith("--"):
        flag = args[i][2:].split("=")[0]
        assert flag in POOLCTL_FLAGS, f"poolctl has no option --{flag}"
        i += 1 if "=" in args[i] else 2
    assert i < len(args), f"poolctl without a subcommand: {args}"
    sub = args[i]
    assert sub in POOLCTL_COMMANDS, f"poolctl has no subcommand {sub!r} (has {sorted(POOLCTL_COMMANDS)})"
    for a in args[i + 1:]:
        if a.startswith("--"):
            flag = a[2:].split("=")[0]
            assert flag in POOLCTL_FLAGS, f"poolctl {sub} has no option --{flag}"


def check_daemon(binary, args):
    section = CLI_TEXT.split("## Command-line flags")[1]
    for a in args:
        if a.startswith("--"):
            flag = a.split("=")[0]
            assert f"`{flag}" in section, f"{binary} {flag} is not in docs/cli.md"


def check_cargo(args):
    assert args and args[0] in ("build", "nextest", "test", "run"), f"cargo {args[:1]}: not a command these docs use"
    pkg = None
    for i, a in enumerate(args):
        if a in ("-p", "--package"):
            pkg = args[i + 1]
            assert pkg in PACKAGES, f"cargo -p {pkg}: no such package (have {sorted(PACKAGES)})"
        if a == "--test":
            t = args[i + 1]
            assert pkg and t in TEST_TARGETS[pkg], f"cargo --test {t}: no tests/{t}.rs in {pkg}"


def check_helm(args):
    assert args and args[0] in ("install", "upgrade", "uninstall", "lint", "template"), f"helm {args[:1]}"
    positional = []
    i = 1
    while i < len(args):
        a = args[i]
        if a == "--set":
            key = args[i + 1].split("=")[0]
            assert value_path_exists(key), f"helm --set {key}: not a key of charts/pool-csi/values.yaml"
            i += 2
        elif a in ("-n", "--namespace", "-f", "--values"):
            i += 2
        elif a.startswith("-"):
            assert a in ("--reuse-values", "--create-namespace", "--wait"), f"helm option {a} not checked here"
            i += 1
        else:
            positional.append(a)
            i += 1
    if args[0] in ("install", "upgrade"):
        assert len(positional) == 2, f"helm {args[0]} needs RELEASE CHART: {positional}"
        assert os.path.isdir(os.path.join(ROOT, positional[1])), f"chart {positional[1]} does not exist"


KUBECTL = {"get", "apply", "describe", "delete", "logs", "create", "edit", "patch", "exec", "taint"}
# The taint the leader acts on (controller/src/leader/node_loss.rs).
OUT_OF_SERVICE = re.search(r'pub const OUT_OF_SERVICE: &str = "([^"]+)"',
                           read("controller/src/leader/node_loss.rs")).group(1)


def check_kubectl(args):
    while args[:1] in (["-n"], ["--namespace"], ["--context"]):
        args = args[2:]
    assert args and args[0] in KUBECTL, f"kubectl {args[:1]}"
    if args[0] == "exec":
        # The command run in the container is checked as any other.
        assert "--" in args, "kubectl exec without `--`"
        check_command(args[args.index("--") + 1:])
        return
    if args[0] == "taint":
        # Only the out-of-service taint means anything to pool-csi.
        assert len(args) == 4 and args[1] == "node", f"kubectl taint {args[1:]}: expected `taint node <node> <taint>`"
        assert re.match(re.escape(OUT_OF_SERVICE) + r"((=[^:]*)?:(NoExecute|NoSchedule|PreferNoSchedule)-?|-)$", args[3]), f"kubectl taint: pool-csi acts on {OUT_OF_SERVICE}, not {args[3]}"
        return
    for i, a in enumerate(args):
        if a == "-f" and args[i + 1] != "-" and not args[i + 1].startswith("/"):
            assert os.path.exists(os.path.join(ROOT, args[i + 1])), f"kubectl -f {args[i + 1]}: no such file"


def check_sg_persist(args):
    """Each long option must be one the installed sg_persist lists."""
    usage = subprocess.run(["sg_persist", "--help"], capture_output=True, text=True)
    known = set(re.findall(r"(--[a-z-]+)", usage.stdout + usage.stderr))
    assert known, "sg_persist --help printed no options: is sg3-utils installed (dev/setup)?"
    for a in args:
        if a.startswith("--"):
            assert a.split("=")[0] in known, f"sg_persist has no option {a.split('=')[0]}"


def check_sh(text):
    cmds, heredocs = commands(text)
    for cmd in cmds:
        check_command(cmd)
    for target, body in heredocs:
        check_yaml(body, hint=target)
    return len(cmds)


# ------------------------------------------------------------------ pages

def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(rel):
    text = re.sub(r"```.*?```", "", read(rel), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.M)}


def blocks(text):
    """(line, info, body) of each fenced block, indented ones (in lists) too."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = re.match(r"^( *)```(.*)$", lines[i])
        if m:
            indent, j = len(m.group(1)), i + 1
            while not lines[j].lstrip().startswith("```"):
                j += 1
            body = [line[indent:] if not line[:indent].strip() else line.lstrip() for line in lines[i + 1:j]]
            out.append((i + 1, m.group(2).strip(), "\n".join(body)))
            i = j
        i += 1
    return out


def check_links(rel, text):
    failures, n = [], 0
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        n += 1
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(rel), path)) if path else rel
        if not os.path.exists(os.path.join(ROOT, dest)):
            failures.append(f"link {target}: {dest} does not exist")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            failures.append(f"link {target}: no heading #{anchor} in {dest}")
    return n, failures


def check_page(rel):
    text = read(rel)
    counts = {"yaml": 0, "sh": 0, "text": 0}
    failures = []
    nlinks, link_failures = check_links(rel, text)
    failures += link_failures
    if rel not in LINKS_ONLY:
        for line, info, body in blocks(text):
            try:
                if info == "yaml":
                    check_yaml(body)
                elif info == "sh":
                    check_sh(body)
                elif info == "text":
                    pass
                else:
                    raise AssertionError(f"info string {info!r}: use yaml, sh or text")
                counts[info] += 1
            except Exception as e:  # noqa: BLE001 - report every failure the same way
                msg = " ".join(str(e).split())[:300]
                failures.append(f"line {line} ({info or 'no info string'}): {msg}")
    status = "ok" if not failures else f"{len(failures)} FAILED"
    blocks_part = "links only" if rel in LINKS_ONLY else f"{counts['yaml']} yaml, {counts['sh']} sh, {counts['text']} text"
    print(f"{rel}: {blocks_part}; {nlinks} links; {status}")
    for f in failures:
        print(f"  FAIL {rel}:{f}")
    return len(failures)


# CamelCase literals in the leader's code that are API words, not reasons.
NOT_REASONS = {"PersistentVolume", "StoragePool", "VolumeSnapshotContent", "ReadWriteOnce"}


def check_reasons():
    """Every Event and condition reason the leader writes (a CamelCase string
    literal outside its tests) has its entry in docs/troubleshooting.md."""
    doc = read("docs/troubleshooting.md")
    found = set()
    for path in glob.glob(os.path.join(ROOT, "controller", "src", "leader", "*.rs")):
        code = read(os.path.relpath(path, ROOT)).split("#[cfg(test)]")[0]
        found |= set(re.findall(r'"([A-Z][a-z]+(?:[A-Z][a-z]+)+)"', code))
    missing = sorted(r for r in found - NOT_REASONS if f"`{r}`" not in doc)
    print(f"docs/troubleshooting.md: {len(found - NOT_REASONS)} reasons; " + ("ok" if not missing else f"{len(missing)} FAILED"))
    for r in missing:
        print(f"  FAIL reason `{r}` (controller/src/leader) has no entry in docs/troubleshooting.md")
    return len(missing)


def check_image_packages():
    """docs/install.md names every package of the image's list."""
    listed = [line.split("#")[0].split()[0].split("/")[0]
              for line in read("charts/pool-csi/image/packages").splitlines()
              if line.split("#")[0].strip()]
    section = read("docs/install.md").split("## The image", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"[a-z0-9][a-z0-9.+-]*", section))
    missing = [p for p in listed if p not in named]
    print(f"docs/install.md: {len(listed)} image packages; " + ("ok" if not missing else f"{len(missing)} FAILED"))
    for p in missing:
        print(f"  FAIL package {p} (charts/pool-csi/image/packages) is not named under docs/install.md#the-image")
    return len(missing)


def main():
    pages = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    failed = sum(check_page(p) for p in pages) + check_reasons() + check_image_packages()
    print(f"docs: {len(pages)} pages, {failed} failures")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
