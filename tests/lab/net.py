#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.


"""Hosts on one machine: network namespaces on a private Linux bridge.

A :class:`Lab` owns a bridge whose address (the first one of the lab
subnet) belongs to the root namespace, which plays the conductor. Every
:meth:`Lab.add_host` creates a network namespace joined to the bridge by a
veth pair; it plays a bare-metal node. Links can be rate limited with
``tc tbf`` in both directions, processes can be started inside the hosts,
and everything created is written to a JSON state file *before* (or the
moment) it exists, so that :meth:`Lab.teardown` -- in this process or, after
a crash, in another one through :meth:`Lab.load` -- can remove it all.

Safety rules (see "Safety on a shared machine" in the design brief):

* only addresses from 198.18.0.0/15 (the benchmarking range), never a
  default route, and a subnet already routed on this machine is refused;
* objects are recognised as ours before they are deleted: links by the MAC
  address given to them at creation, namespaces by their unique name and
  by holding only our links, loop devices by their backing file;
* processes are signalled only by recorded PID, after checking the start
  time in ``/proc/<pid>/stat`` (a PID can be reused), never by name.
"""

import atexit
import contextlib
import dataclasses
import errno
import fcntl
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time

import psutil

from tests.lab import procs

LOG = logging.getLogger(__name__)

#: Every lab address comes from here (RFC 2544 benchmarking range).
LAB_RANGE = ipaddress.ip_network('198.18.0.0/15')

STATE_FILE = 'lab.json'
LOCK_FILE = 'lab.lock'
STATE_VERSION = 1

#: ``ifalias`` of every lab bridge; lets labs see each other (see
#: ``_restore_sysctls``).
ALIAS_PREFIX = 'ironic-bt-lab:'

# Linux interface names are at most IFNAMSIZ - 1 = 15 characters.
_IFNAME_MAX = 15
# Digits reserved for the host index in veth names (<prefix><labid>h<N>).
_INDEX_DIGITS = 3
_LABID_LEN = 4
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$')
_PREFIX_RE = re.compile(r'^[a-z][a-z0-9]*$')

# tbf parameters. tbf releases packets from a timer; when the qdisc is
# woken late (timer slack, a busy 2-core machine running softirqs) it must
# be able to send the tokens that accumulated meanwhile, or they overflow
# the bucket and are lost and the measured rate falls below the configured
# one. The classic rule is burst >= rate / HZ; we assume HZ=250 (Debian's
# default; a larger HZ only makes the bucket generous). 32 KiB is the
# floor so that low rates still fit a few full-size frames (and a small
# GSO segment). A bigger burst would let short transfers beat the rate.
# latency (how long a packet may wait in the queue before being dropped)
# of 50 ms keeps the queue deep enough for TCP to fill the link at 1 Gbit/s
# (50 ms * 1 Gbit/s ~ 6 MB) without adding the multi-second bufferbloat a
# huge limit would.
_ASSUMED_HZ = 250
_MIN_BURST = 32 * 1024
TBF_LATENCY_MS = 50

# How long processes get between SIGTERM and SIGKILL.

_BRIDGE_NF_SYSCTL = '/proc/sys/net/bridge/bridge-nf-call-iptables'


class LabError(RuntimeError):
    """A lab operation failed (the message names the command)."""


def run(cmd, check=True, **kwargs):
    """Run a command, capturing its output; raise :class:`LabError`."""
    kwargs.setdefault('capture_output', True)
    kwargs.setdefault('text', True)
    kwargs.setdefault('stdin', subprocess.DEVNULL)
    try:
        proc = subprocess.run(cmd, check=False, **kwargs)
    except OSError as exc:
        raise LabError('cannot run %s: %s' % (cmd[0], exc)) from exc
    if check and proc.returncode != 0:
        raise LabError('%s failed (exit %d): %s' % (
            ' '.join(cmd), proc.returncode, (proc.stderr or '').strip()))
    return proc


def _ip(netns, *args, check=True):
    """``ip`` in the root namespace (netns None) or in ``netns``."""
    cmd = ['ip']
    if netns:
        cmd += ['-n', netns]
    return run(cmd + list(args), check=check)


def _links(netns=None, kind=None):
    """Links of a namespace as dicts (``ip -j link show``), by name."""
    args = ['-j', 'link', 'show']
    if kind:
        args += ['type', kind]
    proc = _ip(netns, *args, check=False)
    if proc.returncode != 0:
        return {}
    try:
        return {link['ifname']: link for link in json.loads(proc.stdout)}
    except ValueError:
        return {}


def _netns_names():
    """Names of the named network namespaces (``/run/netns``)."""
    try:
        return set(os.listdir('/run/netns'))
    except FileNotFoundError:
        return set()


def _routed_networks():
    """Every IPv4 network this machine has a route or address for."""
    proc = run(['ip', '-j', '-4', 'route', 'show', 'table', 'all'],
               check=False)
    nets = []
    if proc.returncode != 0:
        return nets
    for route in json.loads(proc.stdout or '[]'):
        dst = route.get('dst')
        if not dst or dst == 'default':
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(dst, strict=False))
    return nets


def free_subnet(prefixlen=24):
    """The first subnet of 198.18.0.0/15 this machine does not route yet.

    Lets several labs (a functional test next to the end-to-end harness)
    run at once. The answer can race with another lab starting; ``Lab.up``
    then refuses the overlap, so just retry.
    """
    used = _routed_networks()
    for net in LAB_RANGE.subnets(new_prefix=prefixlen):
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise LabError('no free /%d left in %s' % (prefixlen, LAB_RANGE))


def _mac(labid, index, root_side=False):
    """Deterministic, locally administered unicast MAC of a lab link.

    ``52:54`` (the ns side of a host and the bridge) or ``5a:54`` (the
    root side of a veth): both have the locally administered bit set and
    the multicast bit clear. Then the 2 bytes of the lab id and 2 of the
    host index (0 is the bridge), so a fake Ironic port can be enrolled
    with a host's MAC and teardown can recognise our links.
    """
    first = 0x5a if root_side else 0x52
    return '%02x:54:%s:%s:%02x:%02x' % (
        first, labid[0:2], labid[2:4], (index >> 8) & 0xff, index & 0xff)


def _write_sysfs(path, value):
    """Best-effort write of a /proc/sys or /sys knob; False if absent."""
    try:
        with open(path, 'w') as f:
            f.write(value)
        return True
    except OSError:
        return False


def _ethtool_offloads_off(netns, dev):
    """Turn off TSO/GSO/GRO on ``dev`` if ethtool exists (opt-in).

    With offloads on, veths hand up to 64 KiB GSO packets to the qdisc;
    tbf charges their full wire length and segments any packet bigger
    than the bucket, so the long-run rate stays exact; only the
    granularity is coarser. Measured here (kernel 6.18, 2 cores) with a
    single TCP stream, 8-64 MiB: 50/200/1000 Mbit/s gave 48/192/959
    Mbit/s of goodput with offloads on and the same with them off (the
    ~4% gap is Ethernet/IP/TCP headers). So they stay on by default,
    which is cheaper in CPU; ``Lab(disable_offloads=True)`` turns them off
    for experiments needing MTU-sized packets. Features a driver cannot
    change are left alone.
    """
    if not shutil.which('ethtool'):
        return False
    cmd = ['ethtool', '-K', dev, 'tso', 'off', 'gso', 'off', 'gro', 'off']
    if netns:
        cmd = ['ip', 'netns', 'exec', netns] + cmd
    return run(cmd, check=False).returncode == 0


def tbf_params(rate_mbit):
    """``(rate_kbit, burst_bytes)`` used for a tbf at ``rate_mbit``."""
    rate_bytes = rate_mbit * 1e6 / 8
    burst = max(int(rate_bytes / _ASSUMED_HZ), _MIN_BURST)
    return int(round(rate_mbit * 1000)), burst


@dataclasses.dataclass
class Host:
    """A lab host: a network namespace with one ``eth0`` on the bridge."""

    name: str
    netns: str
    ip: str
    mac: str
    veth_root: str
    veth_ns: str = 'eth0'
    index: int = 0
    rate_mbit: float | None = None
    lab: 'Lab | None' = dataclasses.field(
        default=None, repr=False, compare=False)

    @property
    def exec_prefix(self):
        """Command prefix that runs something inside this host."""
        return ['ip', 'netns', 'exec', self.netns]

    def run(self, cmd, **kwargs):
        """``subprocess.run(cmd, **kwargs)`` inside the namespace."""
        return subprocess.run(self.exec_prefix + list(cmd), **kwargs)

    def popen(self, cmd, log_path, env=None):
        """Start a tracked background process inside the namespace.

        See :meth:`Lab.popen`.
        """
        if self.lab is None:
            raise LabError('host %s is not attached to a lab' % self.name)
        return self.lab.popen(cmd, log_path, env=env, netns=self.netns)

    def to_dict(self):
        return {f.name: getattr(self, f.name)
                for f in dataclasses.fields(self) if f.name != 'lab'}


@dataclasses.dataclass
class Tap:
    """A tap device on the bridge, for a virtual machine's NIC.

    The guest owns :attr:`mac` and :attr:`ip` (the lab's DHCP server hands
    it out); the tap device itself, on the root side, has a MAC of its own.
    """

    name: str
    dev: str
    ip: str
    mac: str
    index: int

    def to_dict(self):
        return dataclasses.asdict(self)


class Lab:
    """A private bridge, its hosts, their processes and loop devices.

    ``with Lab(state_dir) as lab:`` brings it up and tears it down at the
    end of the block, at interpreter exit, or on SIGTERM/SIGINT. Without
    ``with``, call :meth:`up` and :meth:`teardown` yourself. Another
    process can tear a lab down with ``Lab.load(state_dir).teardown()``.

    :param state_dir: directory holding the state file; it must not hold a
        live lab already. Loop device backing files must live under it.
    :param prefix: short lowercase prefix of every name the lab creates.
    :param subnet: lab subnet, inside 198.18.0.0/15 and not yet routed
        on this machine; the bridge gets its first address.
    :param rate_mbit: if set, shape the gateway (conductor) and every host
        to this rate, in both directions.
    :param disable_offloads: turn TSO/GSO/GRO off on shaped links (see
        ``_ethtool_offloads_off``; tbf is accurate without it).
    """

    def __init__(self, state_dir, prefix='ibt', subnet='198.18.0.0/24',
                 rate_mbit=None, disable_offloads=False):
        if not _PREFIX_RE.match(prefix):
            raise ValueError('prefix must be lowercase alphanumeric: %r'
                             % prefix)
        # <prefix><labid>h<NNN> is the longest interface name we make.
        if len(prefix) + _LABID_LEN + 1 + _INDEX_DIGITS > _IFNAME_MAX:
            raise ValueError('prefix %r too long for %d-character '
                             'interface names' % (prefix, _IFNAME_MAX))
        net = ipaddress.ip_network(subnet)
        if net.version != 4 or not net.subnet_of(LAB_RANGE):
            raise ValueError('lab subnet %s is not inside %s'
                             % (subnet, LAB_RANGE))
        if net.num_addresses < 4:
            raise ValueError('lab subnet %s is too small' % subnet)
        self.state_dir = os.path.abspath(state_dir)
        self.state_path = os.path.join(self.state_dir, STATE_FILE)
        self.prefix = prefix
        self.subnet = net
        self.rate_mbit = rate_mbit
        self.disable_offloads = disable_offloads
        self._state = None
        self._lock = threading.RLock()
        self._children = {}
        self._prev_handlers = None
        self._atexit_registered = False
        self._tearing_down = False

    # -- state file -------------------------------------------------------

    @contextlib.contextmanager
    def _file_lock(self):
        # flock, so that another process (create_loop on a loaded lab)
        # never loses our updates or we theirs.
        os.makedirs(self.state_dir, exist_ok=True)
        fd = os.open(os.path.join(self.state_dir, LOCK_FILE),
                     os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_state_file(self):
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _write_state_file(self, state):
        tmp = self.state_path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def _update(self, mutate):
        """Read-modify-write the state file under its lock."""
        with self._lock, self._file_lock():
            state = self._read_state_file()
            if state is None:
                raise LabError('lab in %s is not up (no %s)'
                               % (self.state_dir, STATE_FILE))
            result = mutate(state)
            self._write_state_file(state)
            self._state = state
            return result

    def _refresh(self):
        with self._lock:
            state = self._read_state_file()
            if state is not None:
                self._state = state
            return self._state

    def _require_up(self):
        if self._refresh() is None:
            raise LabError('lab in %s is not up' % self.state_dir)
        return self._state

    # -- public properties --------------------------------------------------

    @property
    def is_up(self):
        return self._state is not None

    @property
    def labid(self):
        return self._require_up()['labid']

    @property
    def bridge(self):
        return self._require_up()['bridge']

    @property
    def gateway_ip(self):
        """The conductor's (root namespace's) address on the lab."""
        return self._require_up()['gateway_ip']

    @property
    def gateway_mac(self):
        return self._require_up()['gateway_mac']

    @property
    def prefixlen(self):
        return self.subnet.prefixlen

    @property
    def hosts(self):
        """The hosts, in creation order."""
        state = self._require_up()
        return [self._host_from(h) for h in state['hosts']]

    def host(self, name):
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def _host_from(self, record):
        return Host(lab=self, **record)

    # -- bring up -----------------------------------------------------------

    def __enter__(self):
        self.up()
        atexit.register(self.teardown)
        self._atexit_registered = True
        if threading.current_thread() is threading.main_thread():
            self._prev_handlers = {}
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._prev_handlers[signum] = signal.signal(
                    signum, self._on_signal)
        return self

    def __exit__(self, exc_type, exc, tb):
        self._tearing_down = True
        try:
            self.teardown()
        finally:
            self._restore_handlers()
        return False

    def _restore_handlers(self):
        if self._prev_handlers:
            for signum, handler in self._prev_handlers.items():
                with contextlib.suppress(Exception):
                    signal.signal(signum, handler)
            self._prev_handlers = None
        if self._atexit_registered:
            atexit.unregister(self.teardown)
            self._atexit_registered = False

    def _on_signal(self, signum, frame):
        # Tear down right here: the with-body might swallow the exception
        # raised below. A second signal during teardown is ignored so it
        # cannot interrupt it half-way.
        if self._tearing_down:
            return
        self._tearing_down = True
        LOG.warning('signal %d: tearing the lab in %s down',
                    signum, self.state_dir)
        self.teardown()
        prev = (self._prev_handlers or {}).get(signum)
        self._restore_handlers()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        if callable(prev):
            prev(signum, frame)
        raise SystemExit(128 + signum)

    def up(self):
        """Create the bridge and give the root namespace the gateway IP."""
        with self._lock:
            if self._state is not None:
                raise LabError('lab in %s is already up' % self.state_dir)
            self._tearing_down = False
            for net in _routed_networks():
                if net.overlaps(self.subnet):
                    raise LabError(
                        'subnet %s overlaps %s, already routed on this '
                        'machine (another lab?); pick another one, e.g. '
                        'with free_subnet()' % (self.subnet, net))
            labid = self._pick_labid()
            gateway = self.subnet.network_address + 1
            state = {
                'version': STATE_VERSION,
                'owner_pid': os.getpid(),
                'created': time.time(),
                'prefix': self.prefix,
                'labid': labid,
                'subnet': str(self.subnet),
                'rate_mbit': self.rate_mbit,
                'disable_offloads': self.disable_offloads,
                'bridge': '%sbr%s' % (self.prefix, labid),
                'gateway_ip': str(gateway),
                'gateway_mac': _mac(labid, 0),
                'gateway_rate_mbit': None,
                'next_index': 1,
                'links': [],
                'netns': [],
                'hosts': [],
                'processes': [],
                'loops': [],
                'mounts': [],
                'sysctls': {},
            }
            with self._file_lock():
                if os.path.exists(self.state_path):
                    raise LabError('%s already holds a lab; tear it down '
                                   'first (Lab.load(dir).teardown())'
                                   % self.state_dir)
                self._write_state_file(state)
                self._state = state
        try:
            self._create_bridge()
            if self.rate_mbit:
                self.shape('gateway', self.rate_mbit)
        except BaseException:
            self.teardown()
            raise
        return self

    def _pick_labid(self):
        links = _links()
        namespaces = _netns_names()
        for _ in range(64):
            labid = secrets.token_hex(_LABID_LEN // 2)
            ns_prefix = '%s-%s-' % (self.prefix, labid)
            if ('%sbr%s' % (self.prefix, labid) in links
                    or any(n.startswith(ns_prefix) for n in namespaces)
                    or any(n.startswith(self.prefix + labid)
                           for n in links)):
                continue
            return labid
        raise LabError('cannot find a free lab id')

    def _create_link(self, record, create_cmd):
        """Record a link, then create it; forget it if creation fails.

        Recording first means a crash right after creation still leaves
        it in the state file. Forgetting it on failure matters: the name
        (and so the MAC check) might belong to someone else's link.
        """
        self._update(lambda s: s['links'].append(record))
        try:
            run(create_cmd)
        except BaseException:
            self._update(lambda s: s['links'].remove(record))
            raise

    def _create_bridge(self):
        state = self._state
        bridge, mac = state['bridge'], state['gateway_mac']
        if bridge in _links():
            raise LabError('bridge %s already exists' % bridge)
        self._create_link(
            {'name': bridge, 'mac': mac, 'kind': 'bridge', 'netns': None},
            ['ip', 'link', 'add', 'name', bridge, 'address', mac,
             'type', 'bridge', 'stp_state', '0', 'forward_delay', '0'])
        # No IPv6 on lab links: no link-local addresses, DAD, router or
        # MLD solicitations; the lab is IPv4 only.
        _write_sysfs('/proc/sys/net/ipv6/conf/%s/disable_ipv6' % bridge,
                     '1')
        _ip(None, 'link', 'set', 'dev', bridge, 'alias',
            ALIAS_PREFIX + state['labid'])
        _ip(None, 'addr', 'add', '%s/%d' % (state['gateway_ip'],
                                            self.prefixlen),
            'dev', bridge)
        _ip(None, 'link', 'set', 'dev', bridge, 'up')
        self._disable_bridge_netfilter()

    def _disable_bridge_netfilter(self):
        """Keep iptables from filtering bridged lab traffic.

        With br_netfilter loaded, frames crossing any bridge go through
        the iptables FORWARD chain, where a host firewall (Docker's, say)
        may drop them. The knob is global, so the previous value is
        recorded and restored by the last lab to go away.
        """
        try:
            with open(_BRIDGE_NF_SYSCTL) as f:
                prev = f.read().strip()
        except OSError:
            return  # br_netfilter not loaded: nothing filters bridges
        if prev == '0':
            return

        def record(state):
            state['sysctls'][_BRIDGE_NF_SYSCTL] = {'prev': prev, 'set': '0'}
        self._update(record)
        if not _write_sysfs(_BRIDGE_NF_SYSCTL, '0'):
            LOG.warning('could not set %s to 0', _BRIDGE_NF_SYSCTL)

    # -- hosts --------------------------------------------------------------

    def add_host(self, name, rate_mbit=None):
        """Create a host namespace on the bridge and return its Host.

        The host gets the next free address of the subnet, an ``eth0``
        with a deterministic MAC (see ``_mac``), ``lo`` up and no default
        route. ``rate_mbit`` (else the lab's) shapes both directions.
        """
        if not _NAME_RE.match(name):
            raise ValueError('bad host name %r' % name)
        with self._lock:
            state = self._require_up()
            if any(h['name'] == name for h in state['hosts']):
                raise LabError('host %s already exists' % name)
            labid = state['labid']
            index = state['next_index']
            if index >= 10 ** _INDEX_DIGITS:
                raise LabError('too many hosts')
            address = self.subnet.network_address + 1 + index
            if address >= self.subnet.broadcast_address:
                raise LabError('subnet %s is full' % self.subnet)
            host = Host(
                name=name,
                netns='%s-%s-%s' % (self.prefix, labid, name),
                ip=str(address),
                mac=_mac(labid, index),
                veth_root='%s%sh%d' % (self.prefix, labid, index),
                index=index,
                lab=self)
            if host.netns in _netns_names():
                raise LabError('namespace %s already exists' % host.netns)

            def reserve(s):
                s['next_index'] = index + 1
                s['netns'].append({'name': host.netns, 'mac': host.mac})
            self._update(reserve)
            try:
                run(['ip', 'netns', 'add', host.netns])
            except BaseException:
                self._update(lambda s: s['netns'].remove(
                    {'name': host.netns, 'mac': host.mac}))
                raise
            self._setup_host(host)
            self._update(lambda s: s['hosts'].append(host.to_dict()))
        rate = rate_mbit if rate_mbit is not None else self.rate_mbit
        if rate:
            self.shape(host, rate)
        return self.host(name)

    def _setup_host(self, host):
        # Disable IPv6 in the namespace before eth0 appears, so that it
        # inherits "default" and never sends DAD or router solicitations.
        if os.path.isdir('/proc/sys/net/ipv6'):
            run(host.exec_prefix + [
                'sh', '-c',
                'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && '
                'echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6'])
        root_mac = _mac(self._state['labid'], host.index, root_side=True)
        self._create_link(
            {'name': host.veth_root, 'mac': root_mac, 'kind': 'veth',
             'netns': None},
            ['ip', 'link', 'add', 'name', host.veth_root,
             'address', root_mac, 'type', 'veth',
             'peer', 'name', host.veth_ns, 'address', host.mac,
             'netns', host.netns])
        _write_sysfs('/proc/sys/net/ipv6/conf/%s/disable_ipv6'
                     % host.veth_root, '1')
        _ip(None, 'link', 'set', 'dev', host.veth_root,
            'master', self._state['bridge'], 'up')
        _ip(host.netns, 'addr', 'add',
            '%s/%d' % (host.ip, self.prefixlen), 'dev', host.veth_ns)
        _ip(host.netns, 'link', 'set', 'dev', 'lo', 'up')
        _ip(host.netns, 'link', 'set', 'dev', host.veth_ns, 'up')

    def pin_neighbours(self):
        """Give every host the address of every other, without ARP.

        The kernel's neighbour table is one for all namespaces, and past
        ``gc_thresh3`` (1024 entries by default) a host cannot resolve a
        new neighbour: sends fail with ENOBUFS. A lab of N hosts that all
        talk to each other needs N x N entries (65 hosts: 4160). Permanent
        entries do not count toward the threshold, and the lab's MACs are
        known (``_mac``), so each host gets them all at once; no ARP
        broadcast crosses the bridge either.
        """
        hosts = self.hosts
        for host in hosts:
            batch = ''.join(
                'neigh replace %s lladdr %s dev %s nud permanent\n'
                % (other.ip, other.mac, host.veth_ns)
                for other in hosts if other is not host)
            run(['ip', '-n', host.netns, '-batch', '-'], input=batch,
                stdin=None)

    def add_tap(self, name):
        """Create a tap device on the bridge for a virtual machine's NIC.

        It takes the next host index (so the next address and MAC), is
        persistent (it outlives the guest process, which only opens it)
        and is deleted by teardown, recognised by its MAC.
        """
        if not _NAME_RE.match(name):
            raise ValueError('bad tap name %r' % name)
        with self._lock:
            state = self._require_up()
            if any(t['name'] == name for t in state.get('taps', [])):
                raise LabError('tap %s already exists' % name)
            labid = state['labid']
            index = state['next_index']
            address = self.subnet.network_address + 1 + index
            if (index >= 10 ** _INDEX_DIGITS
                    or address >= self.subnet.broadcast_address):
                raise LabError('subnet %s is full' % self.subnet)
            tap = Tap(name=name, dev='%s%st%d' % (self.prefix, labid, index),
                      ip=str(address), mac=_mac(labid, index), index=index)
            self._update(lambda s: s.update(next_index=index + 1))
            root_mac = _mac(labid, index, root_side=True)
            self._create_link(
                {'name': tap.dev, 'mac': root_mac, 'kind': 'tap',
                 'netns': None},
                ['ip', 'tuntap', 'add', 'dev', tap.dev, 'mode', 'tap'])
            _ip(None, 'link', 'set', 'dev', tap.dev, 'address', root_mac)
            _write_sysfs('/proc/sys/net/ipv6/conf/%s/disable_ipv6' % tap.dev,
                         '1')
            _ip(None, 'link', 'set', 'dev', tap.dev,
                'master', state['bridge'], 'up')
            self._update(lambda s: s.setdefault('taps', []).append(
                tap.to_dict()))
        return tap

    def register_pidfile(self, path, token):
        """Have teardown kill the process whose PID a daemon writes here.

        For processes that a daemon of the lab starts and detaches (the
        QEMU guests of libvirtd): teardown reads the PID from ``path`` and
        signals it only if its command line holds ``token``, so a reused
        PID is never hit.
        """
        path = os.path.realpath(path)
        if not inside(path, self.state_dir):
            raise LabError('PID file %s is not inside the lab state '
                           'directory %s' % (path, self.state_dir))
        record = {'path': path, 'token': token}

        def add(state):
            files = state.setdefault('pidfiles', [])
            if record not in files:
                files.append(record)
        self._update(add)

    # -- shaping ------------------------------------------------------------

    def _shaped_devices(self, target):
        if isinstance(target, str) and target == 'gateway':
            # What the root namespace sends into the lab leaves through
            # the bridge device's own egress queue, before being switched
            # to a port.
            return [(None, self.bridge)]
        host = target if isinstance(target, Host) else self.host(target)
        # Upload: eth0 egress inside the host. Download: egress of the
        # root-side veth, i.e. what the bridge forwards to the host.
        return [(host.netns, host.veth_ns), (None, host.veth_root)]

    def shape(self, target, rate_mbit):
        """Rate-limit a host's link (both directions) or the gateway.

        :param target: a :class:`Host`, a host name or ``'gateway'``.
        :param rate_mbit: rate in Mbit/s (10**6 bit/s); None or 0 removes
            the shaping.
        """
        devices = self._shaped_devices(target)
        for netns, dev in devices:
            tc = ['tc'] + (['-n', netns] if netns else [])
            if rate_mbit:
                kbit, burst = tbf_params(rate_mbit)
                if self.disable_offloads:
                    _ethtool_offloads_off(netns, dev)
                run(tc + ['qdisc', 'replace', 'dev', dev, 'root', 'tbf',
                          'rate', '%dkbit' % kbit, 'burst', str(burst),
                          'latency', '%dms' % TBF_LATENCY_MS])
            else:
                run(tc + ['qdisc', 'del', 'dev', dev, 'root'], check=False)

        def record(state):
            if isinstance(target, str) and target == 'gateway':
                state['gateway_rate_mbit'] = rate_mbit or None
                return
            name = target.name if isinstance(target, Host) else target
            for h in state['hosts']:
                if h['name'] == name:
                    h['rate_mbit'] = rate_mbit or None
        self._update(record)

    # -- processes ----------------------------------------------------------

    def popen(self, cmd, log_path, env=None, netns=None):
        """Start a tracked background process (root namespace by default).

        It runs in its own session and process group, so teardown can
        signal the whole group. stdout and stderr go (appended) to
        ``log_path``. ``env`` entries are added to this process's
        environment. The PID and its start time are recorded at once.
        """
        self._require_up()
        full = list(cmd)
        if netns:
            full = ['ip', 'netns', 'exec', netns] + full
        environ = dict(os.environ)
        environ.update(env or {})
        with open(log_path, 'ab') as log:
            proc = subprocess.Popen(
                full, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=environ,
                start_new_session=True, close_fds=True)
        self._children[proc.pid] = proc
        try:
            self.track_pid(proc.pid, cmd=full, netns=netns, log=log_path)
        except BaseException:
            # Not recorded means teardown would miss it: do not leave it.
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return proc

    def track_pid(self, pid, cmd=None, netns=None, log=None):
        """Record a process started elsewhere so teardown kills it."""
        started = procs.start_time(pid)
        if started is None:
            raise LabError('process %d does not exist' % pid)
        record = {'pid': pid, 'starttime': started,
                  'cmd': list(cmd or []), 'netns': netns, 'log': log}
        self._update(lambda s: s['processes'].append(record))

    # -- loop devices (see tests.lab.disks) -------------------------------

    def register_loop(self, backing, device=None):
        """Record a loop backing file (then its device) for teardown."""
        backing = os.path.realpath(backing)

        def record(state):
            for loop in state['loops']:
                if loop['backing'] == backing:
                    loop['device'] = device or loop['device']
                    return
            state['loops'].append({'backing': backing, 'device': device})
        self._update(record)

    def register_mount(self, mountpoint):
        """Record a mount point (a test's FUSE file system) for teardown.

        Call it before mounting. Teardown unmounts it after detaching the
        loop devices, which a FUSE file may back.
        """
        mountpoint = os.path.realpath(mountpoint)
        if not inside(mountpoint, self.state_dir):
            raise LabError('mount point %s is not inside the lab state '
                           'directory %s' % (mountpoint, self.state_dir))

        def record(state):
            mounts = state.setdefault('mounts', [])
            if mountpoint not in mounts:
                mounts.append(mountpoint)
        self._update(record)

    # -- teardown -----------------------------------------------------------

    @classmethod
    def load(cls, state_dir):
        """The lab described by ``state_dir``'s state file.

        :raises FileNotFoundError: no lab there (never up, or torn down).
        """
        path = os.path.join(os.path.abspath(state_dir), STATE_FILE)
        with open(path) as f:
            state = json.load(f)
        lab = cls(state_dir, prefix=state['prefix'],
                  subnet=state['subnet'], rate_mbit=state.get('rate_mbit'),
                  disable_offloads=state.get('disable_offloads', False))
        lab._state = state
        return lab

    @classmethod
    def cleanup(cls, state_dir):
        """Tear down the lab in ``state_dir`` if there is one.

        :returns: the list of problems met (empty if all went well).
        """
        try:
            lab = cls.load(state_dir)
        except FileNotFoundError:
            return []
        return lab.teardown()

    def teardown(self):
        """Remove everything the lab created. Idempotent, never raises.

        Order: processes (by recorded PID), loop devices, namespaces and
        their veths, the bridge, sysctls, the state file.

        :returns: a list of problems met, for the caller to report.
        """
        problems = []
        with self._lock:
            self._tearing_down = True
            try:
                state = self._read_state_file() or self._state
            except (OSError, ValueError) as exc:
                problems.append('cannot read %s: %s'
                                % (self.state_path, exc))
                state = self._state
            if state is None:
                return problems
            for step in (self._kill_processes, self._kill_pidfiles,
                         self._detach_loops, self._unmount,
                         self._delete_namespaces, self._delete_taps,
                         self._delete_bridge, self._restore_sysctls):
                try:
                    step(state, problems)
                except Exception as exc:
                    problems.append('%s: %s' % (step.__name__, exc))
            for path in (self.state_path, self.state_path + '.tmp',
                         os.path.join(self.state_dir, LOCK_FILE)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    problems.append('cannot remove %s: %s' % (path, exc))
            self._state = None
        for problem in problems:
            LOG.warning('lab teardown: %s', problem)
        return problems

    def _reap(self):
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def _kill_processes(self, state, problems):
        records = {r['pid']: r['starttime'] for r in state['processes']}
        survivors = procs.terminate(records, reap=self._reap)
        if survivors:
            problems.append('processes survived SIGKILL: %s' % survivors)
        # Anything still inside one of our namespaces (a process started
        # with "ip netns exec" behind our back, a daemon that left its
        # session) would keep the namespace and its veth alive. Such
        # PIDs are ours by construction; they are signalled by PID too.
        stray = {}
        for ns in self._owned_namespaces(state):
            proc = run(['ip', 'netns', 'pids', ns], check=False)
            for pid in proc.stdout.split():
                if pid.isdigit() and int(pid) != os.getpid():
                    started = procs.start_time(int(pid))
                    if started is not None and procs.is_running(
                            int(pid), started):
                        stray[int(pid)] = started
        if not stray:
            return
        LOG.warning('lab: killing processes left in lab namespaces: %s',
                    sorted(stray))
        survivors = procs.terminate(stray, session=False, reap=self._reap)
        if survivors:
            problems.append('processes survived SIGKILL: %s' % survivors)

    def _kill_pidfiles(self, state, problems):
        targets = dict(filter(None, (
            procs.pid_file_process(record['path'], record['token'])
            for record in state.get('pidfiles', []))))
        survivors = procs.terminate(targets, session=False, reap=self._reap)
        if survivors:
            problems.append('processes survived SIGKILL: %s' % survivors)

    def _detach_loops(self, state, problems):
        mounts = state.get('mounts', [])
        for loop in state['loops']:
            backing = loop['backing']
            devices = set()
            if loop.get('device') and loop_backing(
                    loop['device']) == backing:
                devices.add(loop['device'])
            # Also catch a device attached just before a crash, before
            # it could be recorded.
            proc = run(['losetup', '--list', '--noheadings', '--output',
                        'NAME', '--associated', backing], check=False)
            for dev in proc.stdout.split():
                if loop_backing(dev) == backing:
                    devices.add(dev)
            for dev in sorted(devices):
                res = run(['losetup', '--detach', dev], check=False)
                if res.returncode != 0:
                    problems.append('losetup -d %s: %s'
                                    % (dev, res.stderr.strip()))
            # A file on a test's FUSE file system goes with its mount.
            if inside(backing, self.state_dir) and not any(
                    inside(backing, m) for m in mounts):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backing)

    def _unmount(self, state, problems):
        mounted = mount_points()
        for mountpoint in state.get('mounts', []):
            if mountpoint not in mounted or not inside(mountpoint,
                                                       self.state_dir):
                continue
            # The loop device may let go of its file a moment after it
            # was detached; a FUSE daemon exits once unmounted.
            for _attempt in range(20):
                if run(['umount', mountpoint], check=False).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                res = run(['umount', '-l', mountpoint], check=False)
                if res.returncode != 0:
                    problems.append('umount -l %s: %s'
                                    % (mountpoint, res.stderr.strip()))

    def _owned_namespaces(self, state):
        """Recorded namespaces that exist and hold only our links."""
        owned = []
        existing = _netns_names()
        for ns in state['netns']:
            if ns['name'] not in existing:
                continue
            foreign = [name for name, link in _links(ns['name']).items()
                       if name != 'lo'
                       and link.get('address') != ns['mac']]
            if foreign:
                LOG.warning('lab: namespace %s holds links %s we did not '
                            'create; leaving it', ns['name'], foreign)
                continue
            owned.append(ns['name'])
        return owned

    def _delete_links(self, state, kind, problems):
        existing = _links()
        for link in state['links']:
            if link['kind'] != kind:
                continue
            found = existing.get(link['name'])
            if found is None:
                continue
            if found.get('address') != link['mac']:
                problems.append('%s is not ours (MAC %s); left alone'
                                % (link['name'], found.get('address')))
                continue
            res = _ip(None, 'link', 'del', 'dev', link['name'], check=False)
            if res.returncode != 0:
                problems.append('ip link del %s: %s'
                                % (link['name'], res.stderr.strip()))

    def _delete_namespaces(self, state, problems):
        # Deleting the root end of a veth deletes both ends, even if a
        # process we could not kill still pins the namespace.
        self._delete_links(state, 'veth', problems)
        for ns in self._owned_namespaces(state):
            res = run(['ip', 'netns', 'delete', ns], check=False)
            if res.returncode != 0:
                problems.append('ip netns delete %s: %s'
                                % (ns, res.stderr.strip()))

    def _delete_taps(self, state, problems):
        self._delete_links(state, 'tap', problems)

    def _delete_bridge(self, state, problems):
        self._delete_links(state, 'bridge', problems)

    def _restore_sysctls(self, state, problems):
        # The knobs are global: restore them only when no other lab bridge
        # is left that still needs them.
        others = [name for name, link in _links(kind='bridge').items()
                  if link.get('ifalias', '').startswith(ALIAS_PREFIX)]
        if others:
            return
        for path, values in state['sysctls'].items():
            try:
                with open(path) as f:
                    current = f.read().strip()
            except OSError:
                continue
            if current == values['set']:
                _write_sysfs(path, values['prev'])


def inside(path, directory):
    """True if ``path`` (resolved) is inside ``directory`` (resolved)."""
    path = os.path.realpath(path)
    directory = os.path.realpath(directory)
    return path != directory and os.path.commonpath(
        [path, directory]) == directory


def mount_points():
    """Mount points of this mount namespace."""
    return {p.mountpoint for p in psutil.disk_partitions(all=True)}


def loop_backing(dev):
    """Backing file of loop device ``dev`` per sysfs, or None."""
    name = os.path.basename(dev)
    try:
        with open('/sys/block/%s/loop/backing_file' % name) as f:
            return f.read().rstrip('\n')
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENXIO):
            LOG.debug('cannot read backing file of %s: %s', dev, exc)
        return None
