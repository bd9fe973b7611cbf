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

"""The conductor's cache of torrents, one per image file.

Hashing an image costs a read of the whole file, so the torrent of each
image in ironic's cache is built once and kept in
``[bittorrent]data_dir/torrents``, named after the file's identity (device,
inode, size, modification time): a new or rewritten image gets a new name,
and a torrent unused for :data:`TTL` goes. Nodes deploying the same image
at once wait for one build and share it; nodes deploying other images are
not held up by it.
"""

import contextlib
import os
import tempfile
import threading
import time

from oslo_log import log

from ironic_bt.common import torrent
from ironic_bt import exception

LOG = log.getLogger(__name__)

#: The cache's directory under ``[bittorrent]data_dir``.
DIRECTORY = 'torrents'
#: Seconds a cached torrent is kept without being used. A cache entry only
#: saves re-hashing an image that is still in ironic's image cache, whose
#: entries expire after a week by default ([pxe]image_cache_ttl).
TTL = 7 * 24 * 3600


def unlink_quiet(path):
    """Remove ``path``; a missing file is fine, other failures are logged."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        LOG.warning('Cannot remove %(path)s: %(err)s',
                    {'path': path, 'err': e})


def write_atomic(path, data, mode=None):
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise


class TorrentCache:
    """Torrents of image files, built once and kept on disk.

    :param data_dir: a callable returning ``[bittorrent]data_dir``, read on
        each use so that a reloaded configuration is followed.
    """

    def __init__(self, data_dir):
        self._data_dir = data_dir
        self._lock = threading.Lock()
        self._building = {}     # key -> [lock, waiters]

    @property
    def directory(self):
        return os.path.join(self._data_dir(), DIRECTORY)

    def path(self, key):
        return os.path.join(self.directory, key + '.torrent')

    @staticmethod
    def key(image_path):
        """The cache key of an image file: its identity, not its path.

        :raises: OSError if the file cannot be read.
        """
        st = os.stat(image_path)
        return '%d-%d-%d-%d' % (st.st_dev, st.st_ino, st.st_size,
                                st.st_mtime_ns)

    def sweep(self):
        """Remove torrents unused for :data:`TTL`, and leftovers."""
        cutoff = time.time() - TTL
        for entry in os.scandir(self.directory):
            try:
                stale = entry.stat().st_mtime < cutoff
            except FileNotFoundError:
                continue
            if stale or entry.name.endswith('.tmp'):
                unlink_quiet(entry.path)

    @contextlib.contextmanager
    def _build_lock(self, key):
        with self._lock:
            entry = self._building.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._building[key]

    def get(self, node_uuid, image_path, key):
        """The torrent of the image, from the cache or freshly built.

        :param node_uuid: the node it is for, for the log and errors.
        :param key: :meth:`key` of the image, taken by the caller.
        :raises: ImagePublishFailed if the image cannot be hashed.
        :returns: a :class:`ironic_bt.common.torrent.Metainfo`.
        """
        path = self.path(key)
        with self._build_lock(key):
            try:
                with open(path, 'rb') as f:
                    data = f.read()
            except FileNotFoundError:
                pass
            except OSError as e:
                LOG.warning('Cannot read cached torrent %(path)s, building '
                            'it again: %(err)s', {'path': path, 'err': e})
            else:
                try:
                    meta = torrent.load(data, source=path)
                except torrent.InvalidTorrent as e:
                    LOG.warning('Ignoring cached torrent: %s', e)
                else:
                    with contextlib.suppress(OSError):
                        os.utime(path)
                    return meta

            LOG.info('Hashing image %(image)s of node %(node)s to publish '
                     'it', {'image': image_path, 'node': node_uuid})
            started = time.monotonic()
            try:
                meta = torrent.build(image_path)
            except torrent.InvalidTorrent as e:
                raise exception.ImagePublishFailed(
                    image=image_path, node=node_uuid, reason=e)
            LOG.info('Built torrent %(ih)s of image %(image)s: %(size)d '
                     'bytes, %(pieces)d pieces of %(plen)d bytes, %(zero)d '
                     'all-zero, in %(secs).1f s',
                     {'ih': meta.info_hash, 'image': image_path,
                      'size': meta.size, 'pieces': meta.num_pieces,
                      'plen': meta.piece_length,
                      'zero': len(meta.zero_pieces),
                      'secs': time.monotonic() - started})
            try:
                write_atomic(path, meta.data)
            except OSError as e:
                # Only costs a re-hash on the next publication.
                LOG.warning('Cannot cache torrent %(path)s: %(err)s',
                            {'path': path, 'err': e})
            return meta
