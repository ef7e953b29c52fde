#!/usr/bin/env python3
"""Timing harness for bench/cni/run; runs inside the benchmark's node network namespace.

Each iteration creates a fresh pod namespace (untimed), then times ADD and DEL of
`flannel` and of `bridge` called directly with the same delegate config, alternating
which goes first so drift hits both equally. Plugins are run the way a runtime runs them:
fork+exec with the CNI environment and the config on stdin.

Besides wall-clock time, each call's CPU time (user + system of the plugin and everything it
ran, from the kernel's accounting of waited-for children) is recorded: on a machine that is
busy with other work, wall-clock medians mostly measure the wait for a CPU, CPU time does not.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import time

p = argparse.ArgumentParser()
p.add_argument("--plugin", required=True, help="the flannel binary measured (as shipped)")
p.add_argument("--compare", action="append", default=[], metavar="LABEL=PATH",
               help="another flannel build measured in the no-op section (e.g. dynamic=...)")
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

wall = {}
cpu = {}


def children_cpu_ms():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * 1000


def timed(label, argv, env, stdin=None):
    """Runs argv once; records wall-clock and CPU milliseconds under label."""
    c0 = children_cpu_ms()
    t0 = time.perf_counter_ns()
    r = subprocess.run(argv, input=stdin, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    dt = (time.perf_counter_ns() - t0) / 1e6
    if r.returncode != 0:
        raise SystemExit(f"{label} failed: {r.stdout!r} {r.stderr!r}")
    return dt, children_cpu_ms() - c0


def call(binary, command, cid, netns, conf, cni_path="/usr/lib/cni"):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
           "CNI_PATH": cni_path}
    return timed(f"{binary} {command}", [binary], env, conf)


def record(label, sample, keep):
    if keep:
        wall.setdefault(label, []).append(sample[0])
        cpu.setdefault(label, []).append(sample[1])


def pod(i):
    name = f"{a.prefix}-pod{i}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name, f"/run/netns/{name}"


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
        record(f"{label} ADD", add, i >= warmup)
        record(f"{label} DEL", dele, i >= warmup)

# The plugin's own cost without the bridge's noise: flannel in front of a no-op delegate
# (a static answer, no kernel work) versus that delegate alone. CNI_NETNS names a real
# namespace (created once, untimed), so flannel's own-namespace check runs as on a real ADD.
noop_dir = os.path.join(a.work, "noop")
os.makedirs(noop_dir, exist_ok=True)
noop = os.path.join(noop_dir, "bridge")
with open(noop, "w") as f:
    f.write('#!/bin/sh\ncat >/dev/null\necho \'{"cniVersion":"1.0.0"}\'\n')
os.chmod(noop, 0o755)
_, noop_netns = pod("noop")
flannels = [("flannel+noop", a.plugin)] + [
    (f"flannel[{c.split('=', 1)[0]}]+noop", c.split("=", 1)[1]) for c in a.compare]
for i in range(a.iterations + warmup):
    order = [("noop", noop, bridge_conf)] + [(label, b, flannel_conf) for label, b in flannels]
    if i % 2:
        order.reverse()
    for label, binary, conf in order:
        cid = f"noop-{label.replace('+', '-').replace('[', '-').replace(']', '')}-{i}"
        add = call(binary, "ADD", cid, noop_netns, conf, noop_dir)
        dele = call(binary, "DEL", cid, noop_netns, conf, noop_dir)
        record(f"{label} ADD", add, i >= warmup)
        record(f"{label} DEL", dele, i >= warmup)

startup = [("flannel VERSION (startup)", a.plugin)] + [
    (f"flannel[{c.split('=', 1)[0]}] VERSION", c.split("=", 1)[1]) for c in a.compare]
for i in range(a.iterations + warmup):
    for label, argv, env in [(label, [b], {"CNI_COMMAND": "VERSION"}) for label, b in startup] + [
            ("/bin/true (exec baseline)", ["/bin/true"], {})]:
        record(label, timed(label, argv, env), i >= warmup)


def row(label):
    s = wall[label]
    q = statistics.quantiles(s, n=10)
    print(f"{label:<30} {statistics.median(s):>8.2f} {q[0]:>8.2f} {q[8]:>8.2f} "
          f"{statistics.mean(cpu[label]):>8.2f} {len(s):>5}")


print(f"{'ms per call':<30} {'median':>8} {'p10':>8} {'p90':>8} {'cpu':>8} {'n':>5}")
for label in wall:
    row(label)
m = statistics.median
add_over = m(wall["flannel ADD"]) - m(wall["bridge ADD"])
del_over = m(wall["flannel DEL"]) - m(wall["bridge DEL"])
print(f"\nflannel vs bridge (median difference): ADD {add_over:+.2f} ms, DEL {del_over:+.2f} ms")


def overhead(label):
    return (f"ADD {m(wall[f'{label} ADD']) - m(wall['noop ADD']):+.2f} ms, "
            f"DEL {m(wall[f'{label} DEL']) - m(wall['noop DEL']):+.2f} ms; CPU time "
            f"ADD {statistics.mean(cpu[f'{label} ADD']) - statistics.mean(cpu['noop ADD']):+.2f} ms, "
            f"DEL {statistics.mean(cpu[f'{label} DEL']) - statistics.mean(cpu['noop DEL']):+.2f} ms")


print(f"flannel's own overhead (flannel+noop - noop, target < 1 ms): {overhead('flannel+noop')}")
for label, _ in flannels[1:]:
    print(f"  the same for {label[:-len('+noop')]}: {overhead(label)}")
print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
