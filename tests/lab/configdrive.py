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

"""Check a disk that holds a GPT whole-disk image and a config drive.

After the image, the agent adds the config drive as a partition of its own
behind the image's (what IPA does for a whole-disk image). That changes
the protective MBR's record (it now spans the disk), the primary GPT
header and entries, and the bytes from the new partition on; everything
else must be the image's, byte for byte. The config drive itself is an
ISO 9660 file system (Nova's default), read here with ``isoinfo``.
"""

import json
import struct
import subprocess

SECTOR = 512
#: The protective MBR's first partition record.
_MBR_RECORD = (446, 462)
#: LBA 1-33: the primary GPT header and 128 entries of 128 bytes.
_PRIMARY_GPT_END = 34 * SECTOR


class DiskMismatch(AssertionError):
    """The disk does not hold the image (the message says where)."""


def _reader(path):
    def read(offset, length):
        with open(path, 'rb') as f:
            f.seek(offset)
            return f.read(length)
    return read


def gpt_entries(path):
    """The used GPT partition entries: [(first LBA, last LBA, raw entry)].

    :raises: DiskMismatch if ``path`` has no GPT.
    """
    read = _reader(path)
    header = read(SECTOR, 92)
    if header[:8] != b'EFI PART':
        raise DiskMismatch('%s has no GPT header at LBA 1' % path)
    start, count, size = struct.unpack_from('<QII', header, 72)
    table = read(start * SECTOR, count * size)
    entries = []
    for i in range(count):
        raw = table[i * size:(i + 1) * size]
        if raw[:16] != bytes(16):
            first, last = struct.unpack_from('<QQ', raw, 32)
            entries.append((first, last, raw))
    return entries


def check_disk(device, image_path, skip=()):
    """Check that ``device`` holds the image, plus one config drive.

    :param skip: partition entries (first LBA, last LBA, raw entry) of the
        image whose contents are not compared: a root file system that the
        instance has mounted since.

    :returns: the config drive's partition entry (first LBA, last LBA,
        raw entry).
    :raises: DiskMismatch naming the device and what differs.
    """
    image_entries = gpt_entries(image_path)
    disk_entries = gpt_entries(device)
    if [e[2] for e in disk_entries[:-1]] != [e[2] for e in image_entries]:
        raise DiskMismatch('%s: the image\'s partition entries changed '
                           '(image %d, disk %d partitions)'
                           % (device, len(image_entries), len(disk_entries)))
    drive = disk_entries[-1]
    if drive[0] <= max(e[1] for e in image_entries):
        raise DiskMismatch('%s: no partition behind the image\'s (the '
                           'last starts at LBA %d)' % (device, drive[0]))
    with open(image_path, 'rb') as f:
        image = f.read()
    end = min(drive[0] * SECTOR, len(image))
    disk = _reader(device)(0, end)
    ranges = [(0, _MBR_RECORD[0]), (_MBR_RECORD[1], SECTOR),
              (_PRIMARY_GPT_END, end)]
    for first, last, _raw in sorted(skip):
        ranges = [piece for start, stop in ranges for piece in (
            (start, min(stop, first * SECTOR)),
            (max(start, (last + 1) * SECTOR), stop)) if piece[0] < piece[1]]
    for start, stop in ranges:
        if disk[start:stop] != image[start:stop]:
            first = next(i for i in range(start, stop)
                         if disk[i] != image[i])
            raise DiskMismatch('%s differs from %s at byte %d'
                               % (device, image_path, first))
    return drive


def config_drive_file(device, entry, out):
    """Copy the config drive partition of ``device`` to the file ``out``."""
    first, last, _raw = entry
    with open(device, 'rb') as src, open(out, 'wb') as dst:
        src.seek(first * SECTOR)
        dst.write(src.read((last - first + 1) * SECTOR))
    return out


def read_json(iso, path):
    """A JSON file of the config drive (``/openstack/latest/...``)."""
    out = subprocess.run(['isoinfo', '-R', '-i', iso, '-x', path],
                         capture_output=True, check=True).stdout
    return json.loads(out)
