#!/usr/bin/env python3
"""Creates the services benchmark's Services (and EndpointSlices) in a lab, through the
lab API server's unix socket, several requests in flight.

    svc_load.py --socket S --namespace NS --first I --count C [options]

creates Services `svc-<i>` for i in [I, I + C), each with one TCP port `http` (port
--port, targetPort --target-port), or with --ports K, K TCP ports `p0`..`p<K-1>` (ports
--port .. --port + K - 1, all to --target-port); ClusterIP allocated by the API server.

- `--selector app=server`: Services with that selector; the lab's EndpointSlice
  controller writes their slices.
- `--endpoints K`: selector-less Services, each with one EndpointSlice written here,
  listing K endpoints: addresses counting up from --endpoint-base (all ready), port
  --target-port; each Service gets the next K addresses, or with --same-endpoints the
  same K. What a controller (or a user) writes for a Service without selector.

Prints one JSON object: created counts, errors (the first few, verbatim), elapsed seconds,
and the name, ClusterIP and last port of the last Service (the highest index).
Only ever talks to the socket it is given: it changes nothing else.
"""

import argparse
import http.client
import ipaddress
import json
import socket
import sys
import threading
import time


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=120):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def port_name(args, k):
    return "http" if args.ports == 1 else f"p{k}"


def service(args, i):
    spec = {
        "type": "ClusterIP",
        "ports": [
            {"name": port_name(args, k), "protocol": "TCP", "port": args.port + k, "targetPort": args.target_port}
            for k in range(args.ports)
        ],
    }
    if args.selector:
        k, _, v = args.selector.partition("=")
        spec["selector"] = {k: v}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": args.namespace, "labels": {"bench": "svc"}},
        "spec": spec,
    }


def slice_for(args, i):
    base = int(args.endpoint_base) + (0 if args.same_endpoints else i * args.endpoints)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{i}-bench",
            "namespace": args.namespace,
            "labels": {"kubernetes.io/service-name": f"svc-{i}", "bench": "svc"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [str(ipaddress.IPv4Address(base + k))], "conditions": {"ready": True}}
            for k in range(args.endpoints)
        ],
        "ports": [
            {"name": port_name(args, k), "protocol": "TCP", "port": args.target_port} for k in range(args.ports)
        ],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--first", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--ports", type=int, default=1, help="ports per Service: --port, --port + 1, ...")
    ap.add_argument("--target-port", type=int, default=8080)
    ap.add_argument("--selector", help="KEY=VALUE")
    ap.add_argument("--endpoints", type=int, default=0, help="selector-less, K endpoints each")
    ap.add_argument("--endpoint-base", type=ipaddress.IPv4Address, default=ipaddress.IPv4Address("10.244.128.1"))
    ap.add_argument(
        "--same-endpoints",
        action="store_true",
        help="every slice lists the same endpoints, from --endpoint-base (default: each Service its own)",
    )
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    if args.selector and args.endpoints:
        ap.error("--selector and --endpoints exclude each other")
    if args.selector and "=" not in args.selector:
        ap.error("--selector: expected KEY=VALUE")
    if args.count < 0 or args.first < 0:
        ap.error("--first and --count: must not be negative")
    if not 1 <= args.ports or args.port + args.ports - 1 > 65535:
        ap.error("--ports: at least 1, and --port + --ports - 1 at most 65535")

    lock = threading.Lock()
    todo = list(range(args.first, args.first + args.count))
    todo.reverse()  # pop() from the end: lowest index first
    res = {"services": 0, "slices": 0, "errors": 0, "first_errors": [], "cluster_ips": {}}

    def post(conn, path, body):
        data = json.dumps(body).encode()
        for attempt in range(5):
            try:
                conn.request("POST", path, data, {"Content-Type": "application/json"})
                r = conn.getresponse()
                text = r.read()
                return r.status, text
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if attempt == 4:
                    return 0, str(e).encode()
                time.sleep(0.2)
        return 0, b"unreachable"

    def fail(what, status, text):
        with lock:
            res["errors"] += 1
            if len(res["first_errors"]) < 5:
                res["first_errors"].append(f"{what}: HTTP {status}: {text[:300].decode(errors='replace')}")

    def worker():
        conn = UnixHTTPConnection(args.socket)
        while True:
            with lock:
                if not todo:
                    break
                i = todo.pop()
            status, text = post(conn, f"/api/v1/namespaces/{args.namespace}/services", service(args, i))
            if status != 201:
                fail(f"Service svc-{i}", status, text)
                continue
            ip = json.loads(text)["spec"].get("clusterIP")
            with lock:
                res["services"] += 1
                if i == args.first + args.count - 1:
                    res["cluster_ips"][f"svc-{i}"] = ip
            if args.endpoints:
                status, text = post(
                    conn,
                    f"/apis/discovery.k8s.io/v1/namespaces/{args.namespace}/endpointslices",
                    slice_for(args, i),
                )
                if status != 201:
                    fail(f"EndpointSlice svc-{i}-bench", status, text)
                    continue
                with lock:
                    res["slices"] += 1
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(max(1, args.workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res["elapsed_s"] = round(time.monotonic() - t0, 3)
    last = f"svc-{args.first + args.count - 1}"
    res["last"] = {"name": last, "clusterIP": res.pop("cluster_ips").get(last), "port": args.port + args.ports - 1}
    json.dump(res, sys.stdout)
    print()
    return 0 if res["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
