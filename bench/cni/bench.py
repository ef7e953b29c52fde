#!/usr/bin/env python3
"""Timing harness for bench/cni/run; runs inside the benchmark's node network namespace.

Each iteration creates a fresh pod namespace (untimed), then times ADD and DEL of
`flannel` and of `bridge` called directly with the same delegate config, alternating
which goes first so drift hits both equally. Plugins are run the way a runtime runs them:
fork+exec with the CNI environment and the config on stdin.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

p = argparse.ArgumentParser()
p.add_argument("--plugin", required=True)
p.add_argument("--work", required=True)
p.add_argument("--prefix", required=True)
p.add_argument("--iterations", type=int, default=200)
a = p.parse_args()

ipam_dir = os.path.join(a.work, "ipam")
flannel_conf = json.dumps({
    "cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
    "subnetFile": os.path.join(a.work, "subnet.env"),
    "dataDir": os.path.join(a.work, "flannel"),
    "ipam": {"dataDir": ipam_dir},
    "delegate": {"hairpinMode": True, "isDefaultGateway": True},
}).encode()
# Exactly what flannel sends to bridge for that netconf (checked below against its saved file).
bridge_conf = json.dumps({
    "cniVersion": "1.0.0", "hairpinMode": True, "ipMasq": False,
    "ipam": {"dataDir": ipam_dir, "ranges": [[{"subnet": "10.244.1.0/24"}]],
             "routes": [{"dst": "10.244.0.0/16"}], "type": "host-local"},
    "isDefaultGateway": True, "isGateway": True, "mtu": 1450, "name": "cbr0", "type": "bridge",
}, separators=(",", ":"), sort_keys=True).encode()


def call(binary, command, cid, netns, conf, cni_path="/usr/lib/cni"):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
           "CNI_PATH": cni_path}
    t0 = time.perf_counter_ns()
    r = subprocess.run([binary], input=conf, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    dt = (time.perf_counter_ns() - t0) / 1e6
    if r.returncode != 0:
        raise SystemExit(f"{binary} {command} failed: {r.stdout!r} {r.stderr!r}")
    return dt


def pod(i):
    name = f"{a.prefix}-pod{i}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name, f"/run/netns/{name}"


times = {k: [] for k in ("flannel ADD", "flannel DEL", "bridge ADD", "bridge DEL")}
warmup = 5
checked = False
for i in range(a.iterations + warmup):
    order = [("flannel", a.plugin, flannel_conf), ("bridge", "/usr/lib/cni/bridge", bridge_conf)]
    if i % 2:
        order.reverse()
    for label, binary, conf in order:
        name, path = pod(f"{i}{label[0]}")
        cid = f"bench-{label}-{i}"
        add = call(binary, "ADD", cid, path, conf)
        if label == "flannel" and not checked:
            saved = open(os.path.join(a.work, "flannel", cid), "rb").read()
            assert saved == bridge_conf, (saved, bridge_conf)
            checked = True
        dele = call(binary, "DEL", cid, path, conf)
        subprocess.run(["ip", "netns", "del", name], check=True)
        if i >= warmup:
            times[f"{label} ADD"].append(add)
            times[f"{label} DEL"].append(dele)

# The plugin's own cost without the bridge's noise: flannel in front of a no-op delegate
# (a static answer, no kernel work) versus that delegate alone.
noop_dir = os.path.join(a.work, "noop")
os.makedirs(noop_dir, exist_ok=True)
noop = os.path.join(noop_dir, "bridge")
with open(noop, "w") as f:
    f.write('#!/bin/sh\ncat >/dev/null\necho \'{"cniVersion":"1.0.0"}\'\n')
os.chmod(noop, 0o755)
for i in range(a.iterations + warmup):
    order = [("flannel+noop", a.plugin, flannel_conf), ("noop", noop, bridge_conf)]
    if i % 2:
        order.reverse()
    for label, binary, conf in order:
        cid = f"noop-{label.replace('+', '-')}-{i}"
        add = call(binary, "ADD", cid, "/run/netns/none", conf, noop_dir)
        dele = call(binary, "DEL", cid, "/run/netns/none", conf, noop_dir)
        if i >= warmup:
            times.setdefault(f"{label} ADD", []).append(add)
            times.setdefault(f"{label} DEL", []).append(dele)

startup = {}
for label, argv, env in (
    ("flannel VERSION (startup)", [a.plugin], {"CNI_COMMAND": "VERSION"}),
    ("/bin/true (exec baseline)", ["/bin/true"], {}),
):
    samples = []
    for _ in range(a.iterations + warmup):
        t0 = time.perf_counter_ns()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    startup[label] = samples[warmup:]


def row(label, s):
    q = statistics.quantiles(s, n=10)
    print(f"{label:<28} {statistics.median(s):>9.2f} {q[0]:>9.2f} {q[8]:>9.2f} {len(s):>6}")


print(f"{'ms per call':<28} {'median':>9} {'p10':>9} {'p90':>9} {'n':>6}")
for k, v in times.items():
    row(k, v)
for k, v in startup.items():
    row(k, v)
add_over = statistics.median(times["flannel ADD"]) - statistics.median(times["bridge ADD"])
del_over = statistics.median(times["flannel DEL"]) - statistics.median(times["bridge DEL"])
print(f"\nflannel vs bridge (median difference): ADD {add_over:+.2f} ms, DEL {del_over:+.2f} ms")
m = statistics.median
print(f"flannel's own overhead (flannel+noop - noop): "
      f"ADD {m(times['flannel+noop ADD']) - m(times['noop ADD']):+.2f} ms, "
      f"DEL {m(times['flannel+noop DEL']) - m(times['noop DEL']):+.2f} ms  (target < 1 ms)")
