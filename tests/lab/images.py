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


"""Test images: random, sparse, and realistic whole-disk images.

Everything is deterministic for a given seed (same bytes, same sha256), so
torrents built from them get the same info-hash run after run. Nothing is
ever mounted: the disk image is assembled by ``sfdisk``, ``mkfs.vfat
--offset`` and ``mkfs.ext4 -d DIR -E offset=...`` working on the plain
file.
"""

import dataclasses
import os
import random
import shutil
import stat
import subprocess
import tempfile
import uuid

from tests.lab import disks

_CHUNK = 4 * 1024 * 1024
_MIB = 1024 * 1024
_SECTOR = 512
# Timestamp given to generated files and file systems (2023-11-14), so
# that images are byte-identical from run to run.
FIXED_EPOCH = 1700000000

_ESP_TYPE = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'
_LINUX_TYPE = '0FC63DAF-8483-4772-8E79-3D69D8477DE4'

# tool -> Debian package providing it.
_PACKAGES = {
    'sfdisk': 'fdisk (util-linux; part of util-linux before Debian 9)',
    'mkfs.ext4': 'e2fsprogs',
    'mkfs.vfat': 'dosfstools',
}


@dataclasses.dataclass(frozen=True)
class Image:
    """A generated image file."""

    path: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Partition:
    """One partition of a :class:`DiskImage` (offsets in bytes)."""

    number: int
    start: int
    size: int
    fstype: str
    name: str
    uuid: str


@dataclasses.dataclass(frozen=True)
class DiskImage(Image):
    """A whole-disk image with a GPT."""

    partitions: tuple = ()
    disk_uuid: str = ''


def _require(tool):
    path = shutil.which(tool)
    if not path:
        raise RuntimeError('%s not found: install the Debian package %s'
                           % (tool, _PACKAGES.get(tool, tool)))
    return path


def _open_new(path, size):
    """Create (or truncate) a regular file at ``path`` of ``size`` bytes.

    Refuses anything but a regular file, so that a stray path can never
    make us write to a device or through a symlink.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(st.st_mode):
            raise ValueError('%s exists and is not a regular file' % path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                 0o644)
    os.ftruncate(fd, size)
    return fd


def _write_random(fd, offset, length, rng):
    while length > 0:
        n = min(length, _CHUNK)
        os.pwrite(fd, rng.randbytes(n), offset)
        offset += n
        length -= n


def make_random_image(path, size, seed=0):
    """An image of ``size`` pseudo-random bytes (incompressible)."""
    rng = random.Random(seed)
    fd = _open_new(path, size)
    try:
        _write_random(fd, 0, size, rng)
        os.fsync(fd)
    finally:
        os.close(fd)
    return Image(path, size, disks.sha256_region(path, size))


def make_sparse_image(path, size, nonzero_fraction=0.1, seed=0, extents=4):
    """An image that is mostly zeros, like a freshly installed disk.

    About ``nonzero_fraction`` of it is random data in ``extents`` runs
    (4 KiB aligned, spread over the image); the rest is holes, so the
    file is sparse on disk too (it is sized with truncate and the data
    written at offsets).
    """
    if not 0 <= nonzero_fraction <= 1:
        raise ValueError('nonzero_fraction must be within [0, 1]')
    rng = random.Random(seed)
    data_total = int(size * nonzero_fraction)
    fd = _open_new(path, size)
    try:
        if data_total:
            count = max(1, min(extents, data_total // 4096 or 1))
            segment = size // count
            per_extent = data_total // count
            for i in range(count):
                length = per_extent
                if i == count - 1:
                    length = data_total - per_extent * (count - 1)
                slack = max(0, segment - length)
                offset = i * segment + rng.randrange(slack // 4096 + 1) * 4096
                offset = max(0, min(offset, size - length))
                _write_random(fd, offset, length, rng)
        os.fsync(fd)
    finally:
        os.close(fd)
    return Image(path, size, disks.sha256_region(path, size))


def _uuid(rng):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _populate_root(root, rng, payload):
    """Generate a small root file system tree with ``payload`` bytes."""
    def write(rel, data, mode=0o644):
        full = os.path.join(root, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, 'wb') as f:
            f.write(data)
        os.chmod(full, mode)

    big = payload * 2 // 5
    write('boot/vmlinuz', rng.randbytes(big))
    write('boot/initrd.img', rng.randbytes(big))
    os.symlink('vmlinuz', os.path.join(root, 'boot/vmlinuz-lab'))
    rest = payload - 2 * big
    for i in range(8):
        write('usr/lib/lab/blob-%d.bin' % i, rng.randbytes(rest // 8))
    write('etc/hostname', b'lab-node\n')
    write('etc/os-release', b'NAME="ironic-bt lab"\nID=ibtlab\n')
    write('etc/motd', b'Deployed by ironic-bt.\n' * 10)
    write('usr/bin/hello', b'#!/bin/sh\necho hello\n', 0o755)
    doc = ''.join('line %d of a generated document\n' % i
                  for i in range(2000)).encode()
    write('usr/share/doc/lab/README', doc)
    os.makedirs(os.path.join(root, 'var/log'))
    os.makedirs(os.path.join(root, 'tmp'))
    os.chmod(os.path.join(root, 'tmp'), 0o1777)
    # Fixed timestamps: mkfs.ext4 -d copies them into the image.
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name),
                     (FIXED_EPOCH, FIXED_EPOCH), follow_symlinks=False)
    os.utime(root, (FIXED_EPOCH, FIXED_EPOCH))


def _fix_ctimes(path, offset, root, env):
    """Give every inode of the ext4 at ``offset`` fixed ctime and atime.

    ``mkfs.ext4 -d`` copies each source file's ctime, which is the time
    the file was generated and cannot be set from user space, and its
    atime, which mkfs's own reading just updated (relatime); debugfs
    (e2fsprogs, like mkfs.ext4) rewrites it so the image is the same from
    run to run.
    """
    debugfs = shutil.which('debugfs')
    if not debugfs:
        return
    paths = ['/', '/lost+found']
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            paths.append('/' + os.path.normpath(os.path.join(rel, name)))
    script = ''.join('sif "%s" %s @%d\n' % (p, field, FIXED_EPOCH)
                     for p in paths for field in ('ctime', 'atime'))
    with tempfile.NamedTemporaryFile('w', suffix='.debugfs') as f:
        f.write(script)
        f.flush()
        _run([debugfs, '-w', '-f', f.name,
              '%s?offset=%d' % (path, offset)], env=env)


def _run(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError('%s failed (exit %d): %s' % (
            ' '.join(cmd), proc.returncode, proc.stderr.strip()))
    return proc


def make_disk_image(path, size_mib=64, seed=0, esp_mib=8, payload_mib=None):
    """A realistic, mostly sparse whole-disk image with a GPT.

    Partition 1 is an EFI system partition (FAT, empty) when dosfstools
    is installed (otherwise it is left out); the last one is an ext4 root
    file system populated with ``payload_mib`` (default size/16) of
    generated files. The image is deterministic for a given seed.

    :raises RuntimeError: a tool is missing (names the Debian package).
    """
    sfdisk = _require('sfdisk')
    mkfs_ext4 = _require('mkfs.ext4')
    mkfs_vfat = shutil.which('mkfs.vfat')
    if not mkfs_vfat:
        esp_mib = 0
    if payload_mib is None:
        payload_mib = max(1, size_mib // 16)
    if size_mib < esp_mib + payload_mib + 16:
        raise ValueError('size_mib=%d too small for the partitions'
                         % size_mib)
    rng = random.Random(seed)
    size = size_mib * _MIB
    total_sectors = size // _SECTOR
    disk_uuid = _uuid(rng)
    esp_uuid, root_uuid, fs_uuid, hash_seed = (_uuid(rng) for _ in range(4))

    # 1 MiB alignment; leave room for the backup GPT at the end.
    lines = ['label: gpt', 'label-id: %s' % disk_uuid, 'unit: sectors',
             'first-lba: 2048', '']
    start = 2048
    if esp_mib:
        esp_sectors = esp_mib * _MIB // _SECTOR
        lines.append('start=%d, size=%d, type=%s, uuid=%s, name="EFI System"'
                     % (start, esp_sectors, _ESP_TYPE, esp_uuid))
        start += esp_sectors
    root_sectors = (total_sectors - 34 - start) // 2048 * 2048
    lines.append('start=%d, size=%d, type=%s, uuid=%s, name="root"'
                 % (start, root_sectors, _LINUX_TYPE, root_uuid))

    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(FIXED_EPOCH),
               SOURCE_DATE_EPOCH=str(FIXED_EPOCH))
    fd = _open_new(path, size)
    os.close(fd)
    proc = subprocess.run(
        [sfdisk, '--quiet', '--no-reread', '--no-tell-kernel', path],
        input='\n'.join(lines) + '\n', capture_output=True, text=True,
        check=False)
    if proc.returncode != 0:
        raise RuntimeError('sfdisk failed: %s' % proc.stderr.strip())

    partitions = []
    number = 1
    if esp_mib:
        _run([mkfs_vfat, '--invariant', '-i', '%08x' % rng.getrandbits(32),
              '-n', 'EFI', '--offset=2048', path,
              str(esp_mib * 1024)], env=env)
        partitions.append(Partition(1, 2048 * _SECTOR, esp_mib * _MIB,
                                    'vfat', 'EFI System', esp_uuid))
        number = 2

    with tempfile.TemporaryDirectory(prefix='ibt-rootfs-') as root:
        _populate_root(root, rng, payload_mib * _MIB)
        offset = start * _SECTOR
        _run([mkfs_ext4, '-q', '-F', '-b', '4096', '-L', 'root',
              '-U', fs_uuid, '-d', root,
              '-E', 'offset=%d,lazy_itable_init=1,lazy_journal_init=1,'
                    'nodiscard,root_owner=0:0,hash_seed=%s'
                    % (offset, hash_seed),
              path, '%dk' % (root_sectors * _SECTOR // 1024)], env=env)
        _fix_ctimes(path, offset, root, env)
    partitions.append(Partition(number, start * _SECTOR,
                                root_sectors * _SECTOR, 'ext4', 'root',
                                root_uuid))
    if os.path.getsize(path) != size:
        raise RuntimeError('%s changed size while being built' % path)
    return DiskImage(path, size, disks.sha256_region(path, size),
                     tuple(partitions), disk_uuid)


def nonzero_bytes(path, block=4096):
    """Bytes of a file in ``block``-sized blocks that are not all zero.

    What a zero-aware copy must carry: the image less its zero blocks.
    """
    total = 0
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1024 * block), b''):
            for i in range(0, len(chunk), block):
                part = chunk[i:i + block]
                if part.count(0) != len(part):
                    total += len(part)
    return total


#: Fixed GUIDs of :func:`make_labelled_image`, so that its images are the
#: same at every run.
_DISK_GUID = '5ec0b1e4-7a1b-4c1d-9e2f-000000000001'
_PART_GUID = '5ec0b1e4-7a1b-4c1d-9e2f-000000000002'


def make_labelled_image(path, size, sparse=False):
    """A whole-disk image of random data (``sparse``: mostly zeros).

    It carries a GPT with one partition over the data: IPA's ``direct``
    path reads the partition table of what it wrote (``parted print``)
    and fails a deploy of an image without one. Random, unlike
    :func:`make_disk_image` (mostly zeros), so that bittorrent's skipping
    of all-zero pieces does not count as speed.
    """
    if sparse:
        make_sparse_image(path, size)
    else:
        make_random_image(path, size)
    part = 'start=2048, type=%s, uuid=%s, name="data"' % (
        _LINUX_TYPE, _PART_GUID)
    table = '\n'.join(['label: gpt', 'label-id: %s' % _DISK_GUID,
                       'unit: sectors', 'first-lba: 2048', '', part, ''])
    subprocess.run([_require('sfdisk'), '--quiet', '--no-reread',
                    '--no-tell-kernel', path], input=table, text=True,
                   check=True, capture_output=True)
    if os.path.getsize(path) != size:
        raise RuntimeError('%s changed size while being labelled' % path)
    return Image(path, size, disks.sha256_region(path, size))
