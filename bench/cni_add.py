#!/usr/bin/env python3
"""Times CNI ADD and DEL of a node's own network config, as a container runtime runs it.

Run inside the node's network namespace (`fibril lab exec --node NODE -- python3 ...`), where
the lab kubelet runs its plugins:

    cni_add.py add --conf-dir D --cni-path P --state S --id-prefix X NETNS_PATH...
    cni_add.py del --conf-dir D --cni-path P --state S

`add` gives each scratch network namespace (created beforehand by the caller in the root
mount namespace, so that a node agent can open its path too) one attachment, one after the
other, and does for each what libcni does for one pod:

- loads the first valid config of the conf dir (`*.conflist`, `*.conf`, `*.json`, sorted);
- runs each plugin's binary, found on the CNI path, with CNI_COMMAND=ADD, the spec's CNI_*
  variables and the plugin's config on stdin (`name`, `cniVersion` and the previous
  plugin's result as `prevResult` injected), chaining the results.

The time of one ADD is the wall time of the whole chain for one attachment, the plugin
processes' start-up included, as a runtime pays for it. The attachments and their results
are appended to the state file (JSON lines), so that several `add` calls build up many
attachments on the node (like that many pods), and `del` then deletes them all (DEL in
reverse plugin order, the ADD result as prevResult), timing each.

Prints one JSON object: {"conf", "plugins", "add_ms" | "del_ms": [...], "errors": [...]}.
"""

import argparse
import json
import os
import subprocess
import sys
import time

EXTENSIONS = (".conflist", ".conf", ".json")


def load_network(conf_dir):
    problems = []
    for name in sorted(os.listdir(conf_dir)):
        path = os.path.join(conf_dir, name)
        if not name.endswith(EXTENSIONS) or os.path.isdir(path):
            continue
        try:
            with open(path) as f:
                conf = json.load(f)
        except (OSError, ValueError) as e:
            problems.append(f"{path}: {e}")
            continue
        if "plugins" not in conf:  # a single-plugin .conf, wrapped as libcni does
            conf = {"cniVersion": conf.get("cniVersion"), "name": conf.get("name"), "plugins": [conf]}
        if conf.get("plugins"):
            return path, conf
        problems.append(f"{path}: no plugins")
    sys.exit(f"no usable CNI config in {conf_dir}: {problems}")


def find_plugin(kind, cni_path):
    for d in cni_path.split(":"):
        p = os.path.join(d, kind)
        if os.access(p, os.X_OK):
            return p
    sys.exit(f"CNI plugin {kind!r} not found on {cni_path}")


def invoke(binary, plugin, net, command, env, prev):
    conf = dict(plugin)
    conf["name"] = net["name"]
    conf["cniVersion"] = net["cniVersion"]
    if prev is not None:
        conf["prevResult"] = prev
    p = subprocess.run(
        [binary], input=json.dumps(conf).encode(), env=dict(env, CNI_COMMAND=command),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
    )
    if p.returncode != 0:
        raise RuntimeError(f"{plugin['type']} {command} exited {p.returncode}: "
                           f"{p.stdout.decode().strip()} {p.stderr.decode().strip()}")
    out = p.stdout.decode().strip()
    return json.loads(out) if out else prev


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["add", "del"])
    ap.add_argument("--conf-dir", required=True)
    ap.add_argument("--cni-path", required=True)
    ap.add_argument("--state", required=True, help="JSON lines: one attachment each")
    ap.add_argument("--id-prefix", default="bench", help="container ids are <prefix><n>")
    ap.add_argument("netns", nargs="*", help="add: scratch netns paths, one per attachment")
    a = ap.parse_intermixed_args()

    path, net = load_network(a.conf_dir)
    plugins = [(find_plugin(p["type"], a.cni_path), p) for p in net["plugins"]]
    base = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    base["CNI_PATH"] = a.cni_path
    base["CNI_IFNAME"] = "eth0"
    times, errors = [], []

    if a.command == "add":
        with open(a.state, "a") as state:
            for ns in a.netns:
                cid = f"{a.id_prefix}{os.path.basename(ns)}"
                env = dict(base, CNI_CONTAINERID=cid, CNI_NETNS=ns,
                           CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;"
                                    f"K8S_POD_NAME={os.path.basename(ns)};"
                                    f"K8S_POD_INFRA_CONTAINER_ID={cid}")
                prev = None
                t0 = time.perf_counter()
                try:
                    for binary, plugin in plugins:
                        prev = invoke(binary, plugin, net, "ADD", env, prev)
                    times.append((time.perf_counter() - t0) * 1000.0)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                    errors.append(f"ADD {cid}: {e}")
                # Kept also after a failure: DEL cleans up what may have been set up.
                state.write(json.dumps({"env": env, "result": prev}) + "\n")
    else:
        with open(a.state) as state:
            attachments = [json.loads(line) for line in state if line.strip()]
        for att in attachments:
            t0 = time.perf_counter()
            try:
                for binary, plugin in reversed(plugins):
                    invoke(binary, plugin, net, "DEL", att["env"], att["result"])
                times.append((time.perf_counter() - t0) * 1000.0)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                errors.append(f"DEL {att['env']['CNI_CONTAINERID']}: {e}")

    json.dump({"conf": path, "plugins": [p["type"] for _, p in plugins],
               f"{a.command}_ms": times, "errors": errors}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
