#!/usr/bin/env python3
"""Structural checks of the deployment files (Dockerfile, deploy/).

No Docker engine, Kubernetes cluster or Grafana runs here, so these checks
read the files and cross-check them against each other and against the
server's own flag definitions (server/main.cc) and fixed metric names
(ARCHITECTURE.md, mirrored in METRICS below):

  check_deploy.py dockerfile [--binary PATH ...]
      stages, base images, non-root numeric USER, HEALTHCHECK through
      `bitnet-cli health`, EXPOSE of the server's default ports, ENTRYPOINT,
      apt hygiene; with --binary, every shared library the binaries load is
      provided by the CPU stage's packages (computed with ldd + dpkg +
      apt-cache), no package is superfluous, and the GPU stage lists the
      Ubuntu 24.04 (noble) name of each.
  check_deploy.py compose [--compose-cmd CMD]
      deploy/compose.yaml: `docker-compose config` (no engine needed) when
      available, then services, GPU reservation, ports, volumes, grace period,
      health check, and the Prometheus target.
  check_deploy.py k8s [--server PATH]
      deploy/k8s/*.yaml: kinds and required fields, probes, ports, grace
      period vs --drain_grace_period, Service/ServiceMonitor/HPA/PDB wiring,
      the flag file's flags; with --server, the server itself parses the
      ConfigMap's flag file.
  check_deploy.py grafana
      dashboard JSON and provisioning: datasource uid, required panels, and
      every PromQL query uses only the fixed metric names.

Each check prints one line per finding and a closing "N passed, N failed"
line; the exit status is 1 when anything failed, 77 (CTest SKIP_RETURN_CODE)
when a required input does not exist yet.
"""

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
SKIP = 77

# ARCHITECTURE.md "Metrics" (fixed). Histograms expose _bucket/_sum/_count.
COUNTERS = {"bitnet_requests_total", "bitnet_rows_total",
            "bitnet_finetune_steps_total", "grpc_server_handled_total",
            # Added with connection affinity (docs/api.md "Metrics").
            "bitnet_routed_requests_total"}
GAUGES = {"bitnet_queue_rows", "bitnet_model_info",
          "bitnet_device_memory_used_bytes", "bitnet_finetune_loss",
          "bitnet_build_info",
          # Added with multi-device serving (docs/api.md "Metrics").
          "bitnet_instance_healthy"}
HISTOGRAMS = {"bitnet_request_duration_seconds",
              "bitnet_queue_duration_seconds", "bitnet_batch_rows",
              "bitnet_batch_compute_seconds", "grpc_server_handling_seconds"}
METRICS = COUNTERS | GAUGES | HISTOGRAMS
SERIES_NAMES = (COUNTERS | GAUGES
                | {h + s for h in HISTOGRAMS
                   for s in ("_bucket", "_sum", "_count")}
                | {"up"})


class Checker:
    """Collects named pass/fail results and prints a summary."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"PASS {what}")
        else:
            self.failed += 1
            print(f"FAIL {what}" + (f": {detail}" if detail else ""))
        return ok

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


# ---------------------------------------------------------------- server ---

def server_flags():
    """Flag name -> default literal, from the ABSL_FLAG lines of main.cc."""
    path = os.path.join(ROOT, "server", "main.cc")
    if not os.path.exists(path):
        return None
    text = open(path, encoding="utf-8").read()
    flags = {}
    for m in re.finditer(r"ABSL_FLAG\(\s*[\w:<>]+\s*,\s*(\w+)\s*,\s*([^,]+),",
                         text):
        flags[m.group(1)] = m.group(2).strip()
    return flags


def cli_flags():
    """bitnet-cli's flag names (client/cli_main.cc), or None if absent."""
    path = os.path.join(ROOT, "client", "cli_main.cc")
    if not os.path.exists(path):
        return None
    text = open(path, encoding="utf-8").read()
    return set(re.findall(r"ABSL_FLAG\(\s*[\w:<>]+\s*,\s*(\w+)\s*,", text))


def server_default_int(flags, name):
    value = flags.get(name, "")
    return int(value) if re.fullmatch(r"-?\d+", value) else None


def parse_duration_seconds(text):
    """Abseil/Go-style durations ("30s", "1m30s", "2ms") -> seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def parse_flagfile(text):
    """Abseil --flagfile: one --name=value per line, '#' comments."""
    flags = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"--(\w+)(?:=(.*))?", line)
        if not m:
            raise ValueError(f"flag file line is not --name=value: {line!r}")
        flags[m.group(1)] = m.group(2) if m.group(2) is not None else "true"
    return flags


# ------------------------------------------------------------ Dockerfile ---

def dockerfile_instructions(text):
    """Returns (keyword, arguments) pairs, continuation lines joined."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def dockerfile_stages(instructions):
    """[{name, base, instructions}] in file order; ARGs before FROM resolved."""
    args, stages = {}, []
    for keyword, rest in instructions:
        if keyword == "ARG" and not stages:
            name, _, value = rest.partition("=")
            args[name] = value
        elif keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""),
                          words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" \
                else str(len(stages))
            stages.append({"name": name, "base": base, "ins": []})
        elif stages:
            stages[-1]["ins"].append((keyword, rest))
    return stages


def exec_form(rest):
    """A JSON-array (exec form) instruction argument, or None."""
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def apt_packages(stage):
    pkgs = []
    for keyword, rest in stage["ins"]:
        if keyword != "RUN":
            continue
        for cmd in re.split(r"&&|;", rest):
            words = cmd.split()
            if "apt-get" in words and "install" in words:
                pkgs += [w for w in words[words.index("install") + 1:]
                         if not w.startswith("-")]
    return pkgs


def dpkg_file_owners():
    """Installed file path -> package, from dpkg's file lists (one read
    instead of a `dpkg -S` per library, which takes ~0.5 s each)."""
    owners = {}
    for path in glob.glob("/var/lib/dpkg/info/*.list"):
        package = os.path.basename(path)[:-len(".list")].split(":")[0]
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                owners.setdefault(line.rstrip("\n"), package)
    return owners


def needed_packages(binaries):
    """Debian packages owning the shared libraries `binaries` load.

    Returns (packages, unowned): libraries under /usr/local/cuda belong to
    the CUDA toolkit (the GPU runtime image ships them) and count as neither.
    """
    owners = dpkg_file_owners()
    pkgs, unowned = {}, []
    libraries = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            m = re.search(r"=>\s*(/\S+)", line)
            if m:
                libraries.add(m.group(1))
            elif "not found" in line:
                unowned.append(line.strip())
    for library in sorted(libraries):
        path = os.path.realpath(library)
        if "/cuda" in path:
            continue
        owner = None
        # usrmerge: dpkg may list /lib/... or /usr/lib/... for the same file.
        for candidate in (library, path):
            for variant in (candidate, re.sub(r"^/usr/", "/", candidate),
                            "/usr" + candidate):
                owner = owner or owners.get(variant)
        if owner is None:
            unowned.append(path)
        else:
            pkgs.setdefault(owner, set()).add(os.path.basename(path))
    return pkgs, unowned


def apt_closure(packages):
    """Packages apt would install for `packages` (Depends/PreDepends)."""
    if not packages:
        return set()
    r = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends",
         "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
         "--no-enhances", "--installed"] + list(packages),
        capture_output=True, text=True)
    names = set()
    for line in r.stdout.splitlines():
        name = line.strip()
        if not line.startswith(" "):
            names.add(name.split(":")[0])
        elif name.startswith(("Depends:", "PreDepends:")):
            dep = name.split(":", 1)[1].strip().strip("<>")
            names.add(dep.split(":")[0])
    return names


def base_image_packages():
    """What debian:12-slim already has: Essential/required packages + apt."""
    r = subprocess.run(["dpkg-query", "-W", "-f",
                        "${Package} ${Essential} ${Priority}\n"],
                       capture_output=True, text=True, check=True)
    base = {"apt"}
    for line in r.stdout.splitlines():
        name, essential, priority = (line.split() + ["", "", ""])[:3]
        if essential == "yes" or priority == "required":
            base.add(name)
    return apt_closure(base) | base


def package_stem(name):
    """libgrpc++1.51t64 -> libgrpc++ : the name without ABI versions."""
    return re.sub(r"[0-9.]+", "", re.sub(r"t64$", "", name))


# Ubuntu 24.04 (noble) names of the Debian 12 runtime packages, checked on
# packages.ubuntu.com. A new dependency fails the check until its noble name
# is looked up and added here (t64 renames make guessing unsafe).
NOBLE_NAMES = {
    "libabsl20220623": "libabsl20220623t64",
    "libcpp-httplib0.11": "libcpp-httplib0.14t64",
    "libgrpc++1.51": "libgrpc++1.51t64",
    "libgrpc29": "libgrpc29t64",
    "libprometheus-cpp-core1.0": "libprometheus-cpp-core1.0",
    "libprotobuf32": "libprotobuf32t64",
}


def check_dockerfile(args):
    c = Checker()
    path = os.path.join(ROOT, "Dockerfile")
    text = open(path, encoding="utf-8").read()
    stages = dockerfile_stages(dockerfile_instructions(text))
    by_name = {s["name"]: s for s in stages}
    flags = server_flags()
    if flags is None:
        print("SKIP server/main.cc does not exist yet")
        return SKIP
    grpc_port = server_default_int(flags, "port")
    metrics_port = server_default_int(flags, "metrics_port")

    c.check(set(by_name) >= {"build", "cpu-build", "cpu", "gpu"},
            "stages build, cpu-build, cpu, gpu exist",
            f"found {sorted(by_name)}")
    c.check(stages and stages[-1]["name"] == "gpu",
            "the default (last) stage is the GPU runtime image",
            f"last stage is {stages[-1]['name'] if stages else None}")
    if not c.check({"build", "cpu-build", "cpu", "gpu"} <= set(by_name),
                   "all four stages parsed"):
        return c.finish()

    c.check(re.fullmatch(r"nvidia/cuda:[\w.]+-devel-ubuntu24\.04",
                         by_name["build"]["base"]) is not None,
            "build stage is a CUDA devel image (Ubuntu 24.04)",
            by_name["build"]["base"])
    c.check(re.fullmatch(r"nvidia/cuda:[\w.]+-runtime-ubuntu24\.04",
                         by_name["gpu"]["base"]) is not None,
            "gpu stage is the matching CUDA runtime image",
            by_name["gpu"]["base"])
    c.check(by_name["build"]["base"].split(":")[1].replace("-devel", "")
            == by_name["gpu"]["base"].split(":")[1].replace("-runtime", ""),
            "devel and runtime images have the same CUDA version and OS")
    for name in ("cpu-build", "cpu"):
        c.check(by_name[name]["base"] == "debian:12-slim",
                f"{name} stage is debian:12-slim", by_name[name]["base"])
    for s in stages:
        c.check(":" in s["base"] and not s["base"].endswith(":latest"),
                f"stage {s['name']} pins its base image tag", s["base"])

    # Build stages: the README's set-up script, build dir outside the source.
    for name, cuda in (("build", "ON"), ("cpu-build", "OFF")):
        runs = " ".join(r for k, r in by_name[name]["ins"] if k == "RUN")
        c.check("./setup.sh build" in runs,
                f"{name} builds with ./setup.sh build (what CI runs)")
        c.check(f"BITNET_CUDA={cuda}" in runs,
                f"{name} sets BITNET_CUDA={cuda} explicitly")
        m = re.search(r"BUILD_DIR=(\S+)", runs)
        c.check(m is not None and not m.group(1).startswith("/src"),
                f"{name} builds outside the copied source tree",
                m.group(1) if m else "no BUILD_DIR")

    for name, build_stage in (("cpu", "cpu-build"), ("gpu", "build")):
        ins = by_name[name]["ins"]
        keywords = [k for k, _ in ins]
        copies = [r for k, r in ins if k == "COPY"]
        c.check(any(f"--from={build_stage} " in r for r in copies),
                f"{name} copies the binaries from {build_stage}")
        c.check(all(not r.startswith(". ") and r != ". ." for r in copies),
                f"{name} copies no source tree (runtime files only)")
        users = [r for k, r in ins if k == "USER"]
        c.check(users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]),
                f"{name} runs as a numeric non-root USER",
                f"USER {users[-1] if users else None}")
        if users:
            last_user = max(i for i, k in enumerate(keywords) if k == "USER")
            c.check(all(k != "RUN" for k in keywords[last_user:]),
                    f"{name}: nothing runs as root after USER")
        exposed = set()
        for k, r in ins:
            if k == "EXPOSE":
                exposed |= {int(p.split("/")[0]) for p in r.split()}
        c.check(exposed == {grpc_port, metrics_port},
                f"{name} EXPOSEs the server's default ports "
                f"(--port {grpc_port}, --metrics_port {metrics_port})",
                f"EXPOSE {sorted(exposed)}")
        vols = [r for k, r in ins if k == "VOLUME"]
        c.check(any("/models" in v for v in vols),
                f"{name} declares the model repository VOLUME /models")
        health = [r for k, r in ins if k == "HEALTHCHECK"]
        hc = exec_form(health[-1].split("CMD", 1)[1].strip()) \
            if health and "CMD" in health[-1] else None
        c.check(hc is not None and hc[0] == "bitnet-cli" and "health" in hc
                and f"--address=127.0.0.1:{grpc_port}" in hc,
                f"{name} HEALTHCHECK runs `bitnet-cli health` (exec form) "
                f"on port {grpc_port}", str(health))
        known = cli_flags()
        if hc is not None and known is not None:
            used = {a[2:].split("=")[0] for a in hc if a.startswith("--")}
            c.check(used <= known,
                    f"{name} HEALTHCHECK uses only real bitnet-cli flags",
                    f"unknown: {sorted(used - known)}")
        entry = [exec_form(r) for k, r in ins if k == "ENTRYPOINT"]
        ep = entry[-1] if entry else None
        c.check(ep is not None and ep[0] == "bitnet-server",
                f"{name} ENTRYPOINT is bitnet-server in exec form "
                "(so SIGTERM reaches the server and drains it)", str(ep))
        if ep:
            used = {a[2:].split("=")[0] for a in ep[1:] if a.startswith("--")}
            c.check(used <= set(flags),
                    f"{name} ENTRYPOINT uses only real server flags",
                    f"unknown: {sorted(used - set(flags))}")
            c.check("--model_repository=/models" in ep,
                    f"{name} ENTRYPOINT points --model_repository at the "
                    "volume")
            c.check(not any(a.startswith("--models") for a in ep),
                    f"{name} serves the demo model by default (no --models)")
        runs = [r for k, r in ins if k == "RUN"]
        for r in runs:
            if "apt-get install" in r:
                c.check("--no-install-recommends" in r,
                        f"{name}: apt-get install --no-install-recommends")
                c.check("rm -rf /var/lib/apt/lists" in r,
                        f"{name}: apt lists removed in the same layer")
    c.check("--device=cpu" in (exec_form(
        [r for k, r in by_name["cpu"]["ins"] if k == "ENTRYPOINT"][-1]) or []),
        "cpu ENTRYPOINT pins --device=cpu")

    # Runtime libraries: computed from the binaries built on this Debian 12
    # machine, the same archive as the cpu stage.
    binaries = [b for b in (args.binary or []) if b]
    missing = [b for b in binaries if not os.path.exists(b)]
    if not binaries or missing:
        print(f"NOTE runtime library check skipped: binaries not built "
              f"({missing or 'none given'})")
        return c.finish()
    needed, unowned = needed_packages(binaries)
    c.check(not unowned, "every loaded library comes from a Debian package",
            str(unowned))
    cpu_pkgs = apt_packages(by_name["cpu"])
    gpu_pkgs = apt_packages(by_name["gpu"])
    base = base_image_packages()
    provided = apt_closure(cpu_pkgs) | set(cpu_pkgs) | base
    for pkg in sorted(needed):
        c.check(pkg in provided,
                f"cpu stage provides {pkg} "
                f"({', '.join(sorted(needed[pkg]))})",
                "add it to the cpu stage's apt-get install")
    # Listed packages must each be needed directly (runtime libraries only).
    for pkg in cpu_pkgs:
        c.check(pkg in needed,
                f"cpu stage package {pkg} is loaded by the binaries",
                "superfluous: nothing loads it")
    for pkg in cpu_pkgs:
        noble = NOBLE_NAMES.get(pkg)
        c.check(noble is not None and noble in gpu_pkgs,
                f"gpu stage lists the noble name of {pkg} ({noble})",
                f"gpu stage has {gpu_pkgs}")
    c.check(sorted(map(package_stem, cpu_pkgs))
            == sorted(map(package_stem, gpu_pkgs)),
            "cpu and gpu stages install the same libraries",
            f"{sorted(cpu_pkgs)} vs {sorted(gpu_pkgs)}")
    return c.finish()


# -------------------------------------------------------------- compose ---

def volume_parts(volume):
    """Compose short volume syntax -> (source, target); the source may hold
    ${VAR:-default}, whose ':' is not a separator."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", str(volume))
    parts = text.split(":")
    if parts[-1] in ("ro", "rw", "z", "Z"):
        parts = parts[:-1]
    return (parts[0], parts[-1]) if len(parts) > 1 else (None, parts[0])


def check_compose(args):
    c = Checker()
    path = os.path.join(DEPLOY, "compose.yaml")
    flags = server_flags()
    if flags is None:
        print("SKIP server/main.cc does not exist yet")
        return SKIP
    grpc_port = server_default_int(flags, "port")
    metrics_port = server_default_int(flags, "metrics_port")

    cmd = args.compose_cmd
    if cmd:
        r = subprocess.run(shlex.split(cmd) + ["-f", path, "--profile", "cpu",
                                               "config", "-q"],
                           capture_output=True, text=True, cwd=DEPLOY)
        c.check(r.returncode == 0, f"`{cmd} config` accepts compose.yaml",
                (r.stderr or r.stdout).strip())
    else:
        print("NOTE no docker-compose / docker compose here: schema check "
              "skipped, structural checks only")

    doc = yaml.safe_load(open(path, encoding="utf-8"))
    services = doc.get("services", {})
    c.check({"bitnet-server", "prometheus", "grafana"} <= set(services),
            "services bitnet-server, prometheus, grafana",
            str(sorted(services)))
    server = services.get("bitnet-server", {})
    cpu = services.get("bitnet-server-cpu", {})
    devices = (server.get("deploy", {}).get("resources", {})
               .get("reservations", {}).get("devices", []))
    c.check(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
                for d in devices),
            "bitnet-server reserves an NVIDIA GPU", str(devices))
    c.check(server.get("build", {}).get("target") == "gpu"
            and cpu.get("build", {}).get("target") == "cpu",
            "servers build the Dockerfile's gpu / cpu targets")
    c.check(cpu.get("profiles") == ["cpu"] and "deploy" not in cpu,
            "bitnet-server-cpu is opt-in (profile cpu) and reserves no GPU")
    c.check("bitnet-server" in (cpu.get("networks", {}).get("default", {})
                                .get("aliases", [])),
            "bitnet-server-cpu answers to the name Prometheus scrapes")

    prom = yaml.safe_load(open(os.path.join(DEPLOY, "prometheus.yml"),
                               encoding="utf-8"))
    targets = [t for sc in prom.get("scrape_configs", [])
               if sc.get("job_name") == "bitnet-server"
               for st in sc.get("static_configs", [])
               for t in st.get("targets", [])]
    for name, svc in (("bitnet-server", server), ("bitnet-server-cpu", cpu)):
        command = svc.get("command", [])
        used = {a[2:].split("=")[0] for a in command if a.startswith("--")}
        c.check(used <= set(flags), f"{name} command uses real server flags",
                f"unknown: {sorted(used - set(flags))}")
        cflags = {a[2:].split("=")[0]: a.partition("=")[2] for a in command}
        port = int(cflags.get("port", grpc_port))
        mport = int(cflags.get("metrics_port", metrics_port))
        published = {str(p).rsplit(":", 1)[-1] for p in svc.get("ports", [])}
        c.check({str(port), str(mport)} <= published,
                f"{name} publishes gRPC {port} and metrics {mport}",
                str(svc.get("ports")))
        c.check(f"bitnet-server:{mport}" in targets,
                f"prometheus.yml scrapes bitnet-server:{mport}", str(targets))
        vols = svc.get("volumes", [])
        c.check(any(volume_parts(v)[1] == "/models" for v in vols),
                f"{name} mounts the model repository at /models", str(vols))
        drain = parse_duration_seconds(cflags.get(
            "drain_grace_period",
            flags["drain_grace_period"].replace("absl::Seconds(", "")
            .rstrip(")") + "s"))
        stop = parse_duration_seconds(str(svc.get("stop_grace_period", "10s")))
        c.check(stop > drain,
                f"{name} stop_grace_period ({stop:g}s) exceeds "
                f"--drain_grace_period ({drain:g}s)")
        test = svc.get("healthcheck", {}).get("test", [])
        c.check(test[:2] == ["CMD", "bitnet-cli"] and "health" in test
                and f"--address=127.0.0.1:{port}" in test,
                f"{name} health check is `bitnet-cli health` on :{port}",
                str(test))
        known = cli_flags()
        if known is not None:
            used = {a[2:].split("=")[0] for a in test if a.startswith("--")}
            c.check(used <= known,
                    f"{name} health check uses only real bitnet-cli flags",
                    f"unknown: {sorted(used - known)}")

    # Bind-mounted files exist (relative to deploy/).
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = volume_parts(v)[0]
            if src.startswith("./"):
                c.check(os.path.exists(os.path.join(DEPLOY, src))
                        or name.startswith("bitnet-server"),
                        f"{name} mounts existing {src}")
        image = svc.get("image", "")
        if not name.startswith("bitnet-server"):
            c.check(":" in image and not image.endswith(":latest"),
                    f"{name} pins its image tag", image)
    return c.finish()


# ------------------------------------------------------------ Kubernetes ---

REQUIRED_KINDS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "PersistentVolumeClaim": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PodDisruptionBudget": "policy/v1",
}


def load_k8s():
    docs = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "k8s", "*.yaml"))):
        for doc in yaml.safe_load_all(open(path, encoding="utf-8")):
            if doc:
                docs.append((os.path.basename(path), doc))
    return docs


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_k8s(args):
    c = Checker()
    flags = server_flags()
    if flags is None:
        print("SKIP server/main.cc does not exist yet")
        return SKIP
    docs = load_k8s()
    kustom = [d for f, d in docs if d.get("kind") == "Kustomization"]
    objs = [(f, d) for f, d in docs if d.get("kind") != "Kustomization"]
    for f, d in objs:
        kind = d.get("kind")
        meta = d.get("metadata", {})
        c.check(kind in REQUIRED_KINDS and
                d.get("apiVersion") == REQUIRED_KINDS[kind],
                f"{f}: {kind} has apiVersion {REQUIRED_KINDS.get(kind)}",
                str(d.get("apiVersion")))
        c.check(bool(meta.get("name")) and re.fullmatch(
            r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta.get("name", "")),
            f"{f}: {kind} has a DNS-1123 metadata.name")
        c.check(kind == "ServiceMonitor" or "spec" in d or "data" in d,
                f"{f}: {kind} has spec or data")
    kinds = {d["kind"] for _, d in objs}
    c.check(set(REQUIRED_KINDS) <= kinds, "every required kind is present",
            f"missing {sorted(set(REQUIRED_KINDS) - kinds)}")

    def one(kind, name=None):
        found = [d for _, d in objs if d["kind"] == kind and
                 (name is None or d["metadata"]["name"] == name)]
        return found

    deps = one("Deployment")
    if not c.check(len(deps) == 1, "exactly one Deployment"):
        return c.finish()
    dep = deps[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    c.check(matches(spec["selector"]["matchLabels"], pod_labels),
            "Deployment selector matches its pod labels")
    containers = pod.get("containers", [])
    ctr = containers[0] if containers else {}
    ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
    c.check({"grpc", "metrics"} <= set(ports),
            "container ports named grpc and metrics", str(ports))
    limits = ctr.get("resources", {}).get("limits", {})
    c.check(int(limits.get("nvidia.com/gpu", 0)) == 1,
            "one nvidia.com/gpu per pod (one server per GPU)", str(limits))
    ru = spec.get("strategy", {}).get("rollingUpdate", {})
    c.check(str(ru.get("maxUnavailable")) == "0",
            "rolling update keeps capacity (maxUnavailable 0)")

    # The flag file from the ConfigMap the pod mounts.
    cargs = ctr.get("args", [])
    ff = [a.split("=", 1)[1] for a in cargs if a.startswith("--flagfile=")]
    c.check(len(ff) == 1, "container passes exactly one --flagfile", str(cargs))
    mounts = {m["name"]: m for m in ctr.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    flagtext = None
    if ff:
        fdir, fkey = os.path.split(ff[0])
        mount = [m for m in mounts.values() if m["mountPath"] == fdir]
        cm_name = (vols.get(mount[0]["name"], {}).get("configMap", {})
                   .get("name")) if mount else None
        cms = one("ConfigMap", cm_name) if cm_name else []
        c.check(bool(cms) and fkey in cms[0].get("data", {}),
                f"--flagfile {ff[0]} is key {fkey} of ConfigMap {cm_name}")
        if cms:
            flagtext = cms[0]["data"].get(fkey)
    fflags = {}
    if flagtext is not None:
        try:
            fflags = parse_flagfile(flagtext)
            c.check(True, "flag file parses")
        except ValueError as e:
            c.check(False, "flag file parses", str(e))
        unknown = set(fflags) - set(flags)
        c.check(not unknown, "flag file uses only real server flags",
                f"unknown: {sorted(unknown)}")
        if args.server and os.path.exists(args.server):
            with tempfile.TemporaryDirectory() as tmp:
                fpath = os.path.join(tmp, "server.flags")
                open(fpath, "w").write(flagtext)
                # --write_demo_model parses every flag and exits without
                # serving: the cheapest way to have the server itself vet
                # the file.
                r = subprocess.run(
                    [args.server, f"--flagfile={fpath}", "--demo_model=small",
                     f"--write_demo_model={os.path.join(tmp, 'm.safetensors')}"],
                    capture_output=True, text=True, timeout=60)
                c.check(r.returncode == 0,
                        "bitnet-server accepts the ConfigMap's flag file",
                        (r.stderr or r.stdout).strip()[-400:])
        else:
            print("NOTE bitnet-server not built: flag file not run through it")
    grpc_port = int(fflags.get("port", server_default_int(flags, "port")))
    metrics_port = int(fflags.get("metrics_port",
                                  server_default_int(flags, "metrics_port")))
    c.check(ports.get("grpc") == grpc_port,
            f"containerPort grpc = --port ({grpc_port})", str(ports))
    c.check(ports.get("metrics") == metrics_port,
            f"containerPort metrics = --metrics_port ({metrics_port})")
    repo = fflags.get("model_repository", "/models")
    models_mount = [m for m in mounts.values() if m["mountPath"] == repo]
    claim = (vols.get(models_mount[0]["name"], {})
             .get("persistentVolumeClaim", {}).get("claimName")
             if models_mount else None)
    c.check(bool(claim) and bool(one("PersistentVolumeClaim", claim)),
            f"--model_repository {repo} is a mounted PersistentVolumeClaim "
            f"defined here ({claim})")

    # Probes: gRPC health on the gRPC port; service "" or a served model.
    model_names = {"demo"}
    if fflags.get("models"):
        model_names = {e.split("=")[0] for e in fflags["models"].split(",")}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = ctr.get(probe, {})
        g = p.get("grpc")
        c.check(g is not None and g.get("port") == grpc_port,
                f"{probe} is a grpc probe on port {grpc_port}", str(p))
        if g is not None:
            c.check(g.get("service", "") in {""} | model_names,
                    f"{probe} checks health service \"\" or a served model",
                    repr(g.get("service")))
    sp = ctr.get("startupProbe", {})
    c.check(sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) >= 120,
            "startupProbe allows >= 120 s for the model load")

    # Shutdown: preStop sleep + drain grace period fit in the grace period.
    drain = parse_duration_seconds(fflags.get("drain_grace_period", "30s"))
    pre = (ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {})
           .get("command", []))
    sleep = float(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else None
    c.check(sleep is not None and sleep > 0, "preStop sleeps before SIGTERM",
            str(pre))
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    c.check(sleep is not None and tgps >= sleep + drain + 1,
            f"terminationGracePeriodSeconds ({tgps}) >= preStop ({sleep}) + "
            f"--drain_grace_period ({drain:g}) + margin")
    lp = ctr.get("livenessProbe", {})
    c.check(sleep is not None and
            lp.get("periodSeconds", 10) * lp.get("failureThreshold", 3)
            >= sleep + drain,
            "livenessProbe cannot kill a draining server "
            "(period x failureThreshold >= preStop + drain)")

    sc = pod.get("securityContext", {})
    docker_user = None
    dtext = open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8").read()
    m = re.findall(r"^USER\s+(\d+)", dtext, re.M)
    if m:
        docker_user = int(m[-1])
    c.check(sc.get("runAsNonRoot") is True and
            sc.get("runAsUser") == docker_user,
            f"pod runs as non-root user {docker_user} (the image's USER)",
            str(sc))

    # Services.
    svcs = one("Service")
    headless = [s for s in svcs if s["spec"].get("clusterIP") == "None"]
    normal = [s for s in svcs if s["spec"].get("clusterIP") != "None"]
    c.check(len(headless) == 1 and len(normal) == 1,
            "one ClusterIP and one headless Service")
    for s in svcs:
        name = s["metadata"]["name"]
        c.check(matches(s["spec"]["selector"], pod_labels),
                f"Service {name} selects the Deployment's pods")
        for p in s["spec"].get("ports", []):
            tp = p.get("targetPort")
            target = ports.get(tp) if isinstance(tp, str) else tp
            c.check(target in ports.values(),
                    f"Service {name} port {p.get('name')} targets a "
                    f"container port", str(tp))
        c.check(any(p.get("targetPort") in ("grpc", grpc_port)
                    for p in s["spec"].get("ports", [])),
                f"Service {name} exposes gRPC")

    # ServiceMonitor: exactly one Service, and a port it has.
    for sm in one("ServiceMonitor"):
        sel = sm["spec"]["selector"].get("matchLabels", {})
        chosen = [s for s in svcs if matches(sel, s["metadata"].get("labels",
                                                                     {}))]
        c.check(len(chosen) == 1,
                "ServiceMonitor selects exactly one Service (no double "
                "scrapes)", str([s["metadata"]["name"] for s in chosen]))
        for ep in sm["spec"].get("endpoints", []):
            names = [p.get("name") for s in chosen
                     for p in s["spec"].get("ports", [])]
            c.check(ep.get("port") in names and
                    ep.get("path", "/metrics") == "/metrics",
                    f"ServiceMonitor scrapes port {ep.get('port')} /metrics")
            if chosen:
                sp_ = [p for p in chosen[0]["spec"]["ports"]
                       if p.get("name") == ep.get("port")]
                c.check(bool(sp_) and sp_[0]["targetPort"] in
                        ("metrics", metrics_port),
                        "the scraped port is the metrics port")

    # HPA on a fixed queue metric, exposed by the adapter rules.
    adapter = " ".join(d["data"]["config.yaml"] for f, d in objs
                       if f == "prometheus-adapter.yaml")
    adapter_rules = yaml.safe_load(adapter).get("rules", []) if adapter \
        else []
    exposed = {r["name"]["as"] for r in adapter_rules}
    for hpa in one("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        c.check(ref.get("kind") == "Deployment" and
                ref.get("name") == dep["metadata"]["name"],
                "HPA scales the Deployment")
        lo, hi = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        c.check(1 <= lo <= spec.get("replicas", 1) <= hi,
                f"HPA bounds {lo}..{hi} contain replicas "
                f"{spec.get('replicas')}")
        for metric in hpa["spec"].get("metrics", []):
            name = metric.get(metric.get("type", "").lower(), {}) \
                .get("metric", {}).get("name")
            c.check(metric.get("type") in ("Pods", "Object", "External") and
                    name in exposed,
                    f"HPA metric {name} is a custom metric the adapter "
                    f"rules expose", str(sorted(exposed)))
    for r in adapter_rules:
        used = promql_metric_names(r["seriesQuery"]) | promql_metric_names(
            r["metricsQuery"].replace("<<.Series>>", r["seriesQuery"]
                                      .split("{")[0]))
        c.check(used <= SERIES_NAMES,
                f"adapter rule {r['name']['as']} uses fixed metric names",
                str(used))
    for pdb in one("PodDisruptionBudget"):
        c.check(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels),
                "PodDisruptionBudget selects the pods")

    # Kustomization lists every manifest except the adapter's.
    files = {os.path.basename(p) for p in
             glob.glob(os.path.join(DEPLOY, "k8s", "*.yaml"))}
    if kustom:
        listed = set(kustom[0].get("resources", []))
        c.check(listed == files - {"kustomization.yaml",
                                   "prometheus-adapter.yaml"},
                "kustomization.yaml lists every manifest",
                f"{sorted(listed)} vs {sorted(files)}")
    kubectl = shutil.which("kubectl")
    if kubectl:
        r = subprocess.run([kubectl, "kustomize",
                            os.path.join(DEPLOY, "k8s")],
                           capture_output=True, text=True)
        c.check(r.returncode == 0, "`kubectl kustomize deploy/k8s` builds",
                r.stderr.strip())
    return c.finish()


# --------------------------------------------------------------- Grafana ---

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "group", "by", "without", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv",
    "histogram_quantile", "max_over_time", "min_over_time", "avg_over_time",
    "sum_over_time", "count_over_time", "last_over_time", "abs", "clamp_min",
    "clamp_max", "label_replace", "label_join", "vector", "scalar", "time",
    "absent", "round", "ceil", "floor", "sort", "sort_desc", "le",
}


def promql_metric_names(expr):
    """Metric names an expression selects (no full parser: strings, label
    matchers, ranges, grouping clauses and Grafana variables removed, then
    identifiers that are not PromQL words are metric names)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*"
               r"\([^)]*\)", " ", e)
    e = re.sub(r"\$\w+", " ", e)
    e = re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b", " ", e)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e))
    return {n for n in names if n not in PROMQL_WORDS}


def dashboard_queries(dash):
    """(panel title, expr) for every query of every panel, rows included."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", ""), t["expr"]))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    return out


def check_grafana(args):
    c = Checker()
    gdir = os.path.join(DEPLOY, "grafana")
    ds_files = glob.glob(os.path.join(gdir, "provisioning", "datasources",
                                      "*.yaml"))
    uids = set()
    for f in ds_files:
        doc = yaml.safe_load(open(f, encoding="utf-8"))
        for ds in doc.get("datasources", []):
            c.check(ds.get("type") == "prometheus" and
                    ds.get("url") == "http://prometheus:9090",
                    f"datasource {ds.get('name')} is the compose Prometheus")
            uids.add(ds.get("uid"))
    c.check(bool(uids), "a Prometheus datasource is provisioned")
    providers = []
    for f in glob.glob(os.path.join(gdir, "provisioning", "dashboards",
                                    "*.yaml")):
        providers += yaml.safe_load(open(f, encoding="utf-8")).get(
            "providers", [])
    c.check(any(p.get("options", {}).get("path") ==
                "/var/lib/grafana/dashboards" for p in providers),
            "a dashboard provider loads /var/lib/grafana/dashboards "
            "(compose mounts deploy/grafana/dashboards there)")
    dashboards = sorted(glob.glob(os.path.join(gdir, "dashboards", "*.json")))
    c.check(bool(dashboards), "dashboard JSON files exist")
    for f in dashboards:
        name = os.path.basename(f)
        try:
            dash = json.load(open(f, encoding="utf-8"))
        except ValueError as e:
            c.check(False, f"{name} is valid JSON", str(e))
            continue
        c.check(bool(dash.get("uid")) and bool(dash.get("title")),
                f"{name} has uid and title")
        ids = []

        def walk(panels):
            for p in panels:
                ids.append(p.get("id"))
                ds = p.get("datasource", {})
                if p.get("type") != "row":
                    c.check(isinstance(ds, dict) and ds.get("uid") in uids,
                            f"{name}: panel '{p.get('title')}' uses the "
                            "provisioned datasource", str(ds))
                walk(p.get("panels", []))
        walk(dash.get("panels", []))
        c.check(len(ids) == len(set(ids)), f"{name}: panel ids are unique")
        queries = dashboard_queries(dash)
        for title, expr in queries:
            used = promql_metric_names(expr)
            c.check(used and used <= SERIES_NAMES,
                    f"{name}: '{title}' uses fixed metric names "
                    f"({', '.join(sorted(used))})",
                    f"unknown: {sorted(used - SERIES_NAMES)}")
            c.check(expr.count("(") == expr.count(")") and
                    expr.count("{") == expr.count("}"),
                    f"{name}: '{title}' brackets balance")
        for var in dash.get("templating", {}).get("list", []):
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q or "")
            c.check(m is not None and m.group(1) in SERIES_NAMES,
                    f"{name}: variable ${var.get('name')} reads labels of a "
                    "fixed metric", str(q))
        required = {
            "request rate": r"rate\(bitnet_requests_total",
            "p50 latency": r"histogram_quantile\(0\.5,.*"
                           r"bitnet_request_duration_seconds_bucket",
            "p99 latency": r"histogram_quantile\(0\.99,.*"
                           r"bitnet_request_duration_seconds_bucket",
            "batch rows": r"bitnet_batch_rows_",
            "queue rows": r"bitnet_queue_rows",
            "GPU memory": r"bitnet_device_memory_used_bytes\{device=~\"cuda",
            "fine-tune loss": r"bitnet_finetune_loss",
        }
        for what, pattern in required.items():
            c.check(any(re.search(pattern, e) for _, e in queries),
                    f"{name} shows {what}")
    # Recording/alerting rules use fixed names too.
    rules = yaml.safe_load(open(os.path.join(DEPLOY, "rules.yml"),
                                encoding="utf-8"))
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"]
                if "record" in r}
    for g in rules["groups"]:
        for r in g["rules"]:
            used = promql_metric_names(r["expr"])
            c.check(used <= SERIES_NAMES | recorded,
                    f"rules.yml {r.get('record') or r.get('alert')} uses "
                    "fixed metric names", str(used - SERIES_NAMES))
    return c.finish()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("dockerfile")
    p.add_argument("--binary", action="append",
                   help="a built binary the runtime stages must be able to "
                        "run (repeatable)")
    p = sub.add_parser("compose")
    p.add_argument("--compose-cmd", default="",
                   help="docker-compose or 'docker compose' (empty: skip the "
                        "schema check)")
    p = sub.add_parser("k8s")
    p.add_argument("--server", default="",
                   help="bitnet-server binary to vet the flag file with")
    sub.add_parser("grafana")
    args = parser.parse_args()
    return {"dockerfile": check_dockerfile, "compose": check_compose,
            "k8s": check_k8s, "grafana": check_grafana}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
