#!/usr/bin/env python3
"""Offline checks of the Helm chart: lint it, render it with the default
values and every file in charts/pool-csi/ci/, check the values against
values.schema.json, and validate every rendered object against the schema of
a current Kubernetes release (StoragePools against the CRD the code
generates). No cluster is needed. Prints one line per check and a closing
"N passed, M failed" line; exits non-zero on any failure."""

import glob
import json
import os
import shutil
import subprocess
import sys
import re
import tempfile

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CHART = os.path.join(ROOT, "charts", "pool-csi")
# The Kubernetes versions the chart is validated against: the floor its
# kubeVersion declares, and the newest schemas kubernetes-validate carries.
FLOOR = re.search(r'kubeVersion: ">=(\d+\.\d+\.\d+)', open(os.path.join(CHART, "Chart.yaml")).read()).group(1)
K8S_VERSIONS = (FLOOR, kubernetes_validate.latest_version())
passed, failed = 0, 0


def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"PASS {name}")
    except Exception as e:  # noqa: BLE001 - report every failure the same way
        failed += 1
        print(f"FAIL {name}: {e}")


def crd_schema():
    crd = yaml.safe_load(open(os.path.join(CHART, "crds", "storagepools.pool-csi.io.yaml")))
    return crd, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate_object(doc, sp_schema):
    api, kind = doc["apiVersion"], doc["kind"]
    if api == "pool-csi.io/v1alpha1":
        jsonschema.validate(doc, sp_schema)
    elif api == "cert-manager.io/v1":
        # Not a core API: check the fields this chart relies on.
        spec = doc["spec"]
        assert kind == "Certificate" and spec["secretName"] and spec["dnsNames"] and spec["issuerRef"]["name"], doc
    elif api == "monitoring.coreos.com/v1":
        # Prometheus Operator kinds: the fields this chart relies on.
        spec = doc["spec"]
        if kind == "PodMonitor":
            ep = spec["podMetricsEndpoints"][0]
            assert spec["selector"]["matchLabels"] and ep["port"] == "metrics", doc
            assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in ep["relabelings"], ep
        else:
            assert kind == "PrometheusRule" and all(r["alert"] and r["expr"] for g in spec["groups"] for r in g["rules"]), doc
    elif api.startswith("snapshot.storage.k8s.io/"):
        # Not a core API: check what the snapshot controller requires.
        assert kind == "VolumeSnapshotClass" and doc["driver"] and doc["deletionPolicy"] in ("Delete", "Retain"), doc
    else:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    if kind == "ConfigMap" and "pools.yaml" in doc.get("data", {}):
        for pool in yaml.safe_load_all(doc["data"]["pools.yaml"]):
            if pool:
                jsonschema.validate(pool, sp_schema)


def render_and_validate(values_file):
    values = yaml.safe_load(open(values_file)) if values_file else {}
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    rendered = chart.render(values, name="pool-csi", namespace="kube-system", is_install=True)
    _, sp_schema = crd_schema()
    objects = 0
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            assert "pool-csi" in text, "NOTES.txt is empty"
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                validate_object(doc, sp_schema)
                objects += 1
    assert objects >= 10, f"only {objects} objects rendered"


def lint():
    for version in K8S_VERSIONS:
        report = helm.lint(CHART, strict=True, kube_version=f"v{version}")
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
        assert not problems, (version, problems)


def crd_is_valid():
    crd, _ = crd_schema()
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)


def bad_values_are_refused():
    chart = helm.Chart.load(CHART)
    for bad in ({"driverName": "not a name!"}, {"pools": [{"name": "Bad_Name", "spec": {"type": "dir"}}]},
                {"node": {"agentPort": 70000}}, {"unknownKey": 1}, {"provisioning": "nodes"}):
        try:
            chart.validate_schema(bad)
        except helm.HelmError:
            continue
        raise AssertionError(f"values.schema.json accepted {bad}")


def rendered_docs(values):
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values, name="pool-csi", namespace="kube-system", is_install=True)
    for path, text in rendered.items():
        if not path.endswith("NOTES.txt"):
            yield from (d for d in yaml.safe_load_all(text) if d)


def pod_spec(values, kind):
    for doc in rendered_docs(values):
        if doc.get("kind") == kind:
            return doc["spec"]["template"]["spec"]
    raise AssertionError(f"no {kind} rendered")


def node_spec(values):
    return pod_spec(values, "DaemonSet")


def both_run_in_cluster_mode():
    node = next(c for c in node_spec({})["containers"] if c["name"] == "node")
    assert "--pools-from-cluster" in node["args"], node["args"]
    ctrl = next(c for c in pod_spec({}, "Deployment")["containers"] if c["name"] == "controller")
    assert "--cluster" in ctrl["args"], ctrl["args"]
    sel = next(a for a in ctrl["args"] if a.startswith("--agent-pod-selector="))
    assert "app.kubernetes.io/component=node" in sel and "app.kubernetes.io/instance=pool-csi" in sel, sel
    env = {e["name"] for e in ctrl["env"]}
    assert {"POD_NAME", "POD_NAMESPACE"} <= env, env


def node_confines_co_paths_to_the_kubelet_dir():
    for kubelet in ("/var/lib/kubelet", "/data/kubelet"):
        values = {} if kubelet == "/var/lib/kubelet" else {"node": {"kubeletDir": kubelet}}
        spec = node_spec(values)
        node = next(c for c in spec["containers"] if c["name"] == "node")
        assert f"--kubelet-dir={kubelet}" in node["args"], node["args"]
        mounts = {m["mountPath"] for m in node["volumeMounts"]}
        assert kubelet in mounts, mounts


def node_may_write_lun_claims_only():
    node = next(c for c in node_spec({})["containers"] if c["name"] == "node")
    assert "POD_NAMESPACE" in {e["name"] for e in node["env"]}, node["env"]
    docs = list(rendered_docs({}))
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Role", "ClusterRole")}
    role = roles[("Role", "pool-csi-node")]
    assert role["metadata"]["namespace"] == "kube-system", role["metadata"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]}], role["rules"]
    cluster_verbs = {v for r in roles[("ClusterRole", "pool-csi-node")]["rules"] for v in r["verbs"]}
    assert cluster_verbs <= {"get", "list", "watch"}, cluster_verbs
    bound = [d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "pool-csi-node"]
    assert bound and bound[0]["subjects"][0]["name"] == "pool-csi-node", bound


def distributed_provisioning_runs_beside_each_node_plugin():
    def containers(values, kind):
        return {c["name"]: c for c in pod_spec(values, kind)["containers"]}
    # By default the controller's provisioner makes every volume.
    assert "csi-provisioner" in containers({}, "Deployment")
    node = containers({}, "DaemonSet")
    assert "csi-provisioner" not in node and "--controller-service" not in node["node"]["args"], node.keys()
    # provisioning: node moves it beside each node plugin, on the node's socket.
    on = {"provisioning": "node"}
    assert "csi-provisioner" not in containers(on, "Deployment"), "two provisioners would race for each claim"
    node = containers(on, "DaemonSet")
    assert "--controller-service" in node["node"]["args"], node["node"]["args"]
    prov = node["csi-provisioner"]
    assert {"--csi-address=/csi/csi.sock", "--node-deployment", "--strict-topology", "--enable-capacity",
            "--capacity-ownerref-level=0"} <= set(prov["args"]), prov["args"]
    assert not any(a.startswith("--leader-election") for a in prov["args"]), prov["args"]
    assert {"NODE_NAME", "NAMESPACE", "POD_NAME"} <= {e["name"] for e in prov["env"]}, prov["env"]
    assert {"name": "plugin-dir", "mountPath": "/csi"} in prov["volumeMounts"], prov["volumeMounts"]
    # The node's service account gets the provisioner's rights, and no more.
    roles = {(d["kind"], d["metadata"]["name"]): d for d in rendered_docs(on) if d["kind"] in ("Role", "ClusterRole")}
    rules = roles[("ClusterRole", "pool-csi-node")]["rules"] + roles[("Role", "pool-csi-node")]["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "secrets" not in rule["resources"], rule
        if "storagepools" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    pvs = [r for r in rules if "persistentvolumes" in r["resources"]]
    assert pvs and {"create", "delete"} <= set(pvs[0]["verbs"]), pvs
    # It watches VolumeAttachments (the service offers ControllerPublish):
    # without that its caches never sync and it provisions nothing.
    vas = [r for r in rules if "volumeattachments" in r["resources"]]
    assert vas and {"get", "list", "watch"} <= set(vas[0]["verbs"]), rules
    assert not any("csinodes" in r["resources"] for r in rules), "fake objects in node deployment"
    node_verbs = {v for r in rules if "nodes" in r["resources"] for v in r["verbs"]}
    assert node_verbs == {"get"}, node_verbs
    assert any("csistoragecapacities" in r["resources"] for r in roles[("Role", "pool-csi-node")]["rules"])
    # StorageClasses wait for the consumer: the node-deployment provisioner
    # acts only on claims the scheduler gave its node.
    sc = [d for d in rendered_docs({**on, "storageClasses": [{"name": "x", "pool": "p"}]}) if d["kind"] == "StorageClass"]
    assert sc and all(d["volumeBindingMode"] == "WaitForFirstConsumer" for d in sc), sc


def iscsi_pools_get_the_host_network_and_their_secret():
    plain = node_spec({})
    assert not plain.get("hostNetwork"), "host network without an iscsi pool"
    values = yaml.safe_load(open(os.path.join(CHART, "ci", "all-examples-values.yaml")))
    spec = node_spec(values)
    assert spec.get("hostNetwork") is True and spec.get("dnsPolicy") == "ClusterFirstWithHostNet", spec.get("hostNetwork")
    secrets = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
    assert "san-chap" in secrets and "san-target-chap" in secrets, secrets
    node = next(c for c in spec["containers"] if c["name"] == "node")
    mounts = {m["mountPath"] for m in node["volumeMounts"]}
    assert "/etc/pool-csi-secrets/san-chap" in mounts and "/etc/iscsi" in mounts, mounts
    assert "/etc/pool-csi-secrets/san-target-chap" in mounts, mounts
    assert "--secrets-dir=/etc/pool-csi-secrets" in node["args"], node["args"]


def render_against(objects, values, **opts):
    """Renders the chart with `lookup` answered by a stub API server that
    holds `objects` (path -> object), as helm does against a cluster on
    upgrade. Only discovery and GETs of those paths are answered."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    routes = {
        "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0"},
        "/api": {"kind": "APIVersions", "versions": ["v1"]},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
        "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "secrets", "singularName": "secret", "namespaced": True,
             "kind": "Secret", "verbs": ["get", "list"]}]},
        **objects,
    }

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_GET(self):
            body = routes.get(self.path.split("?")[0])
            code = 200 if body is not None else 404
            if body is None:
                body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = helm.Config(kube_apiserver=f"http://127.0.0.1:{server.server_port}", namespace="kube-system")
        return cfg.render(helm.Chart.load(CHART), values, name="pool-csi", namespace="kube-system", **opts)
    finally:
        server.shutdown()


def upgrade_keeps_the_agent_certificates():
    values = {"tls": {"enabled": True}}
    secret_of = lambda rendered: yaml.safe_load(rendered["pool-csi/templates/tls.yaml"])["data"]
    # Install: a new CA each time (nothing to find).
    first = secret_of(render_against({}, values, is_install=True))
    second = secret_of(render_against({}, values, is_install=True))
    assert set(first) == {"ca.crt", "agent.crt", "agent.key", "controller.crt", "controller.key"}, sorted(first)
    assert first["ca.crt"] != second["ca.crt"], "install makes a new CA"
    # Upgrade over an installed release: the Secret found is kept as it is,
    # so agents and controller keep trusting each other across the upgrade.
    existing = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "pool-csi-agent-tls", "namespace": "kube-system"}, "data": first}
    rendered = render_against({"/api/v1/namespaces/kube-system/secrets/pool-csi-agent-tls": existing},
                              values, is_upgrade=True)
    assert secret_of(rendered) == first, "upgrade replaced the agent certificates"
    _, sp_schema = crd_schema()
    for path, text in rendered.items():
        if not path.endswith("NOTES.txt"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    validate_object(doc, sp_schema)


def csidriver_network_policy_and_controller_rbac():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered_docs({})}
    spec = docs[("CSIDriver", "pool-csi.io")]["spec"]
    assert spec["attachRequired"] is True and spec["storageCapacity"] is True, spec
    # The agent port admits the controller pods only; the other rule is the health port.
    np = docs[("NetworkPolicy", "pool-csi-agents")]["spec"]
    assert np["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "node", np
    agent = [r for r in np["ingress"] if any(p["port"] == 7690 for p in r["ports"])]
    assert len(agent) == 1, np["ingress"]
    assert [f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in agent[0]["from"]] == ["controller"], agent
    others = [p["port"] for r in np["ingress"] if r is not agent[0] for p in r["ports"]]
    assert others == [9809], others
    # Controller RBAC: no Secrets, no wildcards, StoragePools written only through status.
    for kind in ("ClusterRole", "Role"):
        for rule in docs[(kind, "pool-csi-controller")]["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert "secrets" not in rule["resources"], rule
            if "storagepools" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            if "storagepools/status" in rule["resources"]:
                assert set(rule["verbs"]) <= {"update", "patch"}, rule
            if "pods" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get", "list"}, rule  # watch only with volumeHealth (below)
    # The orphans the leader finds: one ConfigMap in its namespace, never deleted by it.
    cms = [r for r in docs[("Role", "pool-csi-controller")]["rules"] if "configmaps" in r["resources"]]
    assert len(cms) == 1 and cms[0]["verbs"] == ["get", "create", "update"], cms
    ctrl = docs[("Deployment", "pool-csi-controller")]["spec"]["template"]["spec"]["containers"]
    args = next(c["args"] for c in ctrl if c["name"] == "controller")
    assert "--orphan-grace-seconds=900" in args, args
    assert not any(c["name"] == "csi-external-health-monitor-controller" for c in ctrl), "off by default"
    # On request, the health monitor, and cluster-wide pod reads for it only.
    on = {(d["kind"], d["metadata"]["name"]): d for d in rendered_docs({"volumeHealth": {"enabled": True, "monitorInterval": "30s"}})}
    ctrl = on[("Deployment", "pool-csi-controller")]["spec"]["template"]["spec"]["containers"]
    hm = next(c for c in ctrl if c["name"] == "csi-external-health-monitor-controller")
    assert "--monitor-interval=30s" in hm["args"] and "--leader-election" in hm["args"], hm["args"]
    pods = [r for r in on[("ClusterRole", "pool-csi-controller")]["rules"] if "pods" in r["resources"]]
    assert pods == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}], pods


def rendered_monitoring():
    """The chart rendered with every monitoring object on: {kind: object}."""
    values = yaml.safe_load(open(os.path.join(CHART, "ci", "monitoring-values.yaml")))
    rendered = helm.Chart.load(CHART).render(values, name="pool-csi", namespace="kube-system", is_install=True)
    text = rendered[next(p for p in rendered if p.endswith("monitoring.yaml"))]
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def promtool(*args):
    tool = os.path.join(ROOT, ".venv", "bin", "promtool")
    if not os.access(tool, os.X_OK):
        tool = shutil.which("promtool")
    if tool is None:
        raise AssertionError("promtool is missing (dev/setup puts it in .venv/bin)")
    r = subprocess.run([tool, *args], capture_output=True, text=True)
    assert r.returncode == 0, f"promtool {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def alerts_fire_as_tested():
    """The rendered PrometheusRule passes `promtool check rules` and the unit
    tests in dev/promtool/alerts_test.yaml (each alert fires when it should,
    and not when it should not)."""
    rule = rendered_monitoring()["PrometheusRule"]
    with tempfile.TemporaryDirectory() as d:
        rules = os.path.join(d, "rules.yaml")
        yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(rules, "w"))
        promtool("check", "rules", rules)
        tests = yaml.safe_load(open(os.path.join(ROOT, "dev", "promtool", "alerts_test.yaml")))
        tests["rule_files"] = [rules]
        test_file = os.path.join(d, "test.yaml")
        yaml.safe_dump(tests, open(test_file, "w"))
        out = promtool("test", "rules", test_file)
        assert "SUCCESS" in out, out
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert names == tested, f"alerts without a test: {names - tested}"


def dashboard_queries_parse():
    """Every query of the Grafana dashboard (from the rendered ConfigMap) is
    PromQL that promtool accepts; the sidecar label is on the ConfigMap."""
    cm = rendered_monitoring()["ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", cm["metadata"]
    board = json.loads(cm["data"]["pool-csi.json"])
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(exprs) >= 9, exprs
    with tempfile.TemporaryDirectory() as d:
        rules = os.path.join(d, "dashboard.yaml")
        group = {"name": "dashboard", "rules": [{"record": f"pool_csi:panel_{i}", "expr": e}
                                                for i, e in enumerate(exprs)]}
        yaml.safe_dump({"groups": [group]}, open(rules, "w"))
        promtool("check", "rules", rules)


check("helm lint --strict", lint)
check("alerts: promtool check and unit tests", alerts_fire_as_tested)
check("dashboard: every query is valid PromQL", dashboard_queries_parse)
check("iscsi pools: host network, CHAP Secrets (mutual too) mounted", iscsi_pools_get_the_host_network_and_their_secret)
check("node and controller run in cluster mode", both_run_in_cluster_mode)
check("node: CO paths confined to the kubelet dir it mounts", node_confines_co_paths_to_the_kubelet_dir)
check("node RBAC: LUN claims ConfigMaps in its namespace, nothing else written", node_may_write_lun_claims_only)
check("provisioning: node puts the provisioner beside each node plugin", distributed_provisioning_runs_beside_each_node_plugin)
check("CRD validates as apiextensions.k8s.io/v1", crd_is_valid)
check("values.schema.json refuses bad values", bad_values_are_refused)
check("CSIDriver, NetworkPolicy, controller RBAC as README says", csidriver_network_policy_and_controller_rbac)
check("upgrade keeps the agent certificates (lookup of the existing Secret)", upgrade_keeps_the_agent_certificates)
for f in [None] + sorted(glob.glob(os.path.join(CHART, "ci", "*.yaml"))):
    check(f"render + validate ({os.path.basename(f) if f else 'default values'})", lambda f=f: render_and_validate(f))
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
