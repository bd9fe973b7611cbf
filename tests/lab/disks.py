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


"""Loop devices for lab hosts, and the guard every test writer calls.

The only block devices tests may write to are loop devices backed by a new
file inside a lab's state directory (:func:`create_loop`);
:func:`assert_lab_loop` checks exactly that and must be called before any
write. Detaching happens in :meth:`tests.lab.net.Lab.teardown`.
"""

import fcntl
import hashlib
import os
import re
import stat
import struct

from tests.lab import net

# <linux/fs.h>: _IOR(0x12, 114, size_t)
BLKGETSIZE64 = 0x80081272
_BUF_SIZE = 4 * 1024 * 1024
_LOOP_NAME_RE = re.compile(r'^loop[0-9]+$')
_DELETED = ' (deleted)'


def _lab(lab_or_state):
    if isinstance(lab_or_state, net.Lab):
        return lab_or_state
    return net.Lab.load(os.fspath(lab_or_state))


def _state_dir(lab_or_state):
    if isinstance(lab_or_state, net.Lab):
        return lab_or_state.state_dir
    return os.path.abspath(os.fspath(lab_or_state))


def create_loop(lab_or_state, backing_path, size_bytes):
    """Attach a new sparse file of ``size_bytes`` to a free loop device.

    :param lab_or_state: a :class:`~tests.lab.net.Lab` or its state dir.
    :param backing_path: the backing file to create; it must not exist
        yet and must be inside the lab's state directory.
    :returns: the device path, e.g. ``/dev/loop3``.
    """
    lab = _lab(lab_or_state)
    if size_bytes <= 0 or size_bytes % 512:
        raise ValueError('size must be a positive multiple of 512: %r'
                         % size_bytes)
    path = os.path.abspath(os.fspath(backing_path))
    if not net.inside(path, lab.state_dir):
        raise ValueError('backing file %s is not inside the lab state '
                         'directory %s' % (path, lab.state_dir))
    # O_EXCL: the file is provably new, so it is ours to delete later.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size_bytes)
    finally:
        os.close(fd)
    # Recorded before attaching: teardown finds the device by its backing
    # file even if we crash before recording the device name.
    lab.register_loop(path)
    proc = net.run(['losetup', '--find', '--show', path])
    dev = proc.stdout.strip()
    lab.register_loop(path, dev)
    return dev


def loop_backing_file(dev):
    """The backing file of loop device ``dev`` (sysfs), or None."""
    return net.loop_backing(dev)


def assert_lab_loop(dev, lab):
    """Raise AssertionError unless ``dev`` is a loop device of ``lab``.

    That is: a block device whose kernel name is ``loopN`` and whose
    backing file exists inside the lab's state directory. Call it before
    writing to any device in a test. Not an ``assert`` statement, so
    ``python -O`` cannot remove it.

    :param lab: a :class:`~tests.lab.net.Lab` or its state directory.
    :returns: the resolved device path.
    """
    state_dir = _state_dir(lab)
    real = os.path.realpath(dev)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise AssertionError('%s: cannot stat: %s' % (dev, exc))
    if not stat.S_ISBLK(st.st_mode):
        raise AssertionError('%s is not a block device' % dev)
    # The kernel's name for the device, whatever the /dev node is called.
    sys_path = '/sys/dev/block/%d:%d' % (os.major(st.st_rdev),
                                         os.minor(st.st_rdev))
    try:
        name = os.path.basename(os.readlink(sys_path))
    except OSError as exc:
        raise AssertionError('%s: unknown to sysfs: %s' % (dev, exc))
    if not _LOOP_NAME_RE.match(name):
        raise AssertionError('%s (%s) is not a loop device' % (dev, name))
    backing = net.loop_backing(name)
    if not backing:
        raise AssertionError('%s is not attached to a file' % dev)
    if backing.endswith(_DELETED):
        raise AssertionError('%s: backing file %s was deleted'
                             % (dev, backing))
    if not net.inside(backing, state_dir):
        raise AssertionError(
            'refusing %s: its backing file %s is not inside the lab '
            'directory %s' % (dev, backing, state_dir))
    return real


def assert_lab_target(path, lab):
    """Like :func:`assert_lab_loop`, but also accepts lab files.

    A write target is fine if it is a lab loop device, or a regular file
    (or a file still to be created) inside the lab's state directory.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISBLK(st.st_mode):
        return assert_lab_loop(path, lab)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise AssertionError('%s is neither a file nor a block device'
                             % path)
    if not net.inside(path, _state_dir(lab)):
        raise AssertionError('refusing %s: not inside the lab directory %s'
                             % (path, _state_dir(lab)))
    return os.path.realpath(path)


def block_size(dev):
    """Size in bytes of a block device (BLKGETSIZE64) or regular file."""
    fd = os.open(dev, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            buf = fcntl.ioctl(fd, BLKGETSIZE64, b'\0' * 8)
            return struct.unpack('Q', buf)[0]
        return st.st_size
    finally:
        os.close(fd)


def sha256_region(path, length):
    """Hex sha256 of the first ``length`` bytes of a file or device.

    :raises ValueError: if it holds fewer than ``length`` bytes.
    """
    digest = hashlib.sha256()
    buf = bytearray(_BUF_SIZE)
    view = memoryview(buf)
    remaining = length
    with open(path, 'rb', buffering=0) as f:
        while remaining > 0:
            n = f.readinto(view[:min(remaining, _BUF_SIZE)])
            if not n:
                raise ValueError('%s holds only %d of %d bytes'
                                 % (path, length - remaining, length))
            digest.update(view[:n])
            remaining -= n
    return digest.hexdigest()
