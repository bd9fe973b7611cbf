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

"""The agent's writer against a real libtorrent seeder and real devices.

Nothing is mocked: a seeding session on 127.0.0.1 serves the image, and the
writer downloads it into a file or into a loop device made for the test.
"""

import contextlib
import ctypes
import errno
import fcntl
import os
import select
import shutil
import struct
import subprocess
import threading
import time

import libtorrent as lt
import pytest

from ipa_extension import device
from ipa_extension import writer
from ironic_bt.common import torrent
from tests.functional import helpers
from tests.lab import faulty

MiB = 1024 * 1024
PIECE = torrent.MIN_PIECE_SIZE
PATTERN = b'\xa5'

requires_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which('losetup') is None,
    reason='loop devices need root and losetup to attach them')
requires_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists('/dev/fuse'),
    reason='a failing disk is a loop device over a FUSE file (root)')


def make_image(path, size, extents):
    """Write a sparse image: random bytes at ``extents``, zeros elsewhere.

    :param extents: (offset, length) pairs.
    :returns: the image's bytes.
    """
    data = bytearray(size)
    for offset, length in extents:
        data[offset:offset + length] = os.urandom(length)
    with open(path, 'wb') as f:
        f.write(data)
    return bytes(data)


@contextlib.contextmanager
def loop_device(backing):
    """Attach ``backing`` to a free loop device; always detach it."""
    out = subprocess.run(['losetup', '--find', '--show', backing],
                         check=True, capture_output=True, text=True)
    device = out.stdout.strip()
    try:
        # Write only to what this test made: the device must be ours.
        name = os.path.basename(device)
        with open('/sys/block/%s/loop/backing_file' % name) as f:
            assert f.read().strip() == os.path.realpath(backing)
        yield device
    finally:
        subprocess.run(['losetup', '--detach', device], check=False)


def backing_file(path, size, fill=b'\0'):
    """A file of ``size`` bytes: sparse, or filled with ``fill``."""
    with open(path, 'wb') as f:
        if fill == b'\0':
            f.truncate(size)
        else:
            f.write(fill * size)
    return str(path)


def pieces_touched(extents, size):
    """Bytes in the pieces holding any byte of ``extents``."""
    indexes = set()
    for offset, length in extents:
        indexes.update(range(offset // PIECE,
                             (offset + length - 1) // PIECE + 1))
    return sum(min(PIECE, size - i * PIECE) for i in indexes)


# 3.25 MiB plus a few bytes, so the last piece is short; data at the start,
# zeros in the middle (pieces 4-11), data at the end.
SIZE = 13 * PIECE + 12345
EXTENTS = [(0, 4 * PIECE), (12 * PIECE, PIECE + 12345)]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / 'image.raw'
    data = make_image(path, SIZE, EXTENTS)
    return str(path), data, torrent.build(str(path))


def test_write_to_file(tmp_path, image):
    path, data, meta = image
    target = str(tmp_path / 'disk.img')
    with helpers.seeding(meta, path) as seed:
        result = helpers.write_from(seed, meta, target,
                                    expected_sha256=helpers.sha256(data))

    with open(target, 'rb') as f:
        assert helpers.sha256(f.read()) == helpers.sha256(data)
    assert result.sha256 == helpers.sha256(data)
    assert result.target == target
    assert result.size == SIZE
    assert result.info_hash == meta.info_hash
    assert result.zero_bytes == 8 * PIECE == meta.zero_bytes
    # The zero pieces never crossed the wire.
    assert result.downloaded_bytes == SIZE - meta.zero_bytes


def test_sparse_image_downloads_only_its_data(tmp_path):
    # 16 MiB, mostly holes; extents start and end inside pieces.
    size = 16 * MiB
    extents = [(1000, 5000), (3 * MiB + 77, PIECE + 1), (15 * MiB, 4096)]
    path = str(tmp_path / 'sparse.raw')
    data = make_image(path, size, extents)
    meta = torrent.build(path)
    target = str(tmp_path / 'disk.img')

    with helpers.seeding(meta, path) as seed:
        result = helpers.write_from(seed, meta, target)

    assert helpers.read(target, size) == data
    assert result.sha256 == helpers.sha256(data)
    touched = pieces_touched(extents, size)
    assert result.zero_bytes == size - touched
    # Every piece with data was downloaded, and nothing else: at most the
    # data plus the two partial pieces at the ends of each extent.
    assert result.downloaded_bytes == touched
    data_bytes = sum(length for _offset, length in extents)
    assert touched <= data_bytes + 2 * PIECE * len(extents)
    assert result.downloaded_bytes < size // 8


@requires_root
def test_write_to_loop_device(tmp_path, image):
    path, data, meta = image
    # Larger than the image, and full of a pattern, so the zero pieces must
    # really be zeroed and the bytes past the image must be left alone.
    backing = backing_file(tmp_path / 'loop.img', 8 * MiB, fill=PATTERN)
    with helpers.seeding(meta, path) as seed, loop_device(backing) as device:
        result = helpers.write_from(seed, meta, device,
                                    expected_sha256=helpers.sha256(data))

        assert result.target == device
        assert result.sha256 == helpers.sha256(data)
        assert helpers.read(device, SIZE) == data
        assert helpers.read(device, 8 * MiB - SIZE, SIZE) == PATTERN * (
            8 * MiB - SIZE)
        assert result.downloaded_bytes == SIZE - meta.zero_bytes


@requires_root
def test_write_again_over_present_image(tmp_path, image):
    path, data, meta = image
    backing = backing_file(tmp_path / 'loop.img', 4 * MiB)
    with helpers.seeding(meta, path) as seed, loop_device(backing) as device:
        first = helpers.write_from(seed, meta, device)
        # A sample of pieces matches the torrent: the writer finds the
        # whole image on the disk and downloads nothing.
        second = helpers.write_from(seed, meta, device,
                                    expected_sha256=helpers.sha256(data))

        assert first.resumed_bytes == 0
        assert first.downloaded_bytes == SIZE - meta.zero_bytes
        assert second.resumed_bytes == SIZE - meta.zero_bytes
        assert second.downloaded_bytes == 0
        assert first.sha256 == second.sha256 == helpers.sha256(data)
        assert helpers.read(device, SIZE) == data


@requires_root
def test_loop_device_too_small(tmp_path, image):
    path, data, meta = image
    small = SIZE // 2 // 512 * 512
    backing = backing_file(tmp_path / 'small.img', small, fill=PATTERN)
    with helpers.seeding(meta, path) as seed, loop_device(backing) as device:
        with pytest.raises(writer.TargetError) as exc:
            helpers.write_from(seed, meta, device)

        message = str(exc.value)
        assert device in message
        assert str(SIZE) in message
        assert str(small) in message
        # Refused before writing anything.
        assert helpers.read(device, small) == PATTERN * small


def test_corrupt_torrent_file(tmp_path, image):
    _path, _data, meta = image
    garbage = tmp_path / 'garbage.torrent'
    garbage.write_bytes(b'd8:announce' + os.urandom(64))
    with pytest.raises(torrent.InvalidTorrent) as exc:
        torrent.load_file(str(garbage))
    assert str(garbage) in str(exc.value)

    truncated = tmp_path / 'truncated.torrent'
    truncated.write_bytes(meta.data[:len(meta.data) // 2])
    with pytest.raises(torrent.InvalidTorrent) as exc:
        torrent.load_file(str(truncated))
    assert str(truncated) in str(exc.value)


def test_verify_detects_tampering(tmp_path, image):
    path, data, meta = image
    target = str(tmp_path / 'disk.img')
    with helpers.seeding(meta, path) as seed:
        helpers.write_from(seed, meta, target)
    assert device.verify(target, meta) == helpers.sha256(data)

    # Flip bytes in the middle of piece 2, as a failing disk might.
    offset = 2 * PIECE + PIECE // 2
    with open(target, 'r+b') as f:
        f.seek(offset)
        f.write(bytes(b ^ 0xff for b in data[offset:offset + 16]))
    with pytest.raises(writer.VerifyError) as exc:
        device.verify(target, meta)
    message = str(exc.value)
    assert 'Piece 2 ' in message
    assert target in message
    # With the image's sha256 the whole-region hash catches it, and the
    # error still names the piece.
    with pytest.raises(writer.VerifyError) as exc:
        device.verify(target, meta, expected_sha256=helpers.sha256(data))
    assert 'Piece 2 ' in str(exc.value)
    assert target in str(exc.value)


def test_seeder_never_serves_an_image_changed_after_hashing(tmp_path, image):
    # ironic-bt seed without --trust-image: the image the operator gave
    # is not the one the torrent was made from (same size, piece 1
    # differs). The seeder hashes each piece before its first send, so the
    # changed piece never reaches the node.
    path, data, meta = image
    changed = bytes(b ^ 0xff for b in data[PIECE:2 * PIECE])
    with open(path, 'r+b') as f:
        f.seek(PIECE)
        f.write(changed)
    target = str(tmp_path / 'disk.img')
    with helpers.seeding(meta, path, verified=False) as seed:
        with pytest.raises(writer.DownloadError) as exc:
            helpers.write_from(seed, meta, target, stall_timeout=3)
    assert meta.info_hash in str(exc.value)
    assert helpers.read(target, PIECE, PIECE) != changed
    # The pieces it could verify did arrive.
    assert helpers.read(target, PIECE) == data[:PIECE]


def test_expected_sha256_mismatch(tmp_path, image):
    path, data, meta = image
    wrong = helpers.sha256(b'another image')
    with helpers.seeding(meta, path) as seed:
        with pytest.raises(writer.VerifyError) as exc:
            helpers.write_from(seed, meta, str(tmp_path / 'disk.img'),
                               expected_sha256=wrong)
    assert wrong in str(exc.value)
    assert helpers.sha256(data) in str(exc.value)


def test_stall_without_seeder(tmp_path, image):
    _path, _data, meta = image
    # A port nobody listens on: the swarm has no one to download from.
    with pytest.raises(writer.DownloadError) as exc:
        helpers.write(meta, str(tmp_path / 'disk.img'), ['127.0.0.1:9'],
                      stall_timeout=1)
    assert 'stalled' in str(exc.value)
    assert meta.info_hash in str(exc.value)


def test_verify_short_target_and_no_direct_io(tmp_path, image, monkeypatch):
    path, data, meta = image
    target = str(tmp_path / 'disk.img')
    with helpers.seeding(meta, path) as seed:
        helpers.write_from(seed, meta, target)

    # A file system that refuses O_DIRECT: the page cache is dropped for
    # the region instead, and the result is the same.
    real_open = os.open

    def no_direct(p, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, 'Invalid argument')
        return real_open(p, flags, *args)
    monkeypatch.setattr(os, 'open', no_direct)
    digest = helpers.sha256(data)
    assert device.verify(target, meta, expected_sha256=digest) == digest
    monkeypatch.undo()

    # A target that ends inside the image is named, with where it ends.
    os.truncate(target, len(data) // 2)
    with pytest.raises(writer.VerifyError) as exc:
        device.verify(target, meta, expected_sha256=helpers.sha256(data))
    assert target in str(exc.value)
    assert 'ends at byte %d' % (len(data) // 2) in str(exc.value)


class _Alerts(writer.Observer):
    """Keeps the bans the writer's session reported."""

    def __init__(self):
        self.bans = []

    def alert(self, alert):
        if isinstance(alert, lt.peer_ban_alert):
            self.bans.append(alert.message())


def _bigger_image(tmp_path):
    # Enough pieces that the download is still running when the bad
    # range is written back.
    path = tmp_path / 'big.raw'
    data = make_image(path, 64 * PIECE, [(0, 64 * PIECE)])
    return str(path), data, torrent.build(str(path))


def _write_to_faulty_disk(tmp_path, error_class, **faults):
    """Write a 64-piece image to a FaultyDisk with ``faults``.

    :returns: the device, the ``error_class`` error raised, the seconds it
        took, and the bans the writer's session reported.
    """
    path, data, meta = _bigger_image(tmp_path)
    observer = _Alerts()
    with helpers.seeding(meta, path) as seed, faulty.FaultyDisk(
            tmp_path, 8 * MiB, **faults) as disk:
        dev = disk.device
        start = time.monotonic()
        with pytest.raises(error_class) as exc:
            helpers.write_from(seed, meta, dev, observer=observer,
                               expected_sha256=helpers.sha256(data),
                               stall_timeout=300)
        elapsed = time.monotonic() - start
    return dev, exc.value, elapsed, observer.bans


@requires_fuse
def test_disk_failing_writes_is_named_at_once(tmp_path):
    # The writes of piece 20 and on fail, as a dying disk's would.
    dev, error, elapsed, bans = _write_to_faulty_disk(
        tmp_path, writer.TargetError, fail_writes=(20 * PIECE, 4 * PIECE))

    message = str(error)
    assert dev in message
    assert 'EIO' in message
    assert 'kernel log' in message
    assert 'network is not at fault' in message
    assert not isinstance(error, writer.DownloadError)
    # Long before the stall timeout, and nobody was blamed for it.
    assert elapsed < 15
    assert bans == []


@requires_fuse
def test_disk_returning_wrong_data_is_named_at_once(tmp_path):
    # Writes land, but reads of piece 33 come back different.
    dev, error, elapsed, bans = _write_to_faulty_disk(
        tmp_path, writer.VerifyError, corrupt_reads=(33 * PIECE + 100, 10))

    message = str(error)
    assert dev in message
    assert 'Piece 33 ' in message
    assert 'disk' in message
    assert elapsed < 15
    assert bans == []


def test_progress_counts_bytes_on_disk_and_never_decreases(tmp_path, image):
    path, data, meta = image

    class Progress(writer.Observer):
        def __init__(self):
            self.seen = []

        def progress(self, present, size):
            self.seen.append((present, size))

    observer = Progress()
    with helpers.seeding(meta, path) as seed:
        helpers.write_from(seed, meta, str(tmp_path / 'disk.img'),
                           observer=observer)

    values = [present for present, _size in observer.seen]
    assert {size for _present, size in observer.seen} == {SIZE}
    # The zero pieces are on the disk before the first byte arrives.
    assert values[0] >= meta.zero_bytes
    assert values[-1] == SIZE
    assert values == sorted(values)


class _CloseWrites:
    """Counts IN_CLOSE_WRITE on a device node: what wakes udevd.

    systemd-udevd watches block device nodes for this event, and on each
    one re-reads the disk's partition table and probes it again. Events are
    read as they come, since inotify merges one into the last unread one.
    """

    _IN_CLOSE_WRITE = 0x08

    def __init__(self, path):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self._fd >= 0, os.strerror(ctypes.get_errno())
        wd = self._libc.inotify_add_watch(self._fd, path.encode(),
                                          self._IN_CLOSE_WRITE)
        assert wd >= 0, os.strerror(ctypes.get_errno())
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            if select.select([self._fd], [], [], 0.01)[0]:
                self._drain()

    def _drain(self):
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(data):
            _wd, mask, _cookie, length = struct.unpack_from('iIII', data,
                                                            offset)
            if mask & self._IN_CLOSE_WRITE:
                self.count += 1
            offset += 16 + length

    def close(self):
        self._stop.set()
        self._thread.join()
        self._drain()
        os.close(self._fd)


class _LockProbe(writer.Observer):
    """Tries udevd's shared lock on the target while the download runs."""

    def __init__(self, target):
        self.target = target
        self.lock_refused = []

    def progress(self, present, size):
        fd = os.open(self.target, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            self.lock_refused.append(False)
        except BlockingIOError:
            self.lock_refused.append(True)
        finally:
            os.close(fd)


@requires_root
def test_udev_hears_of_the_write_once_and_never_probes_it_midway(tmp_path):
    # libtorrent opens and closes its file for every 16 KiB block; through
    # the disk's own node each close would make udevd re-read the
    # partition table and probe the disk (thousands of times per image on
    # a real ramdisk). The writer gives libtorrent a node of its own and
    # holds the disk under systemd's exclusive lock, so udevd sees one
    # close, at the end, and cannot probe a half-written disk.
    path, data, meta = _bigger_image(tmp_path)
    backing = backing_file(tmp_path / 'loop.img', len(data))
    with helpers.seeding(meta, path) as seed, loop_device(backing) as dev:
        closes = _CloseWrites(dev)
        probe = _LockProbe(dev)
        try:
            result = helpers.write_from(
                seed, meta, dev, expected_sha256=helpers.sha256(data),
                observer=probe)
        finally:
            closes.close()
        assert result.sha256 == helpers.sha256(data)
        assert helpers.read(dev, len(data)) == data
        assert closes.count == 1
        assert probe.lock_refused and all(probe.lock_refused)
        # The private node is gone, and udevd may lock the disk again.
        assert not [n for n in os.listdir('/dev')
                    if n == '.ironic-bt-%s' % os.path.basename(dev)]
        fd = os.open(dev, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
