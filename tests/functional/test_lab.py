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


"""Self-tests of the test lab (tests/lab) on real namespaces and loops.

They need root; they create only 198.18.0.0/15 addresses, lab-named
namespaces and links, and loop devices backed by files under pytest's
tmp_path, and check that teardown leaves none of it behind.
"""

import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.lab import disks
from tests.lab import images
from tests.lab import net
from tests.lab import procs

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason='lab tests need root (network namespaces, tc, loop devices)')

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MIB = 1024 * 1024

RECEIVER = textwrap.dedent('''
    import json, socket, sys, time
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], int(sys.argv[2])))
    srv.listen(1)
    print('listening', flush=True)
    conn, _ = srv.accept()
    total, first = 0, None
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        if first is None:
            first = time.monotonic()
        total += len(data)
    print(json.dumps({'bytes': total,
                      'seconds': time.monotonic() - first}), flush=True)
''')

SENDER = textwrap.dedent('''
    import socket, sys
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10)
    chunk = b'x' * (1 << 16)
    left = int(sys.argv[3])
    while left > 0:
        sock.sendall(chunk[:left])
        left -= min(left, len(chunk))
    sock.close()
''')


def _out(cmd):
    return subprocess.run(cmd, capture_output=True, text=True,
                          check=False).stdout


def _names(lab):
    """Everything a lab should remove: namespaces, links, backing files."""
    state = json.load(open(lab.state_path))
    return {
        'netns': [ns['name'] for ns in state['netns']],
        'links': [link['name'] for link in state['links']],
        'loops': [(loop['device'], loop['backing'])
                  for loop in state['loops']],
        'pids': [(p['pid'], p['starttime']) for p in state['processes']],
        'state_path': lab.state_path,
    }


def _assert_gone(names):
    netns = _out(['ip', 'netns', 'list']).split()
    links = _out(['ip', '-o', 'link', 'show'])
    loops = _out(['losetup', '-a'])
    for ns in names['netns']:
        assert ns not in netns, 'namespace %s left behind' % ns
    for link in names['links']:
        assert ' %s:' % link not in links and ' %s@' % link not in links, (
            'link %s left behind' % link)
    for dev, backing in names['loops']:
        assert backing not in loops, 'loop %s (%s) left' % (dev, backing)
        assert not os.path.exists(backing)
    for pid, start in names['pids']:
        assert not procs.is_running(pid, start), (
            'process %d left running' % pid)
    assert not os.path.exists(names['state_path'])


@pytest.fixture
def lab(tmp_path):
    with net.Lab(str(tmp_path / 'lab'), subnet=net.free_subnet()) as lab:
        yield lab


def _measure(receiver, send, nbytes, log_path):
    """Bytes/s seen by a receiver in ``receiver`` while ``send`` runs."""
    port = 5201
    proc = receiver.popen([sys.executable, '-c', RECEIVER, receiver.ip,
                           str(port)], log_path)
    procs.wait_for(lambda: 'listening' in procs.tail_log(log_path), 10,
                   what='receiver to listen', proc=proc, log_path=log_path)
    send(receiver.ip, port, nbytes)
    assert proc.wait(timeout=60) == 0, procs.tail_log(log_path)
    result = json.loads(procs.tail_log(log_path, 1))
    assert result['bytes'] == nbytes
    return result['bytes'] * 8 / result['seconds'] / 1e6


def test_hosts_ping_each_other_and_gateway(lab):
    default_before = _out(['ip', 'route', 'show', 'default'])
    a = lab.add_host('a')
    b = lab.add_host('b')
    assert lab.gateway_ip == str(lab.subnet.network_address + 1)
    for host in (a, b):
        assert ipaddress.ip_address(host.ip) in lab.subnet
        assert host.ip != lab.gateway_ip
        assert host.mac.startswith('52:54:')
        link = json.loads(host.run(['ip', '-j', 'link', 'show', 'eth0'],
                                   capture_output=True, text=True,
                                   check=True).stdout)[0]
        assert link['address'] == host.mac
        # No default route in a lab host, nothing reaches past the lab.
        assert host.run(['ip', 'route', 'show', 'default'],
                        capture_output=True, text=True).stdout == ''
    assert a.ip != b.ip
    for src, dst in ((a, b.ip), (b, a.ip), (a, lab.gateway_ip)):
        res = src.run(['ping', '-c1', '-W2', dst], capture_output=True,
                      text=True)
        assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(['ping', '-c1', '-W2', b.ip], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _out(['ip', 'route', 'show', 'default']) == default_before
    # Another process sees the same lab through the state file.
    loaded = net.Lab.load(lab.state_dir)
    assert [h.ip for h in loaded.hosts] == [a.ip, b.ip]
    assert loaded.gateway_ip == lab.gateway_ip


@pytest.mark.parametrize('disable_offloads', [False, True])
def test_shaping_limits_rate(tmp_path, disable_offloads):
    rate = 50
    state_dir = str(tmp_path / 'lab')
    with net.Lab(state_dir, subnet=net.free_subnet(), rate_mbit=rate,
                 disable_offloads=disable_offloads) as lab:
        a = lab.add_host('a')
        b = lab.add_host('b')
        if disable_offloads and shutil.which('ethtool'):
            features = a.run(['ethtool', '-k', 'eth0'], capture_output=True,
                             text=True, check=True).stdout
            assert 'generic-segmentation-offload: off' in features
        qdiscs = _out(['tc', '-n', a.netns, 'qdisc', 'show', 'dev',
                       'eth0'])
        assert 'tbf' in qdiscs and 'rate 50Mbit' in qdiscs, qdiscs
        assert 'tbf' in _out(['tc', 'qdisc', 'show', 'dev', b.veth_root])
        assert 'tbf' in _out(['tc', 'qdisc', 'show', 'dev', lab.bridge])

        def from_a(ip, port, nbytes):
            a.run([sys.executable, '-c', SENDER, ip, str(port),
                   str(nbytes)], check=True, timeout=60)

        def from_gateway(ip, port, nbytes):
            with socket.create_connection((ip, port), 10) as sock:
                sock.sendall(b'\0' * nbytes)

        nbytes = 8 * MIB
        host_rate = _measure(b, from_a, nbytes, str(tmp_path / 'r1.log'))
        gw_rate = _measure(a, from_gateway, nbytes,
                           str(tmp_path / 'r2.log'))
        # Unshaping restores full speed (far above the limit).
        for target in ('gateway', a):
            lab.shape(target, None)
        fast = _measure(a, from_gateway, nbytes, str(tmp_path / 'r3.log'))
    for measured in (host_rate, gw_rate):
        assert 0.7 * rate <= measured <= 1.1 * rate, (
            host_rate, gw_rate)
    assert fast > 2 * rate


def test_teardown_on_exception(tmp_path):
    state_dir = str(tmp_path / 'lab')
    with pytest.raises(RuntimeError, match='boom'):
        with net.Lab(state_dir, subnet=net.free_subnet(),
                     rate_mbit=100) as lab:
            host = lab.add_host('n1')
            lab.add_host('n2')
            disks.create_loop(lab, os.path.join(state_dir, 'disk.img'),
                              16 * MIB)
            proc = host.popen(['sleep', '600'],
                              str(tmp_path / 'sleep.log'))
            names = _names(lab)
            assert len(names['netns']) == 2 and len(names['links']) == 3
            raise RuntimeError('boom')
    assert proc.poll() is not None
    _assert_gone(names)
    # Idempotent, and quiet about it.
    assert lab.teardown() == []
    assert net.Lab.cleanup(state_dir) == []


CRASHER = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from tests.lab import disks, net
    state_dir = sys.argv[2]
    lab = net.Lab(state_dir, subnet=sys.argv[3])
    lab.up()
    host = lab.add_host('n1', rate_mbit=100)
    disks.create_loop(lab, os.path.join(state_dir, 'disk.img'), 1 << 24)
    host.popen(['sleep', '600'], os.path.join(state_dir, 'sleep.log'))
    lab.popen(['sleep', '600'], os.path.join(state_dir, 'sleep2.log'))
    print('up', flush=True)
    os._exit(3)  # a crash: no teardown
''')


def test_teardown_from_another_process_after_crash(tmp_path):
    state_dir = str(tmp_path / 'lab')
    res = subprocess.run([sys.executable, '-c', CRASHER, REPO, state_dir,
                          net.free_subnet()],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and 'up' in res.stdout, res.stderr
    lab = net.Lab.load(state_dir)
    names = _names(lab)
    assert len(names['pids']) == 2 and len(names['loops']) == 1
    assert all(procs.is_running(pid, start) for pid, start in names['pids'])
    assert lab.teardown() == []
    _assert_gone(names)


SIGTERMED = textwrap.dedent('''
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from tests.lab import net
    with net.Lab(sys.argv[2], subnet=sys.argv[3]) as lab:
        lab.add_host('n1').popen(['sleep', '600'],
                                 os.path.join(sys.argv[2], 'sleep.log'))
        print('up', flush=True)
        time.sleep(60)
''')


def test_sigterm_tears_down(tmp_path):
    state_dir = str(tmp_path / 'lab')
    proc = subprocess.Popen([sys.executable, '-c', SIGTERMED, REPO,
                             state_dir, net.free_subnet()],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'up'
        names = _names(net.Lab.load(state_dir))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            net.Lab.cleanup(state_dir)
        proc.stdout.close()
    _assert_gone(names)


def test_lab_refuses_foreign_subnet_and_reused_state_dir(tmp_path, lab):
    with pytest.raises(ValueError):
        net.Lab(str(tmp_path / 'x'), subnet='10.0.0.0/24')
    with pytest.raises(net.LabError, match='overlaps'):
        net.Lab(str(tmp_path / 'y'), subnet=str(lab.subnet)).up()
    with pytest.raises(net.LabError, match='already holds a lab'):
        net.Lab(lab.state_dir, subnet=net.free_subnet()).up()
    assert not os.path.exists(tmp_path / 'y' / net.STATE_FILE)


def test_loop_devices_and_guard(tmp_path, lab):
    backing = os.path.join(lab.state_dir, 'node.img')
    dev = disks.create_loop(lab, backing, 8 * MIB)
    assert dev.startswith('/dev/loop')
    assert disks.assert_lab_loop(dev, lab) == dev
    assert disks.assert_lab_loop(dev, lab.state_dir) == dev
    assert disks.block_size(dev) == 8 * MIB
    assert disks.block_size(backing) == 8 * MIB
    assert disks.loop_backing_file(dev) == os.path.realpath(backing)
    # Refused targets: not a loop, not attached, a file, foreign loops.
    for target in ('/dev/vda', '/dev/null', backing, '/nonexistent'):
        with pytest.raises(AssertionError):
            disks.assert_lab_loop(target, lab)
    with pytest.raises(AssertionError):
        disks.assert_lab_target('/etc/passwd', lab)
    assert disks.assert_lab_target(backing, lab)
    with pytest.raises(FileExistsError):
        disks.create_loop(lab, backing, 8 * MIB)
    with pytest.raises(ValueError):
        disks.create_loop(lab, str(tmp_path / 'outside.img'), 8 * MIB)

    outside = str(tmp_path / 'foreign.img')
    with open(outside, 'wb') as f:
        f.truncate(MIB)
    foreign = subprocess.run(['losetup', '--find', '--show', outside],
                             capture_output=True, text=True,
                             check=True).stdout.strip()
    try:
        with pytest.raises(AssertionError, match='not inside'):
            disks.assert_lab_loop(foreign, lab)
    finally:
        subprocess.run(['losetup', '-d', foreign], check=True)

    # Writes through the device land in the backing file.
    data = os.urandom(MIB)
    with open(dev, 'r+b', buffering=0) as f:
        f.write(data)
        os.fsync(f.fileno())
    expected = hashlib.sha256(data).hexdigest()
    assert disks.sha256_region(dev, MIB) == expected
    assert disks.sha256_region(backing, MIB) == expected
    with pytest.raises(ValueError):
        disks.sha256_region(backing, 9 * MIB)


def test_make_disk_image(tmp_path):
    image = images.make_disk_image(str(tmp_path / 'disk.img'),
                                   size_mib=64)
    assert image.size == 64 * MIB == os.path.getsize(image.path)
    dump = subprocess.run(['sfdisk', '--dump', image.path],
                          capture_output=True, text=True, check=True).stdout
    assert 'label: gpt' in dump
    assert [p.fstype for p in image.partitions] in (['vfat', 'ext4'],
                                                    ['ext4'])
    assert images.nonzero_bytes(image.path) < 0.15 * image.size
    assert os.stat(image.path).st_blocks * 512 < 0.25 * image.size
    assert disks.sha256_region(image.path, image.size) == image.sha256
    again = images.make_disk_image(str(tmp_path / 'again.img'),
                                   size_mib=64)
    assert again.sha256 == image.sha256


def test_random_and_sparse_images(tmp_path):
    rnd = images.make_random_image(str(tmp_path / 'r.img'), 3 * MIB + 7, 1)
    assert rnd.size == os.path.getsize(rnd.path)
    assert images.make_random_image(str(tmp_path / 'r2.img'), 3 * MIB + 7,
                                    1).sha256 == rnd.sha256
    sparse = images.make_sparse_image(str(tmp_path / 's.img'), 32 * MIB,
                                      0.1, seed=2)
    nonzero = images.nonzero_bytes(sparse.path)
    # 10 % of random data in 4 extents, counted in whole 4 KiB blocks.
    assert 0.1 * sparse.size <= nonzero < 0.1 * sparse.size + 4 * 4096
    assert os.stat(sparse.path).st_blocks * 512 < 0.2 * sparse.size
    with pytest.raises(ValueError):
        images.make_random_image('/dev/null', MIB)


def test_wait_helpers(tmp_path, lab):
    with pytest.raises(TimeoutError, match='the impossible'):
        procs.wait_for(lambda: False, 0.3, 0.05, 'the impossible')
    a = lab.add_host('a')
    b = lab.add_host('b')
    log = str(tmp_path / 'srv.log')
    server = a.popen([sys.executable, '-u', '-m', 'http.server', '--bind',
                      a.ip, '8080'], log)
    procs.wait_port(a.ip, 8080, 15, netns=b.netns, proc=server,
                    log_path=log)
    procs.wait_port(a.ip, 8080, 5)
    with pytest.raises(TimeoutError, match='8081'):
        procs.wait_port(a.ip, 8081, 1, netns=b.netns)
    dead = a.popen(['sh', '-c', 'echo ERROR: no luck; exit 4'],
                   str(tmp_path / 'dead.log'))
    with pytest.raises(RuntimeError, match='no luck'):
        procs.wait_for(lambda: False, 10, 0.05, 'the dead', proc=dead,
                       log_path=str(tmp_path / 'dead.log'))
    assert procs.find_errors(str(tmp_path / 'dead.log')) == [
        'ERROR: no luck']


def test_threads_do_not_install_signal_handlers(tmp_path):
    errors = []

    def body():
        try:
            with net.Lab(str(tmp_path / 'lab'),
                         subnet=net.free_subnet()) as lab:
                lab.add_host('t')
        except Exception as exc:  # reported below
            errors.append(exc)
    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join(60)
    assert not errors
    assert signal.getsignal(signal.SIGTERM) is before


def test_taps_and_detached_processes_go_with_the_lab(tmp_path):
    """What a VM lab adds: a tap on the bridge, a daemon's detached child."""
    lab = net.Lab(str(tmp_path), subnet=net.free_subnet()).up()
    sleeper = [sys.executable, '-c', 'import time; time.sleep(300)']
    try:
        tap = lab.add_tap('vm0')
        assert tap.dev in _out(['ip', '-o', 'link', 'show', 'master',
                                lab.bridge])
        pidfile = tmp_path / 'guest.pid'
        # Detached (its own session), as libvirtd leaves its guests.
        guest = subprocess.Popen(sleeper + ['guest=vm0'],
                                 start_new_session=True)
        other = subprocess.Popen(sleeper, start_new_session=True)
        pidfile.write_text('%d\n' % guest.pid)
        lab.register_pidfile(str(pidfile), 'guest=vm0')
        # A PID file naming a process without the token: not ours.
        (tmp_path / 'other.pid').write_text('%d\n' % other.pid)
        lab.register_pidfile(str(tmp_path / 'other.pid'), 'guest=vm1')
    finally:
        problems = lab.teardown()
    try:
        assert problems == []
        assert guest.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None
        assert tap.dev not in _out(['ip', '-o', 'link', 'show'])
    finally:
        for proc in (guest, other):
            proc.kill()
            proc.wait()
