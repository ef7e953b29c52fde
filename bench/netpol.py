"""NetworkPolicy benchmark, run by bench/netpol inside a lab's underlay namespace (where the API
emulator listens). Everything it starts is bounded in time; the wrapper
tears the lab down."""

import argparse, http.client, json, os, re, signal, statistics, subprocess, sys, threading, time

A = argparse.ArgumentParser()
A.add_argument("--state", required=True)
A.add_argument("--bins", required=True)
A.add_argument("--pods", type=int, default=1000)
A.add_argument("--policies", type=int, default=500)
A.add_argument("--changes", type=int, default=50)
A.add_argument("--updates", type=int, default=100)
A.add_argument("--iperf-secs", type=int, default=5)
ARGS = A.parse_args()
ST = json.load(open(os.path.join(ARGS.state, "state.json")))
URL = re.match(r"http://([^:/]+):(\d+)", ST["endpoint"])
LAB = ST["lab_dir"]
NODE_NS = {n["name"]: n["netns"] for n in ST["nodes"]}
PODS = {p["name"]: p for p in ST["pods"]}
APPS, NSS = 50, 10


def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


def api(method, path, body=None, ctype="application/json"):
    c = http.client.HTTPConnection(URL[1], int(URL[2]), timeout=30)
    c.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": ctype})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
    return json.loads(data)


def fnv(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def pid(ns, name):
    return "p%012x" % (fnv(f"{ns}/{name}") >> 16)


def sh(*cmd, timeout=60, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def in_node(*cmd, timeout=60):
    return sh("ip", "netns", "exec", NODE_NS["n1"], *cmd, timeout=timeout)


def fake_ip(i):
    return f"10.{250 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}"


def make_pods(node, first, count):
    for i in range(first, first + count):
        ns, app = f"ns{i % NSS}", f"app{i % APPS}"
        ports = [{"name": f"serve-{p}-tcp", "containerPort": p, "protocol": "TCP"} for p in (80, 81)]
        api("POST", f"/api/v1/namespaces/{ns}/pods", {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"f{i}", "namespace": ns, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "ports": ports}]}})
        api("PATCH", f"/api/v1/namespaces/{ns}/pods/f{i}/status",
            {"status": {"phase": "Running", "podIP": fake_ip(i), "podIPs": [{"ip": fake_ip(i)}]}},
            "application/merge-patch+json")


def policy(k):
    """A realistic mix: pod/namespace selector peers, ipBlocks with except, named and numeric
    ports, every third with egress."""
    ns = f"ns{k % NSS}"
    frm = [{"namespaceSelector": {"matchLabels": {"team": f"t{k % 3}"}},
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In",
                            "values": [f"app{(k + 1) % APPS}", f"app{(k + 2) % APPS}"]}]}}]
    if k % 2:
        frm.append({"podSelector": {"matchLabels": {"app": f"app{(k + 3) % APPS}"}}})
    if k % 4 == 0:
        frm.append({"ipBlock": {"cidr": f"192.168.{k % 16}.0/24", "except": [f"192.168.{k % 16}.128/25"]}})
    spec = {"podSelector": {"matchLabels": {"app": f"app{k % APPS}"}},
            "ingress": [{"from": frm, "ports": [{"port": 80}, {"port": "serve-81-tcp"}]}]}
    types = ["Ingress"]
    if k % 3 == 0:
        types.append("Egress")
        spec["egress"] = [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]},
                          {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}}]}]
    spec["policyTypes"] = types
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"pol{k}", "namespace": ns}, "spec": spec}


def netpol_pid():
    for p in ST["processes"]:
        if p["program"] == "flannel-netpol" and p["netns"] == NODE_NS["n1"]:
            return p["pid"]
    raise RuntimeError("no flannel-netpol on n1")


def mem(p):
    f = dict(l.split(":", 1) for l in open(f"/proc/{p}/status"))
    return f["VmRSS"].strip(), f["VmHWM"].strip()


def elements():
    out = json.loads(in_node("nft", "-j", "list", "table", "inet", "flannel-netpol").stdout)
    return sum(len(o["set"].get("elem", [])) for o in out["nftables"] if "set" in o)


class Monitor:
    """`nft monitor new elements` in n1: the kernel's own record of each element added."""

    def __init__(self):
        self.p = subprocess.Popen(["ip", "netns", "exec", NODE_NS["n1"], "timeout", "600", "nft",
                                   "monitor", "new", "elements"], stdout=subprocess.PIPE, text=True)
        self.lines, self.cv = [], threading.Condition()
        threading.Thread(target=self.read, daemon=True).start()
        time.sleep(0.3)

    def read(self):
        for line in self.p.stdout:
            with self.cv:
                self.lines.append((time.monotonic(), line))
                self.cv.notify_all()

    def wait(self, since, setname, ip, timeout=5.0):
        end = time.monotonic() + timeout
        with self.cv:
            while time.monotonic() < end:
                for t, line in self.lines:
                    if t >= since and f" {setname} " in line and re.search(rf"\b{re.escape(ip)}\b", line):
                        return t - since
                self.cv.wait(0.05)
        return None

    def stop(self):
        self.p.terminate()
        self.p.wait(5)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def iperf(secs):
    srv = PODS["n1-p1"]
    s = subprocess.Popen(["ip", "netns", "exec", srv["netns"], "timeout", str(secs + 20), "iperf3", "-s", "-1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    out = sh("ip", "netns", "exec", PODS["n2-p1"]["netns"], "iperf3", "-c", srv["ip"], "-t", str(secs), "-J",
             timeout=secs + 20)
    s.wait(secs + 20)
    return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def server_policy(k, port):
    frm = [{"podSelector": {"matchLabels": {"role": "client"}}}] if k == 0 else \
          [{"podSelector": {"matchLabels": {"app": f"app{k}"}}, "namespaceSelector": {}}]
    rule = {"from": frm} if k == 0 else {"from": frm, "ports": [{"port": port}]}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"server{k}", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"role": "server"}}, "ingress": [rule]}}


def restart_enforcer():
    """Stops the lab's enforcer on n1 (this run's lab started it), removes its table and starts
    it again: the time to the first sync is a cold start against the whole cluster."""
    old = netpol_pid()
    cmd = open(f"/proc/{old}/cmdline").read().split("\0")[:-1]
    os.kill(old, signal.SIGKILL)  # the table stays; it is removed below
    for _ in range(100):
        if not os.path.exists(f"/proc/{old}"):
            break
        time.sleep(0.05)
    in_node("nft", "delete", "table", "inet", "flannel-netpol")
    t0 = time.monotonic()
    p = subprocess.Popen(["ip", "netns", "exec", NODE_NS["n1"], "timeout", "900", *cmd],
                         stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "first sync done" in line:
            break
        if time.monotonic() - t0 > 120:
            raise RuntimeError("no first sync within 120 s")
    first = time.monotonic() - t0
    # The enforcer's warnings (a failed sync, a watch error) are the bench's business too.
    threading.Thread(target=lambda: [sys.stderr.write(f"enforcer: {l}") for l in p.stderr
                                     if " WARN " in l or " ERROR " in l], daemon=True).start()
    return p, first


def main():
    res = {}
    for n in range(NSS):
        api("POST", "/api/v1/namespaces", {"metadata": {"name": f"ns{n}", "labels": {"team": f"t{n % 3}"}}})
    api("PATCH", "/api/v1/namespaces/default/pods/n1-p1", {"metadata": {"labels": {"role": "server"}}},
        "application/merge-patch+json")
    api("PATCH", "/api/v1/namespaces/default/pods/n2-p1", {"metadata": {"labels": {"role": "client"}}},
        "application/merge-patch+json")
    log(f"{ARGS.pods} pods on n1 and {ARGS.pods} on n2 (API objects)")
    make_pods("n1", 0, ARGS.pods)
    make_pods("n2", ARGS.pods, ARGS.pods)
    log("iperf3 n2-p1 -> n1-p1 without policies")
    base = [iperf(ARGS.iperf_secs) for _ in range(2)]
    log(f"{ARGS.policies} policies + 10 on the iperf server")
    for k in range(ARGS.policies):
        api("POST", f"/apis/networking.k8s.io/v1/namespaces/ns{k % NSS}/networkpolicies", policy(k))
    for k in range(10):
        api("POST", "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies", server_policy(k, 80))
    time.sleep(3)
    enforcer, res["first"] = restart_enforcer()
    try:
        time.sleep(1)
        res["elements"] = elements()
        mon = Monitor()
        lab_lat, pol_lat = [], []
        for c in range(ARGS.changes):
            i = 10 * c + 3  # a local pod of ns3 ... moved to an app a policy of ns3 selects
            ns, app = f"ns{i % NSS}", (i % APPS + 10 * (c % 4 + 1)) % APPS
            t = time.monotonic()
            api("PATCH", f"/api/v1/namespaces/{ns}/pods/f{i}", {"metadata": {"labels": {"app": f"app{app}"}}},
                "application/merge-patch+json")
            lab_lat.append(mon.wait(t, f"{pid(ns, f'pol{app}')}-sel-v4", fake_ip(i)))
            time.sleep(0.1)
        for c in range(ARGS.changes):
            k = c * 7 % ARGS.policies
            new = (k % APPS + 10 * (c % 4 + 1)) % APPS  # same namespace, other pods
            pol = policy(k)
            pol["spec"]["podSelector"] = {"matchLabels": {"app": f"app{new}"}}
            t = time.monotonic()
            api("PUT", f"/apis/networking.k8s.io/v1/namespaces/ns{k % NSS}/networkpolicies/pol{k}", pol)
            target = next(j for j in range(10 * ARGS.changes, ARGS.pods) if j % APPS == new)  # not relabelled
            pol_lat.append(mon.wait(t, f"{pid(f'ns{k % NSS}', f'pol{k}')}-sel-v4", fake_ip(target)))
            time.sleep(0.1)
        mon.stop()
        res["rss"], res["hwm"] = mem(find_child(enforcer.pid))
        log("iperf3 n2-p1 -> n1-p1 with the policies")
        pol = [iperf(ARGS.iperf_secs) for _ in range(2)]
        log(f"ping -i 0.001 during {ARGS.updates} policy updates")
        count = 12000
        ping = subprocess.Popen(["ip", "netns", "exec", PODS["n2-p1"]["netns"], "ping", "-q", "-i", "0.001",
                                 "-c", str(count), "-W", "1", PODS["n1-p1"]["ip"]], stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        for u in range(ARGS.updates):
            k = 1 + u % 9
            api("PUT", f"/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/server{k}",
                server_policy(k, 80 + (u // 9) % 2 * 8000))
            time.sleep(0.05)
        out, _ = ping.communicate(timeout=60)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        sent, got = int(m[1]), int(m[2])
    finally:
        enforcer.terminate()
        enforcer.wait(10)
    for what, lat in (("label", lab_lat), ("policy", pol_lat)):
        slow = sorted(((x, c) for c, x in enumerate(lat) if x), reverse=True)[:3]
        log(f"slowest {what} changes: " + ", ".join(f"#{c} {x * 1000:.0f} ms" for x, c in slow))
    bad = [x for x in lab_lat + pol_lat if x is None]
    lab_ok, pol_ok = [x for x in lab_lat if x], [x for x in pol_lat if x]
    ms = lambda x: f"{x * 1000:.0f} ms"
    print(f"\n| figure | value | goal |\n|---|---|---|")
    print(f"| full first sync ({ARGS.pods} local + {ARGS.pods} remote pods, {ARGS.policies + 10} policies) | {res['first']:.2f} s | |")
    print(f"| label change -> enforced p50 / p99 (n={len(lab_ok)}) | {ms(pct(lab_ok, .5))} / {ms(pct(lab_ok, .99))} | p99 < 100 ms |")
    print(f"| policy change -> enforced p50 / p99 (n={len(pol_ok)}) | {ms(pct(pol_ok, .5))} / {ms(pct(pol_ok, .99))} | p99 < 100 ms |")
    print(f"| changes never seen within 5 s | {len(bad)} | 0 |")
    print(f"| enforcer VmRSS / VmHWM | {res['rss']} / {res['hwm']} | < 32 MiB |")
    print(f"| nft set elements | {res['elements']} | |")
    b, p = statistics.median(base), statistics.median(pol)
    print(f"| iperf3 n2-p1 -> n1-p1 no policies / policies (Gbit/s) | {b:.2f} / {p:.2f} = {p / b:.3f}x | >= 0.95x |")
    print(f"| ping -i 0.001 during {ARGS.updates} policy updates: lost | {sent - got} of {sent} | 0 |")
    print(f"\nload average: {open('/proc/loadavg').read().split()[:3]}")
    return 0 if not bad else 1


def find_child(p):
    """The enforcer under `ip netns exec ... timeout ...`: the deepest child."""
    for _ in range(3):
        kids = open(f"/proc/{p}/task/{p}/children").read().split()
        if not kids:
            return p
        p = int(kids[0])
    return p


if __name__ == "__main__":
    sys.exit(main())
