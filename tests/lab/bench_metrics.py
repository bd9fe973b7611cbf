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

"""The benchmark's measurements: machine, CPU, memory, wire, disk."""

import fcntl
import os
import platform
import struct

import psutil

from tests.lab import disks
from tests.lab import swarm as lab_swarm

MiB = 1024 * 1024
_BLKZEROOUT = 0x127f


def machine():
    model = ''
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    import libtorrent
    return {'nproc': os.cpu_count(), 'cpu_model': model,
            'kernel': platform.release(),
            'mem_gib': round(psutil.virtual_memory().total / 2 ** 30, 1),
            'python': platform.python_version(),
            'libtorrent': libtorrent.__version__,
            'loadavg_at_start': os.getloadavg()}


#: The CPU times that add up to the machine's time (guest time is counted
#: in user and nice already).
_CPU_FIELDS = ('user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq',
               'steal')


def cpu_times():
    """Seconds all cores spent in each state since boot, summed."""
    times = psutil.cpu_times()._asdict()
    return {name: times[name] for name in _CPU_FIELDS}


def cpu_busy(before, after):
    """Share of all cores busy between two :func:`cpu_times` snapshots."""
    delta = {k: after[k] - before[k] for k in before}
    total = sum(delta.values()) or 1
    idle = delta['idle'] + delta['iowait']
    return {'busy': round(1 - idle / total, 3),
            'user': round((delta['user'] + delta['nice']) / total, 3),
            'system': round(delta['system'] / total, 3),
            'softirq': round((delta['softirq'] + delta['irq']) / total, 3),
            'iowait': round(delta['iowait'] / total, 3)}


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def wire_counters(hosts):
    """Bytes each host received and sent, from its root-side veth.

    The root side's tx is what the bridge delivered to the host (every
    header included), its rx what the host sent.
    """
    out = {}
    for host in hosts:
        base = '/sys/class/net/%s/statistics/' % host.veth_root
        out[host.name] = (read_int(base + 'tx_bytes'),
                          read_int(base + 'rx_bytes'))
    return out


def read_events(path):
    return lab_swarm.json_lines(path)


def log_event(path, name):
    """The first event called ``name`` in the JSON lines at ``path``."""
    return find_event(read_events(path), name)


def find_event(events, name):
    for ev in events:
        if ev.get('event') == name:
            return ev
    return None


def write_result(events):
    for ev in reversed(events):
        if 'event' not in ev and 'sha256' in ev:
            return ev
    return None


def wipe(dev, size, lab):
    """Zero a lab loop device (BLKZEROOUT: a hole punch in its file)."""
    disks.assert_lab_loop(dev, lab)
    fd = os.open(dev, os.O_WRONLY)
    try:
        fcntl.ioctl(fd, _BLKZEROOUT, struct.pack('QQ', 0, size))
        os.fsync(fd)
    finally:
        os.close(fd)


def wire_seconds(size, rate_mbit):
    if not rate_mbit:
        return None  # unshaped: no wire bound to speak of
    """F/B: the time to carry ``size`` bytes at the link rate."""
    return size * 8 / (rate_mbit * 1e6)


def proc_cpu(pid):
    """CPU seconds (user + system) a live process has used so far."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def peak_rss_kib(pid):
    """Peak resident memory of a live process, KiB (0 if it is gone).

    The kernel's ``VmHWM``, which psutil does not give.
    """
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def vmrss(pid):
    """Resident memory of a live process, KiB (0 if it is gone)."""
    try:
        return psutil.Process(pid).memory_info().rss // 1024
    except psutil.Error:
        return 0
