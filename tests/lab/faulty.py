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

"""A disk that fails on purpose, for tests: a FUSE file with a bad range.

There is no device-mapper (``dm-error``, ``dm-flakey``) in every kernel
the tests run on, so a failing disk is a loop device over a file served by
this FUSE file system. The file is a real file underneath; inside one byte
range it either refuses writes with EIO (a disk whose writes fail) or
returns flipped bytes on reads (a disk that returns wrong data). The
loop device turns either into what a real failing disk gives the kernel:
failed write-back, or reads that differ from what was written.

:class:`FaultyDisk` mounts it in a directory of the test's own, attaches
the loop device (checked to be backed by that file before it is handed
out) and undoes everything on exit, the FUSE process by PID.

``python -m tests.lab.faulty MOUNTPOINT BACKING --fail-writes OFF:LEN`` (or
``--corrupt-reads``) runs the file system in the foreground.
"""

import argparse
import contextlib
import errno
import json
import os
import subprocess
import sys
import time

from tests.lab import procs

NAME = 'disk.img'
#: Bytes per FUSE write request; the loop device's requests are kept
#: smaller (see FaultyDisk).
MAX_WRITE = 128 * 1024


def _overlap(offset, length, bad):
    start = max(offset, bad[0])
    end = min(offset + length, bad[0] + bad[1])
    return (start, end) if start < end else None


def _record_failure(path, offset, length):
    # Written once, whole (rename), so a reader never sees half of it.
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump({'time': time.time(), 'offset': offset,
                   'length': length}, f)
    os.replace(tmp, path)


def serve(mountpoint, backing, fail_writes=None, corrupt_reads=None,
          failure_log=None):
    """Serve ``backing`` as ``MOUNTPOINT/disk.img`` until unmounted.

    :param failure_log: a file to write the wall-clock time, offset and
        length of the first failed write to, as JSON.
    """
    import fuse

    class Faulty(fuse.Operations):
        def __init__(self):
            self.fd = os.open(backing, os.O_RDWR)
            self.failed_writes = 0

        def getattr(self, path, fh=None):
            if path == '/':
                return {'st_mode': 0o40755, 'st_nlink': 2}
            if path != '/' + NAME:
                raise fuse.FuseOSError(errno.ENOENT)
            st = os.fstat(self.fd)
            return {'st_mode': 0o100600, 'st_nlink': 1,
                    'st_size': st.st_size, 'st_mtime': st.st_mtime,
                    'st_ctime': st.st_ctime, 'st_atime': st.st_atime}

        def readdir(self, path, fh):
            return ['.', '..', NAME]

        def open(self, path, flags):
            if path != '/' + NAME:
                raise fuse.FuseOSError(errno.ENOENT)
            return 0

        def read(self, path, size, offset, fh):
            data = os.pread(self.fd, size, offset)
            bad = corrupt_reads and _overlap(offset, len(data), corrupt_reads)
            if bad:
                start, end = bad[0] - offset, bad[1] - offset
                data = (data[:start]
                        + bytes(b ^ 0x5a for b in data[start:end])
                        + data[end:])
            return data

        def write(self, path, data, offset, fh):
            if fail_writes and _overlap(offset, len(data), fail_writes):
                self.failed_writes += 1
                if self.failed_writes == 1 and failure_log:
                    _record_failure(failure_log, offset, len(data))
                raise fuse.FuseOSError(errno.EIO)
            return os.pwrite(self.fd, data, offset)

        def truncate(self, path, length, fh=None):
            raise fuse.FuseOSError(errno.EPERM)

        def fsync(self, path, datasync, fh):
            os.fsync(self.fd)
            return 0

        def flush(self, path, fh):
            return 0

        def release(self, path, fh):
            return 0

    # direct_io: every read and write reaches this process, none is
    # answered from the page cache of the FUSE file. big_writes: a write
    # of up to max_write bytes comes as one request, so that a failed
    # request fails all of the loop device's I/O (see FaultyDisk).
    fuse.FUSE(Faulty(), mountpoint, foreground=True, nothreads=True,
              direct_io=True, allow_other=True, big_writes=True,
              max_write=MAX_WRITE)


def _range(value):
    offset, _sep, length = value.partition(':')
    return int(offset), int(length)


class FaultyDisk:
    """A loop device whose writes fail, or whose reads lie, in one range.

    :param directory: a directory the test created (the backing file and
        the mount point go there).
    :param size: bytes of the disk.
    :param fail_writes: ``(offset, length)`` that refuses writes with EIO.
    :param corrupt_reads: ``(offset, length)`` whose reads come back
        flipped.
    :param lab: a :class:`tests.lab.net.Lab` whose teardown must undo the
        mount and the loop device if the test process dies first; both are
        registered with it before they exist.
    """

    def __init__(self, directory, size, fail_writes=None,
                 corrupt_reads=None, lab=None):
        self.directory = os.path.abspath(directory)
        self.size = size
        self.fail_writes = fail_writes
        self.corrupt_reads = corrupt_reads
        self.backing = os.path.join(self.directory, 'faulty-backing.img')
        self.mountpoint = os.path.join(self.directory, 'faulty-mnt')
        self.path = os.path.join(self.mountpoint, NAME)
        self.failure_log = os.path.join(self.directory,
                                        'faulty-first-failure.json')
        self.lab = lab
        self.device = None
        self._proc = None
        self._mounted = False
        self._created = False

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self):
        with open(self.backing, 'xb') as f:
            self._created = True
            f.truncate(self.size)
        os.mkdir(self.mountpoint)
        if self.lab is not None:
            # The FUSE process is not recorded for the lab's teardown to
            # kill: killed first, it would unmount before the loop device
            # is detached, which then no longer names its backing file.
            # It exits by itself once the teardown has unmounted it.
            self.lab.register_mount(self.mountpoint)
        cmd = [sys.executable, '-m', 'tests.lab.faulty', self.mountpoint,
               self.backing]
        if self.fail_writes:
            cmd += ['--fail-writes', '%d:%d' % self.fail_writes,
                    '--failure-log', self.failure_log]
        if self.corrupt_reads:
            cmd += ['--corrupt-reads', '%d:%d' % self.corrupt_reads]
        root = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        self._proc = subprocess.Popen(cmd, cwd=root)
        procs.wait_for(lambda: os.path.exists(self.path), 30, 0.05,
                       'the FUSE file system of %s' % self.path,
                       proc=self._proc)
        self._mounted = True
        if self.lab is not None:
            self.lab.register_loop(self.path)
        out = subprocess.run(['losetup', '--find', '--show', self.path],
                             check=True, capture_output=True, text=True)
        device = out.stdout.strip()
        self.device = device
        if self.lab is not None:
            self.lab.register_loop(self.path, device)
        # Write only to what this test made: the loop device must be ours.
        name = os.path.basename(device)
        with open('/sys/block/%s/loop/backing_file' % name) as f:
            backing = f.read().strip()
        if backing != self.path:
            raise RuntimeError('%s is backed by %s, not by %s'
                               % (device, backing, self.path))
        # The loop device reports a short write of its backing file as a
        # success (only a negative result fails the request). Requests no
        # larger than one FUSE write either land whole or fail whole, so a
        # failed write reaches the kernel as the EIO a real disk gives.
        with open('/sys/block/%s/queue/max_sectors_kb' % name, 'w') as f:
            f.write(str(MAX_WRITE // 1024 // 2))

    @property
    def first_failed_write(self):
        """The first write refused, or None while none was.

        :returns: a dict with ``time`` (epoch seconds), ``offset`` and
            ``length``.
        """
        try:
            with open(self.failure_log) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def __exit__(self, *exc):
        if self.device:
            subprocess.run(['losetup', '--detach', self.device], check=False)
            self.device = None
        if self._mounted:
            # The loop device may let go of the file a moment later.
            for _attempt in range(50):
                if subprocess.run(['umount', self.mountpoint],
                                  capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                subprocess.run(['umount', '-l', self.mountpoint],
                               check=False)
            self._mounted = False
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(self.mountpoint)
        if self._created:
            for path in (self.backing, self.failure_log):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._created = False


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m tests.lab.faulty')
    p.add_argument('mountpoint')
    p.add_argument('backing')
    p.add_argument('--fail-writes', type=_range, metavar='OFFSET:LENGTH')
    p.add_argument('--corrupt-reads', type=_range, metavar='OFFSET:LENGTH')
    p.add_argument('--failure-log', metavar='PATH',
                   help='write the time of the first failed write here')
    args = p.parse_args(argv)
    serve(args.mountpoint, args.backing, fail_writes=args.fail_writes,
          corrupt_reads=args.corrupt_reads, failure_log=args.failure_log)
    return 0


if __name__ == '__main__':
    sys.exit(main())
