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

"""Deterministic torrents for raw disk images.

Every conductor that publishes the same image must produce the same
info-hash, so that agents deployed from different conductors (or a
re-published image after a conductor restart) form one swarm and resume
against the same pieces. The .torrent therefore carries nothing that
depends on the publisher: no creation date, no creator, no announce URL (the
conductor hands trackers to the agents separately), a fixed file name, and
a piece size computed from the image size alone.

Torrents are v1+v2 hybrids: v2 gives per-16 KiB SHA-256 merkle verification,
v1 keeps the sha1 piece hashes that let us recognise all-zero pieces without
reading the image again (see :func:`zero_pieces`).
"""

import dataclasses
import functools
import hashlib
import os
import tempfile

import libtorrent as lt

from ironic_bt.common.i18n import _

#: The name of the single file inside every torrent. The agent renames it to
#: the install device; the seeder to its hard link.
FILE_NAME = 'disk.img'

MIN_PIECE_SIZE = 16 * 1024
MAX_PIECE_SIZE = 4 * 1024 * 1024
#: Aim for about this many pieces: enough for peers to trade pieces early
#: (every piece a peer finishes can be uploaded at once) and to keep the
#: all-zero regions of sparse images off the wire, few enough that
#: per-piece overhead (requests, hash checks, have messages, the size of
#: the .torrent) stays small. 4096 measured faster than 2048 at every swarm
#: size (doc/source/performance.rst).
TARGET_PIECES = 4096


class InvalidTorrent(ValueError):
    """The .torrent is unreadable or not one ironic-bt can deploy."""


@dataclasses.dataclass(frozen=True)
class Metainfo:
    """A parsed ironic-bt torrent, in project types."""

    #: The bencoded .torrent.
    data: bytes
    info_hash_v1: bytes
    info_hash_v2: bytes
    name: str
    size: int
    piece_length: int
    num_pieces: int
    #: Indexes of the pieces whose content is all zero bytes.
    zero_pieces: frozenset

    @property
    def tracker_keys(self):
        """The 20-byte keys libtorrent announces this torrent under."""
        return [self.info_hash_v1, self.info_hash_v2[:20]]

    @property
    def info_hash(self):
        """The v1 info-hash as hex: the name users see."""
        return self.info_hash_v1.hex()

    def piece_size(self, index):
        """Size in bytes of piece ``index`` (the last one may be short)."""
        if index == self.num_pieces - 1:
            return self.size - self.piece_length * index
        return self.piece_length

    @property
    def zero_bytes(self):
        return sum(self.piece_size(i) for i in self.zero_pieces)

    def torrent_info(self):
        """A fresh libtorrent ``torrent_info`` for adding to a session."""
        return lt.torrent_info(lt.bdecode(self.data))

    def piece_hash(self, index):
        """The v1 (sha1) hash of piece ``index``, as bytes."""
        return self._v1_hashes[index]

    @functools.cached_property
    def _v1_hashes(self):
        info = lt.bdecode(self.data)[b'info']
        pieces = info[b'pieces']
        return [pieces[i:i + 20] for i in range(0, len(pieces), 20)]


def piece_size_for(size):
    """The piece size policy: a power of two giving about TARGET_PIECES.

    v2 torrents need a power of two of at least 16 KiB. The bounds keep
    small images from having uselessly small pieces and big images from
    having pieces so large that peers wait long for their first one.
    """
    piece = MIN_PIECE_SIZE
    while piece < MAX_PIECE_SIZE and piece * TARGET_PIECES < size:
        piece *= 2
    return piece


@functools.lru_cache(maxsize=8)
def _zero_hash(length):
    return hashlib.sha1(bytes(length)).digest()


def _zero_pieces(hashes, size, piece_length):
    zero = set()
    for index, digest in enumerate(hashes):
        length = min(piece_length, size - index * piece_length)
        if digest == _zero_hash(length):
            zero.add(index)
    return frozenset(zero)


def build(image_path, piece_size=None):
    """Build the torrent of a raw image.

    :param image_path: path of the raw image (a regular file).
    :param piece_size: override the piece size policy (a power of two of at
        least 16 KiB); for experiments only, since it changes the info-hash.
    :raises: InvalidTorrent if the image is empty, unreadable or the piece
        size is invalid.
    :returns: a :class:`Metainfo`.
    """
    try:
        size = os.stat(image_path).st_size
    except OSError as e:
        raise InvalidTorrent(
            _('Cannot read image %(path)s to build its torrent: %(err)s')
            % {'path': image_path, 'err': e})
    if size <= 0:
        raise InvalidTorrent(
            _('Image %(path)s is empty; nothing to publish.')
            % {'path': image_path})
    piece_size = piece_size or piece_size_for(size)
    if piece_size < 16384 or piece_size & (piece_size - 1):
        raise InvalidTorrent(
            _('Piece size %d is not a power of two of at least 16 KiB.')
            % piece_size)

    creator = lt.create_torrent(
        [lt.create_file_entry(FILE_NAME, size)], piece_size)
    creator.set_priv(True)
    creator.set_creation_date(0)
    creator.set_creator('')
    # libtorrent reads the file as <dir>/<name>; a symlink gives it the fixed
    # name without copying the image or renaming the cache's file.
    with tempfile.TemporaryDirectory(prefix='ironic-bt-') as tmp:
        os.symlink(os.path.abspath(image_path), os.path.join(tmp, FILE_NAME))
        try:
            lt.set_piece_hashes(creator, tmp)
        except RuntimeError as e:
            raise InvalidTorrent(
                _('Hashing image %(path)s failed: %(err)s')
                % {'path': image_path, 'err': e})
    return load(lt.bencode(creator.generate()), source=image_path)


def with_trackers(data, trackers):
    """The same torrent with announce URLs, for standard clients.

    ironic-bt agents are handed their trackers with the step; a standard
    BitTorrent client only knows the ones in the file. ``announce`` and
    ``announce-list`` (BEP 12) lie outside the info dictionary, so the
    info-hash, and the swarm, stay the same.

    :param data: a bencoded torrent.
    :param trackers: announce URLs, in order of preference (one tier each).
    :returns: the bencoded torrent with them.
    """
    trackers = list(trackers)
    decoded = lt.bdecode(data)
    if trackers:
        decoded[b'announce'] = trackers[0].encode()
        decoded[b'announce-list'] = [[url.encode()] for url in trackers]
    return lt.bencode(decoded)


def bdecode(data, source):
    """Decode a bencoded dictionary (a tracker reply) with libtorrent.

    :param source: where it came from, for the error message.
    :raises: ValueError naming ``source`` if ``data`` is not one.
    """
    try:
        value = lt.bdecode(bytes(data))
    except RuntimeError:    # malformed, as opposed to empty
        value = None
    if not isinstance(value, dict):
        raise ValueError(_('%s did not send a bencoded dictionary.')
                         % source)
    return value


def load(data, source='<torrent>'):
    """Parse and check a .torrent for deployment.

    :param data: the bencoded .torrent.
    :param source: where it came from, for error messages.
    :raises: InvalidTorrent naming ``source`` when the data is not a hybrid
        single-file torrent.
    :returns: a :class:`Metainfo`.
    """
    try:
        decoded = lt.bdecode(bytes(data))
        if not decoded:
            raise ValueError(_('not bencoded data'))
        info = lt.torrent_info(decoded)
    except (RuntimeError, ValueError, TypeError) as e:
        raise InvalidTorrent(
            _('%(src)s is not a valid .torrent file: %(err)s. Check that it '
              'was made by "ironic-bt create" and copied intact.')
            % {'src': source, 'err': e})
    hashes = info.info_hashes()
    if not (hashes.has_v1() and hashes.has_v2()):
        raise InvalidTorrent(
            _('%s is not a hybrid (v1+v2) torrent; ironic-bt needs both '
              'hash kinds to verify the disk.') % source)
    if not info.priv():
        raise InvalidTorrent(
            _('%s is not a private torrent; ironic-bt only deploys private '
              'torrents, so that peers come from its tracker alone.')
            % source)
    if info.num_files() != 1:
        # Hybrid torrents align each file to a piece with pad files: name
        # only the files a user put there.
        files = info.files()
        count = sum(1 for i in range(files.num_files())
                    if not files.file_flags(i) & lt.file_storage.flag_pad_file)
        raise InvalidTorrent(
            _('%(src)s holds %(n)d files; a disk image torrent holds '
              'exactly one.') % {'src': source, 'n': count})
    pieces = decoded[b'info'][b'pieces']
    v1 = [pieces[i:i + 20] for i in range(0, len(pieces), 20)]
    size = info.total_size()
    return Metainfo(
        data=bytes(data),
        info_hash_v1=bytes(hashes.v1.to_bytes()),
        info_hash_v2=bytes(hashes.v2.to_bytes()),
        name=info.name(),
        size=size,
        piece_length=info.piece_length(),
        num_pieces=info.num_pieces(),
        zero_pieces=_zero_pieces(v1, size, info.piece_length()))


def load_file(path):
    """Read and parse a .torrent file (see :func:`load`)."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise InvalidTorrent(
            _('Cannot read torrent file %(path)s: %(err)s')
            % {'path': path, 'err': e})
    return load(data, source=path)
