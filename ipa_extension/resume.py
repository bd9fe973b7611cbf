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

"""Find the pieces of an image that the target already holds.

An agent that restarts in the middle of a download (or a node deployed
again with the same image) finds part of the image on its disk. libtorrent
could check it itself, but only through resume data, which it rejects on a
block device (a device stats as size 0), or by hashing the whole target on
its network thread before the download starts.

This module does it before the torrent is added, reading with O_DIRECT
and hashing each piece against its v1 (sha1) hash, but only when a sample
says it is worth it: ``samples`` pieces at random places in the image
are read first, and if none of them matches, the disk is taken to hold
nothing of this image (a fresh disk, or another image) and nothing more
is read.
Missing a few present pieces that way costs little: when a fraction f of
the pieces is present, all samples miss with probability (1 - f) **
samples, so the expected bytes fetched again are at most about
1 / (e * (samples + 1)) of the image (1.1 % for 32 samples).
"""

import hashlib
import mmap
import os
import random
import time

from ipa_extension import device
from ipa_extension import errors
from ironic_bt.common.i18n import _

#: Pieces read to decide whether a full check is worth it.
SAMPLES = 32


class _Reader:
    """Reads whole pieces of the image region into an aligned buffer."""

    def __init__(self, path, meta):
        self.path = path
        self.meta = meta
        try:
            self.fd, _direct = device.open_direct(path)
        except OSError as e:
            raise errors.TargetError(
                _('Cannot open %(t)s to look for pieces already written: '
                  '%(e)s') % {'t': path, 'e': device.describe_os_error(e)})
        self.chunk = max(1, device.READ_CHUNK // meta.piece_length)
        self.buf = mmap.mmap(-1, self.chunk * meta.piece_length)

    def close(self):
        os.close(self.fd)
        self.buf.close()

    def matching(self, first, end):
        """Indexes in [first, end) whose bytes on the disk match."""
        meta = self.meta
        plen = meta.piece_length
        offset = first * plen
        length = min(end * plen, meta.size) - offset
        want = -(-length // device.ALIGN) * device.ALIGN
        view = memoryview(self.buf)
        try:
            got = os.preadv(self.fd, [view[:want]], offset)
        except OSError as e:
            view.release()
            raise errors.TargetError(
                _('Reading bytes %(off)d-%(end)d of %(t)s to look for pieces '
                  'already written failed: %(e)s. Check the disk\'s health '
                  'and the kernel log (dmesg).')
                % {'off': offset, 'end': offset + length - 1, 't': self.path,
                   'e': device.describe_os_error(e)})
        found = []
        for index in range(first, end):
            start = (index - first) * plen
            size = meta.piece_size(index)
            if start + size > got:
                break
            if (hashlib.sha1(view[start:start + size]).digest()
                    == meta.piece_hash(index)):
                found.append(index)
        view.release()
        return found


def present_pieces(path, meta, samples=SAMPLES):
    """The non-zero pieces of ``meta`` that ``path`` already holds.

    :param path: the target (block device or file), not written meanwhile.
    :param meta: a :class:`ironic_bt.common.torrent.Metainfo`.
    :param samples: pieces to sample before reading everything; 0 skips
        the check (nothing is taken as present).
    :raises: TargetError if the target cannot be read.
    :returns: (a set of piece indexes, seconds spent reading).
    """
    start = time.monotonic()
    wanted = [i for i in range(meta.num_pieces) if i not in meta.zero_pieces]
    if not wanted or samples <= 0:
        return set(), 0.0
    if not os.path.exists(path):
        return set(), 0.0
    reader = _Reader(path, meta)
    try:
        # Spread at random, not at a fixed stride, which a regular pattern
        # of present pieces could fall between.
        probe = random.Random(meta.num_pieces).sample(
            wanted, min(samples, len(wanted)))
        if not any(reader.matching(i, i + 1) for i in probe):
            return set(), time.monotonic() - start
        found = set()
        for first in range(0, meta.num_pieces, reader.chunk):
            end = min(meta.num_pieces, first + reader.chunk)
            found.update(reader.matching(first, end))
        found -= meta.zero_pieces
        return found, time.monotonic() - start
    finally:
        reader.close()
