"""The campaign's private network: one bridge, one network namespace per member and one for
the DCS, each with its own address. Nothing here routes beyond the bridge.

    root namespace   10.77.S.1   (the campaign: clients, role watcher, fault control)
    DCS namespace    10.77.S.2   (etcd behind the fault proxy, or the Kubernetes API test server)
    member m1..m3    10.77.S.11 .. 10.77.S.13

S is the campaign's slot (--slot, 0 … 9): campaigns in different slots have their own bridge,
namespaces, addresses and volumes, so they can run side by side.

Cuts are iptables DROP rules inside a member's namespace. The campaign's own address is never
cut: clients keep reaching a cut-off leader, which is the harshest case for split brain (a
leader that loses its lease while clients can still write to it).
"""

import os
import subprocess

from common import log, run

SLOTS = range(10)


def configure(slot):
    """Names and addresses of one slot; every other module reads them from here at call time."""
    global SLOT, BRIDGE, SUBNET_PREFIX, HOST_ADDRESS, DCS_ADDRESS, NS_PREFIX, DCS_NS, VETH_PREFIX
    global FORWARD_RULE
    if slot not in SLOTS:
        raise ValueError(f"slot must be within 0 … 9, not {slot}")
    SLOT = slot
    BRIDGE = f"rgchaos{slot}"
    SUBNET_PREFIX = f"10.77.{slot}"
    HOST_ADDRESS = f"{SUBNET_PREFIX}.1"
    DCS_ADDRESS = f"{SUBNET_PREFIX}.2"
    # Also the source name of the members' tmpfs volumes, so a cleanup finds its own.
    NS_PREFIX = f"rgchaos{slot}-"
    DCS_NS = f"{NS_PREFIX}dcs"
    VETH_PREFIX = f"rgchaos{slot}-v"  # at most 13 characters with a member name: under IFNAMSIZ
    # With br_netfilter loaded, bridged frames pass the root namespace's FORWARD chain, whose
    # policy may be DROP (Docker sets it): this rule lets our bridge's own traffic through.
    FORWARD_RULE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


configure(0)


def member_address(index):
    return f"{SUBNET_PREFIX}.{11 + index}"


def member_ns(name):
    return f"{NS_PREFIX}{name}"


def existing_namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NS_PREFIX)]


class Network:
    def __init__(self, member_names):
        self.member_names = list(member_names)
        self.forward_rule_added = False

    def _add_namespace(self, ns, address, veth_host):
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth_host, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "link", "set", veth_host, "master", BRIDGE])
        run(["ip", "link", "set", veth_host, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def create(self):
        leftovers = existing_namespaces()
        if leftovers or any(link.startswith((BRIDGE, VETH_PREFIX)) for link in os.listdir("/sys/class/net")):
            log(f"removing leftovers of an earlier campaign: {leftovers} {BRIDGE}")
            self.destroy(quiet=True)
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        if subprocess.run(["iptables", "-C", *FORWARD_RULE], capture_output=True).returncode != 0:
            run(["iptables", "-I", *FORWARD_RULE])
            self.forward_rule_added = True
        self._add_namespace(DCS_NS, DCS_ADDRESS, f"{VETH_PREFIX}dcs")
        for index, name in enumerate(self.member_names):
            self._add_namespace(member_ns(name), member_address(index), f"{VETH_PREFIX}{name}")

    def destroy(self, quiet=False):
        """Remove the namespaces (killing whatever still runs in them), the bridge and the rule."""
        for ns in existing_namespaces():
            kill_namespace_processes(ns)
        # Deleting a veth end deletes its peer at once; a namespace's own teardown is lazy.
        for link in os.listdir("/sys/class/net"):
            if link.startswith(VETH_PREFIX):
                subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for ns in existing_namespaces():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        if os.path.exists(f"/sys/class/net/{BRIDGE}"):
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        while subprocess.run(["iptables", "-C", *FORWARD_RULE], capture_output=True).returncode == 0:
            subprocess.run(["iptables", "-D", *FORWARD_RULE], capture_output=True, check=False)
        if not quiet:
            log("network namespaces, bridge and forward rule removed")


def kill_namespace_processes(ns):
    """SIGCONT + SIGKILL every process that lives in the namespace (all of them were started
    by this campaign, inside the namespaces it created)."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        for sig in (18, 9):  # SIGCONT first: a stopped process would not die before it runs
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def ns_iptables(ns, *args):
    run(["ip", "netns", "exec", ns, "iptables", *args])


class Cut:
    """DROP rules in `ns` for traffic to and from `peers` (addresses)."""

    def __init__(self, ns, peers):
        self.ns = ns
        self.peers = list(peers)

    def rules(self):
        for peer in self.peers:
            yield ["INPUT", "-s", peer, "-j", "DROP"]
            yield ["OUTPUT", "-d", peer, "-j", "DROP"]

    def apply(self):
        for rule in self.rules():
            ns_iptables(self.ns, "-I", *rule)

    def heal(self):
        for rule in self.rules():
            subprocess.run(["ip", "netns", "exec", self.ns, "iptables", "-D", *rule],
                           capture_output=True, check=False)
