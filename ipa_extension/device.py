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

"""The install device: its size, zeroing, flushing and reading it back.

Everything the writer does to the target besides libtorrent's own writes is
here, and none of it imports libtorrent.

:class:`Target` holds the device open from the first write to the end of
verification. libtorrent's POSIX disk backend opens and closes the target
for every 16 KiB block, and the *last* close of a block device writes its
page cache out and drops it: one GiB took about three times as long as with
a descriptor held elsewhere. Holding one also makes write-back errors
visible: ``close()`` does not report them, but ``fsync`` on a descriptor
that was open when the error happened does (the kernel's per-file error
sequence), so :meth:`Target.flush` turns a failing disk into an error that
names the device and the errno, instead of a piece that fails its hash and
a seeder banned for it.

Those per-block closes would also each wake systemd-udevd, which watches
the disk's device node for ``IN_CLOSE_WRITE``: on every one it re-reads the
partition table (the image's partitions come and go under the writer) and
probes the disk and each partition again. On a real ramdisk that is tens of
thousands of events per image, udevd busy reading the disk throughout, and
``udevadm settle`` (partprobe) waiting minutes for the queue afterwards. So
libtorrent writes through a device node of its own (:attr:`Target.
write_path`): the same device, another inode, which udevd does not watch.
The target itself is held under an exclusive BSD lock while it is written,
as systemd's block device locking protocol asks of partitioners and
``mkfs``, so that udevd does not probe a half-written disk, and its one
close at the end brings the one change event that a ``dd`` would.

:class:`ReadBack` reads the image region back from the device behind the
download front, with O_DIRECT, while the download goes on, computing the
sha256 of the region (and, without the image's sha256, checking each piece
against the torrent's hash). Its ``fsync`` every ``flush_interval``
seconds and the write-back that O_DIRECT reads force bring a failed write
to light within about a second of the kernel writing it.
"""

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import stat
import struct
import threading
import time

from oslo_log import log

from ipa_extension import errors
from ironic_bt.common.i18n import _

LOG = log.getLogger(__name__)

_BLKGETSIZE64 = 0x80081272
_BLKZEROOUT = 0x127f
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
#: Bytes per read-back (whole pieces, at least one): few system calls,
#: bounded memory.
READ_CHUNK = 4 * 1024 * 1024
ALIGN = 4096
#: Seconds to wait for udevd to finish probing the target (it holds a
#: shared lock meanwhile) before writing without the exclusive lock.
LOCK_WAIT = 10.0


def describe_os_error(error):
    """``[Errno 5] EIO: Input/output error``-style text for an OSError."""
    code = getattr(error, 'errno', None)
    if code is None:
        return str(error)
    return '[Errno %d] %s: %s' % (code, errno.errorcode.get(code, '?'),
                                  os.strerror(code))


def target_size(path, create=False):
    """Size of a block device, or None for a regular file (it may grow).

    :param create: accept a path that does not exist yet (a new file).
    :raises: TargetError if the path is neither, or missing and not
        ``create``.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if create:
            return None
        raise errors.TargetError(
            _('Target %s does not exist. Check the device name (a typo '
              'would otherwise create a file).') % path)
    except OSError as e:
        raise errors.TargetError(_('Cannot access target %(t)s: %(e)s')
                                 % {'t': path, 'e': e})
    if stat.S_ISREG(st.st_mode):
        return None
    if not stat.S_ISBLK(st.st_mode):
        raise errors.TargetError(_('Target %s is neither a block device '
                                   'nor a regular file.') % path)
    try:
        with open(path, 'rb') as f:
            buf = fcntl.ioctl(f.fileno(), _BLKGETSIZE64, b'\0' * 8)
    except OSError as e:
        raise errors.TargetError(_('Cannot read the size of block device '
                                   '%(t)s: %(e)s') % {'t': path, 'e': e})
    return struct.unpack('Q', buf)[0]


def save_path(path):
    """The directory libtorrent is told to save the image in."""
    return os.path.dirname(os.path.abspath(path))


def file_name(path):
    """The name libtorrent gives the torrent's one file: the target's."""
    return os.path.basename(path)


def zero_runs(meta):
    """Contiguous byte ranges (offset, length) of the all-zero pieces."""
    runs = []
    for index in sorted(meta.zero_pieces):
        offset = index * meta.piece_length
        length = meta.piece_size(index)
        if runs and runs[-1][0] + runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + length)
        else:
            runs.append((offset, length))
    return runs


def _punch_hole(fd, offset, length):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int,
                               ctypes.c_int64, ctypes.c_int64]
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def write_zeros(fd, offset, length):
    """Write ``length`` zero bytes at ``offset`` (the slow fallback)."""
    zeros = bytes(min(length, READ_CHUNK))
    end = offset + length
    while offset < end:
        offset += os.pwrite(fd, zeros[:end - offset], offset)


class Target:
    """The install device (or a file), held open while the image is written.

    :param path: a block device or a regular file.
    :param create: create ``path`` as a regular file if it is missing.
    """

    def __init__(self, path, create=False):
        self.path = path
        #: Bytes of a block device; None for a regular file.
        self.size = target_size(path, create=create)
        self.is_block = self.size is not None
        self._fd = None
        self._node = None
        self._flush_error = None

    @property
    def write_path(self):
        """The path libtorrent opens for each block: see the module."""
        return self._node or self.path

    def check_fits(self, meta):
        """Refuse an image larger than the device, before writing.

        :raises: TargetError naming both sizes.
        """
        if self.is_block and self.size < meta.size:
            raise errors.TargetError(
                _('Image %(ih)s is %(img)d bytes but target %(t)s holds only '
                  '%(dev)d bytes. Choose a larger disk (root device hints) '
                  'or a smaller image.')
                % {'ih': meta.info_hash, 'img': meta.size, 't': self.path,
                   'dev': self.size})

    def open(self):
        """Open the target for the whole write; idempotent."""
        if self._fd is None:
            flags = os.O_RDWR | (0 if self.is_block else os.O_CREAT)
            try:
                self._fd = os.open(self.path, flags, 0o600)
            except OSError as e:
                raise errors.TargetError(
                    _('Cannot open target %(t)s for writing: %(e)s')
                    % {'t': self.path, 'e': describe_os_error(e)})
            if self.is_block:
                self._lock()
                self._make_node()
        return self

    def _lock(self):
        """Take the exclusive BSD lock of systemd's locking protocol."""
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK) \
                        or time.monotonic() > deadline:
                    LOG.warning('Cannot lock %(t)s against udev probing '
                                '(%(e)s): writing anyway; udev may probe '
                                'the disk while it is written',
                                {'t': self.path, 'e': describe_os_error(e)})
                    return
            time.sleep(0.1)

    def _make_node(self):
        """Make the device node libtorrent writes through (see the module).

        It sits next to the target's own node (device file systems allow
        nodes; /run and /tmp are often ``nodev``), readable by root only,
        and goes in :meth:`close`. Where nodes cannot be made (no
        CAP_MKNOD), libtorrent uses the target's path, and udevd re-probes
        the disk after every block.
        """
        real = os.path.realpath(self.path)
        node = os.path.join(os.path.dirname(real),
                            '.ironic-bt-%s' % os.path.basename(real))
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(node)
            os.mknod(node, stat.S_IFBLK | 0o600,
                     os.fstat(self._fd).st_rdev)
        except OSError as e:
            LOG.warning('Cannot make a device node for %(t)s at %(n)s '
                        '(%(e)s): libtorrent writes through %(t)s, and udev '
                        'probes the disk after each block it writes',
                        {'t': self.path, 'n': node,
                         'e': describe_os_error(e)})
            return
        self._node = node

    def close(self):
        if self._node is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._node)
            self._node = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def zero(self, meta):
        """Make the all-zero pieces of ``meta`` read as zeros.

        Block devices get BLKZEROOUT, which thin-provisioned and loop
        devices turn into unmap, and others into zero writes without a round
        trip through user space. Files get holes punched. Either falls back
        to writing zeros.

        :raises: TargetError naming the device and the errno.
        :returns: the number of bytes zeroed.
        """
        self.open()
        runs = zero_runs(meta)
        try:
            if not self.is_block and os.fstat(self._fd).st_size < meta.size:
                os.ftruncate(self._fd, meta.size)
            for offset, length in runs:
                self._zero_run(offset, length)
        except OSError as e:
            raise errors.TargetError(
                _('Cannot write to target %(t)s: %(e)s. Check the disk and '
                  'the kernel log.') % {'t': self.path,
                                        'e': describe_os_error(e)})
        self.flush()
        return sum(length for _offset, length in runs)

    def _zero_run(self, offset, length):
        try:
            if self.is_block:
                fcntl.ioctl(self._fd, _BLKZEROOUT,
                            struct.pack('QQ', offset, length))
            else:
                _punch_hole(self._fd, offset, length)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                raise
            write_zeros(self._fd, offset, length)

    def flush(self):
        """Write everything out to stable storage, reporting any failure.

        An ``fsync`` on the held descriptor reports a write-back error that
        happened while it was open, including those of libtorrent's own
        writes through descriptors it has closed since; the kernel reports
        it once per descriptor, so the first one is kept and raised again by
        every later call, from whichever thread.

        :raises: TargetError naming the device and the errno.
        """
        if self._flush_error is not None:
            raise self._flush_error
        self.open()
        try:
            os.fsync(self._fd)
        except OSError as e:
            self._flush_error = errors.TargetError(
                _('Writing to %(t)s failed: %(e)s. The disk did not store '
                  'what was written to it; check the disk\'s health and the '
                  'kernel log (dmesg). The network is not at fault.')
                % {'t': self.path, 'e': describe_os_error(e)})
            raise self._flush_error


def open_direct(path):
    """Open ``path`` for reading around the page cache, if it allows.

    O_DIRECT reads come from the device itself, and a read-back of the
    whole image neither fills the page cache nor costs a copy through it.
    Some file systems refuse O_DIRECT (EINVAL); then the page cache is
    dropped for each range before it is read instead.
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT), True
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    return os.open(path, os.O_RDONLY), False


class ReadBack:
    """Read the image region back from the target and check it.

    The writer tells it which pieces are on the disk (:meth:`update`); a
    thread reads the longest run of present pieces after the last one it
    read and feeds the sha256 of the region. Every ``flush_interval``
    seconds it also flushes the target, so that a failed write surfaces
    while the download goes on. :meth:`check` raises what the thread found,
    :meth:`finish` waits for the last piece.

    With the image's sha256 that one hash is the proof; the pieces' sha1s
    are only read again, in a second pass, to name the piece that differs
    if the sha256 does not match. Without it, every piece is checked
    against the torrent as it is read.

    :param target: an open :class:`Target`.
    :param meta: a :class:`ironic_bt.common.torrent.Metainfo`.
    :param expected_sha256: hex sha256 of the image, if known.
    :param flush_interval: seconds between flushes; 0 disables them.
    """

    def __init__(self, target, meta, expected_sha256=None,
                 flush_interval=1.0):
        self.target = target
        self.meta = meta
        self.expected_sha256 = expected_sha256
        self._check_pieces = not expected_sha256
        self.flush_interval = flush_interval
        try:
            self._fd, self._direct = open_direct(target.path)
        except OSError as e:
            raise errors.VerifyError(
                _('Cannot open %(t)s to verify it: %(e)s')
                % {'t': target.path, 'e': describe_os_error(e)})
        plen = meta.piece_length
        self._chunk_pieces = max(1, READ_CHUNK // plen)
        try:
            # An anonymous map is page aligned, as O_DIRECT needs.
            self._buf = mmap.mmap(-1, self._chunk_pieces * plen)
        except BaseException:
            os.close(self._fd)
            raise
        self._sha256 = hashlib.sha256()
        self._next = 0
        self._have = None
        self._error = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='read-back')
        self._thread.start()

    @property
    def verified_bytes(self):
        """Bytes read back and found to match, from the start of the image."""
        return min(self._next * self.meta.piece_length, self.meta.size)

    def update(self, have):
        """Pieces now on the disk: a sequence of bools, one per piece."""
        with self._cond:
            self._have = have
            self._cond.notify()

    def check(self):
        """Raise the error the thread found, if any."""
        if self._error is not None:
            raise self._error

    def finish(self, timeout=None):
        """Read what is left (every piece is on the disk by now).

        :raises: VerifyError or TargetError.
        :returns: the hex sha256 of the first ``meta.size`` bytes.
        """
        self.update([True] * self.meta.num_pieces)
        self._thread.join(timeout)
        self.check()
        if self._thread.is_alive():
            raise errors.VerifyError(
                _('Reading %(t)s back took longer than %(s)d s.')
                % {'t': self.target.path, 's': timeout})
        sha256 = self._sha256.hexdigest()
        if self.expected_sha256 and sha256 != self.expected_sha256.lower():
            # Name the piece that differs, if one does.
            again = verify(self.target.path, self.meta)
            if again == self.expected_sha256.lower():
                raise errors.VerifyError(
                    _('Reading %(t)s back twice gave different bytes (sha256 '
                      '%(one)s, then %(two)s): the disk returns unstable '
                      'data. Check its health and the kernel log (dmesg).')
                    % {'t': self.target.path, 'one': sha256, 'two': again})
            check_sha256(self.meta, self.target.path, again,
                         self.expected_sha256)
        return sha256

    def close(self, timeout=30):
        with self._cond:
            self._stop = True
            self._cond.notify()
        # A thread stuck in a dying disk's read or fsync is left behind (it
        # is a daemon): the writer must still return its error.
        self._thread.join(timeout)
        if self._thread.is_alive():
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self._buf.close()
        except BufferError:
            # A view of it is still referenced (by a traceback): the map
            # goes with the last reference.
            pass

    def _run(self):
        n = self.meta.num_pieces
        last_flush = time.monotonic()
        try:
            while self._next < n:
                with self._cond:
                    end = self._present_run()
                    while end == self._next and not self._stop:
                        wait = None
                        if self.flush_interval:
                            wait = max(0.0, last_flush + self.flush_interval
                                       - time.monotonic())
                            if wait == 0:
                                break
                        self._cond.wait(wait)
                        end = self._present_run()
                    if self._stop:
                        return
                if (self.flush_interval and time.monotonic() - last_flush
                        >= self.flush_interval):
                    self.target.flush()
                    last_flush = time.monotonic()
                if end > self._next:
                    self._read(self._next, end)
                    self._next = end
        except errors.WriterError as e:
            # Without its traceback, which holds views of the buffer.
            self._error = e.with_traceback(None)
        except Exception as e:  # noqa: any failure must reach the writer
            self._error = errors.VerifyError(
                _('Reading %(t)s back failed: %(e)s')
                % {'t': self.target.path, 'e': e})

    def _present_run(self):
        have = self._have
        end = self._next
        limit = min(self.meta.num_pieces, end + self._chunk_pieces)
        if have is None:
            return end
        while end < limit and have[end]:
            end += 1
        return end

    def _read(self, first, end):
        meta = self.meta
        plen = meta.piece_length
        offset = first * plen
        length = min(end * plen, meta.size) - offset
        # The last read is rounded up to whole 4 KiB blocks; a device holds
        # more than the image, a file ends early.
        want = -(-length // ALIGN) * ALIGN
        view = memoryview(self._buf)
        try:
            if not self._direct:
                # Only clean pages can be dropped: write the range out
                # first, so that what is read comes from the file system.
                os.fdatasync(self._fd)
                os.posix_fadvise(self._fd, offset, length,
                                 os.POSIX_FADV_DONTNEED)
            got = os.preadv(self._fd, [view[:want]], offset)
        except OSError as e:
            raise errors.TargetError(
                _('Reading bytes %(off)d-%(end)d back from %(t)s failed: '
                  '%(e)s. The disk did not store what was written to it; '
                  'check the disk\'s health and the kernel log (dmesg). The '
                  'network is not at fault.')
                % {'off': offset, 'end': offset + length - 1,
                   't': self.target.path, 'e': describe_os_error(e)})
        if got < length:
            raise errors.VerifyError(
                _('Target %(t)s ends at byte %(got)d: it holds fewer bytes '
                  'than the %(size)d of the image.')
                % {'t': self.target.path, 'got': offset + got,
                   'size': meta.size})
        data = view[:length]
        self._sha256.update(data)
        if not self._check_pieces:
            return
        for start in range(0, length, plen):
            index = first + start // plen
            piece = data[start:start + plen]
            if hashlib.sha1(piece).digest() != meta.piece_hash(index):
                raise errors.VerifyError(
                    _('Piece %(i)d (bytes %(off)d-%(end)d) read back from '
                      '%(t)s does not match the image, although it passed '
                      'its hash check when it was written. The disk is '
                      'failing or returns wrong data; check its health and '
                      'the kernel log (dmesg).')
                    % {'i': index, 'off': index * plen,
                       'end': index * plen + len(piece) - 1,
                       't': self.target.path})


def check_sha256(meta, path, sha256, expected_sha256):
    """Refuse a region whose sha256 is not the image's.

    :raises: VerifyError naming both checksums.
    """
    if expected_sha256 and sha256 != expected_sha256.lower():
        # Every piece matched the torrent, so the torrent is the culprit.
        raise errors.VerifyError(
            _('Image %(ih)s on %(t)s has sha256 %(got)s, but the image '
              'checksum is %(want)s. The torrent was not made from this '
              'image; publish it again.')
            % {'ih': meta.info_hash, 't': path, 'got': sha256,
               'want': expected_sha256})


def verify(path, meta, expected_sha256=None):
    """Read the image region of ``path`` back and check it, all at once.

    :raises: VerifyError naming the first piece that does not match, or the
        mismatching sha256.
    :returns: the hex sha256 of the first ``meta.size`` bytes.
    """
    readback = ReadBack(Target(path), meta, expected_sha256=expected_sha256,
                        flush_interval=0)
    try:
        return readback.finish()
    finally:
        readback.close()
