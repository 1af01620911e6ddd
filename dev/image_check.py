#!/usr/bin/env python3
"""Smoke-tests the image dev/image built: the binaries are this checkout's,
every tool the node plugin runs is there and runs, each tool's Debian
package is the very version the tests ran against on this machine, or a
binNMU rebuild of its source (where
the tests use recorded output instead, the version is printed), the
controller's user exists, and the demo runs inside the container against
the image's own tools.

    dev/image_check.py [NAME]     default localhost/pool-csi:dev

With POOL_CSI_REQUIRE_ALL=1 (CI) a check that cannot run fails instead of
being skipped."""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRE_ALL = os.environ.get("POOL_CSI_REQUIRE_ALL") == "1"

# (argv, Debian package): every program the node plugin runs.
TOOLS = [
    (["qemu-img", "--version"], "qemu-utils"),
    (["qemu-storage-daemon", "--version"], "qemu-utils"),
    (["qemu-nbd", "--version"], "qemu-utils"),
    (["losetup", "--version"], "util-linux"),
    (["blkid", "--version"], "util-linux"),
    (["partx", "--version"], "util-linux"),
    (["mount", "--version"], "mount"),
    (["sfdisk", "--version"], "fdisk"),
    (["mkfs.ext4", "-V"], "e2fsprogs"),
    (["resize2fs"], "e2fsprogs"),
    (["mkfs.xfs", "-V"], "xfsprogs"),
    (["xfs_growfs", "-V"], "xfsprogs"),
    (["lvm", "version"], "lvm2"),
    (["iscsiadm", "--version"], "open-iscsi"),
    (["iscsi-ls", "--help"], "libiscsi-bin"),
    (["iscsi-inq", "--help"], "libiscsi-bin"),
    (["iscsi-readcapacity16", "--help"], "libiscsi-bin"),
    (["multipath", "-h"], "multipath-tools"),
    (["multipathd", "-h"], "multipath-tools"),
    (["mpathpersist", "-h"], "multipath-tools"),
    (["sg_persist", "-V"], "sg3-utils"),
    (["ploop"], "ploop"),
    (["mount.nfs", "-V"], "nfs-common"),
    (["mount.cifs", "-V"], "cifs-utils"),
    (["mount.glusterfs", "-V"], "glusterfs-client"),
]
# Tools that drop to a capability set at start and stop without it: run
# with the capabilities the node plugin has (privileged).
NEEDS_CAPS = {"mount.cifs"}
# Tools that print no version: running them must print their usage.
USAGE = {"resize2fs": "resize2fs", "multipathd": "Invalid argument '-h'", "ploop": "Usage: ploop",
         "iscsi-ls": "Usage: iscsi-ls", "iscsi-inq": "Usage: iscsi-inq",
         "iscsi-readcapacity16": "Usage: iscsi_readcapacity16",
         "mpathpersist": "Usage: mpathpersist",
         # sg3-utils 1.46's sg_persist names its own version, not the package's.
         "sg_persist": "version: 0.67",
         # multipathd has no version or help flag: its own argument error
         # shows it loads and runs.
         }


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def upstream(version):
    """1:10.0.2+ds-2+deb13u1~bpo12+1 -> 10.0.2"""
    v = version.split(":", 1)[-1]
    return re.split(r"[-+~]", v)[0]


def same_source(a, b):
    """Versions of one source build: 1.47.0-2 and its binNMU 1.47.0-2+b2 (a
    rebuild of the same source against newer libraries, which the archive
    can publish after a machine was set up) count as the same."""
    def strip(v):
        return re.sub(r"\+b\d+$", "", v)
    return strip(a) == strip(b)


def host_version(pkg):
    r = run(["dpkg-query", "-W", "-f", "${Status} ${Version}", pkg])
    if r.returncode != 0 or not r.stdout.startswith("install ok installed"):
        return None
    return r.stdout.split()[-1]


def cargo_version():
    meta = json.loads(run(["cargo", "metadata", "--no-deps", "--format-version", "1"],
                          cwd=ROOT, check=True).stdout)
    return next(p["version"] for p in meta["packages"] if p["name"] == "pool-csi-node")


def privileged_caps():
    """The capabilities this process holds, for a privileged run."""
    names = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
             "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
             "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
             "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
             "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
             "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
             "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"]
    status = open("/proc/self/status").read()
    eff = int(re.search(r"CapEff:\s*(\w+)", status).group(1), 16)
    return ",".join("CAP_" + n for i, n in enumerate(names) if eff >> i & 1)


class Image:
    def __init__(self, name):
        self.name = name
        self.ctr = run(["buildah", "from", "--quiet", name], check=True).stdout.strip()

    def run(self, argv, extra=()):
        return run(["buildah", "run", "--isolation", "chroot", *extra, self.ctr, "--", *argv])

    def close(self):
        run(["buildah", "rm", self.ctr])


def check_binaries(img, failures):
    """The image's binaries are this checkout's version."""
    version = cargo_version()
    for b in ["pool-csi-node", "pool-csi-controller", "poolctl"]:
        r = img.run([b, "--version"])
        got = r.stdout.strip()
        ok = r.returncode == 0 and got == f"{b} {version}"
        print(f"{'ok  ' if ok else 'FAIL'} {b}: {got or r.stderr.strip()}")
        if not ok:
            failures.append(f"{b} --version said {got!r}, not {b} {version}")


def check_labels(img, failures):
    """The OCI labels name this checkout's version and revision."""
    labels = json.loads(run(["buildah", "inspect", "--type", "image", img.name],
                            check=True).stdout)["OCIv1"]["config"].get("Labels") or {}
    head = run(["git", "rev-parse", "HEAD"], cwd=ROOT).stdout.strip()
    for key, want in [("org.opencontainers.image.version", cargo_version()),
                      ("org.opencontainers.image.revision", head),
                      ("org.opencontainers.image.source", None)]:
        if not labels.get(key) or want and labels.get(key) != want:
            failures.append(f"label {key} is {labels.get(key)!r}, not {want!r}")
    print(f"ok   labels: version {labels.get('org.opencontainers.image.version')}, "
          f"revision {labels.get('org.opencontainers.image.revision', '')[:12]}")


def check_user(img, failures):
    """The controller's user exists with the chart's runAsUser."""
    uid = img.run(["id", "-u", "pool-csi"]).stdout.strip()
    if uid != "65532":
        failures.append(f"user pool-csi has uid {uid!r}, not 65532 (the chart's runAsUser)")
    else:
        print("ok   user pool-csi (65532) for the controller")


def check_tools(img, failures):
    """Every tool runs, and its package is the version the tests ran."""
    for argv, pkg in TOOLS:
        r = img.run(["dpkg-query", "-W", "-f", "${Version}", pkg])
        in_image = r.stdout.strip()
        caps = ["--cap-add", privileged_caps()] if argv[0] in NEEDS_CAPS else []
        out = img.run(argv, caps)
        text = out.stdout + out.stderr
        want = USAGE.get(argv[0]) or upstream(in_image)
        ran = bool(in_image) and want in text and "not found" not in text
        on_host = host_version(pkg)
        status = "ok  "
        if not ran:
            failures.append(f"{' '.join(argv)} ({pkg} {in_image or 'missing'}) did not run "
                            f"or did not name {want!r}: {text.strip()[:200]!r}")
            status = "FAIL"
        elif on_host is not None and not same_source(on_host, in_image):
            failures.append(f"{pkg}: the image has {in_image}, the tests ran {on_host}")
            status = "FAIL"
        where = ("the tests ran the same" if on_host == in_image else
                 f"the tests ran {on_host}, the same source" if on_host and same_source(on_host, in_image) else
                 "not on this machine: its tests use recorded output" if on_host is None
                 else f"tests ran {on_host}")
        print(f"{status} {argv[0]:<22} {pkg} {in_image} ({where})")


def check_demo(img, failures, skipped):
    """The demo, inside the container, on the image's binaries and tools."""
    run(["cargo", "build", "--release", "--quiet", "-p", "pool-csi-e2e", "--bin",
         "pool-csi-demo"], cwd=ROOT, check=True)
    demo = os.path.join(ROOT, "target/release/pool-csi-demo")
    r = img.run(["/usr/local/bin/pool-csi-demo"],
                ["--cap-add", privileged_caps(), "-v", "/dev:/dev", "-v", "/sys:/sys",
                 "-v", f"{demo}:/usr/local/bin/pool-csi-demo"])
    text = r.stdout + r.stderr
    if "operation not permitted" in text and "capabilities" in text:
        skipped.append("the demo in the container: this machine cannot run a privileged "
                       "container (" + text.strip().splitlines()[0] + ")")
    elif r.returncode != 0 or "everything was cleaned up" not in text:
        failures.append("the demo in the container failed:\n" + text[-2000:])
    else:
        steps = [line for line in text.splitlines() if re.match(r"\s*\d+\. ", line)]
        print(f"ok   the demo in the container, on the image's tools: {len(steps)} steps")


def check_dockerfile(failures):
    """charts/pool-csi/Dockerfile builds the same layout (it cannot be built
    here: no registry): the same package list, qemu from backports, the
    same user and binaries."""
    text = open(os.path.join(ROOT, "charts/pool-csi/Dockerfile")).read()
    for need in ["charts/pool-csi/image/packages", "bookworm-backports", "--uid 65532",
                 "pool-csi-controller", "pool-csi-node", "poolctl /usr/local/bin/",
                 'ENTRYPOINT ["/usr/local/bin/pool-csi-node"]',
                 "org.opencontainers.image.version=$VERSION",
                 "org.opencontainers.image.revision=$REVISION"]:
        if need not in text:
            failures.append(f"charts/pool-csi/Dockerfile lacks {need!r} (dev/image has it)")
    print("ok   the Dockerfile installs the same packages, user, binaries and labels")


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "localhost/pool-csi:dev"
    failures, skipped = [], []
    check_dockerfile(failures)
    img = Image(name)
    try:
        check_binaries(img, failures)
        check_labels(img, failures)
        check_user(img, failures)
        check_tools(img, failures)
        check_demo(img, failures, skipped)
    finally:
        img.close()
    for s in skipped:
        print(f"SKIP {s}")
    if skipped and REQUIRE_ALL:
        failures.append("skipped with POOL_CSI_REQUIRE_ALL=1")
    sys.stdout.flush()
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f"dev/image_check: {name} passed")


if __name__ == "__main__":
    main()
