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

"""Download a torrent straight into a block device (or a file).

This is the agent side of ironic-bt, usable without ironic-python-agent (the
``ironic-bt write`` command runs it too). One call of :func:`write`:

1. checks the target can hold the image, before writing anything;
2. zeroes the all-zero pieces locally (they never cross the wire);
3. downloads every other piece with libtorrent's POSIX disk backend, which
   writes with ``pwrite`` at the piece's offset: no temporary copy, and
   memory bounded by libtorrent's queues rather than by the image size;
4. fsyncs, drops the target's page cache and reads the region back,
   checking every piece hash and computing the sha256 of the region: the
   proof that the disk holds the image;
5. keeps seeding while other peers are still incomplete, up to
   ``linger_timeout`` seconds, then closes the session, so that nothing is
   served once the caller starts writing (config drive, boot loader).
"""

import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import mmap
import os
import stat
import struct
import time

import libtorrent as lt
from oslo_log import log

from ipa_extension import pieces
from ironic_bt.i18n import _
from ironic_bt import swarm

LOG = log.getLogger(__name__)

_BLKGETSIZE64 = 0x80081272
_BLKZEROOUT = 0x127f
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_READ_CHUNK = 4 * 1024 * 1024
_BLOCK = 16 * 1024
_POLL = 0.1
#: Seconds without an incomplete peer after which lingering ends. Every
#: deploy pays it once, so it only bridges the moment between a peer's
#: last piece and its "completed" announce.
_QUIET = 0.5
#: See ipa_extension.pieces.PiecePlan.
_PLAN_BACKUP = 16


class WriterError(Exception):
    """An error of :func:`write`; its text is meant for operators."""


class TargetError(WriterError):
    """The target cannot take the image, or writing to it failed."""


class DownloadError(WriterError):
    """The pieces could not be fetched from the swarm."""


class VerifyError(WriterError):
    """What was read back from the target is not the image."""


@dataclasses.dataclass
class WriteResult:
    target: str
    size: int
    info_hash: str
    downloaded_bytes: int
    #: Of downloaded_bytes, what came from the ``peers`` given (the
    #: conductor's seeder); the rest came from other nodes.
    downloaded_from_seeder_bytes: int
    uploaded_bytes: int
    zero_bytes: int
    seconds: float
    download_seconds: float
    verify_seconds: float
    linger_seconds: float
    sha256: str

    def to_dict(self):
        return dataclasses.asdict(self)


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
        raise TargetError(_('Target %s does not exist. Check the device '
                            'name (a typo would otherwise create a file).')
                          % path)
    except OSError as e:
        raise TargetError(_('Cannot access target %(t)s: %(e)s')
                          % {'t': path, 'e': e})
    if stat.S_ISREG(st.st_mode):
        return None
    if not stat.S_ISBLK(st.st_mode):
        raise TargetError(_('Target %s is neither a block device nor a '
                            'regular file.') % path)
    try:
        with open(path, 'rb') as f:
            buf = fcntl.ioctl(f.fileno(), _BLKGETSIZE64, b'\0' * 8)
    except OSError as e:
        raise TargetError(_('Cannot read the size of block device %(t)s: '
                            '%(e)s') % {'t': path, 'e': e})
    return struct.unpack('Q', buf)[0]


def _zero_runs(meta):
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


def _write_zeros(fd, offset, length):
    zeros = bytes(min(length, _READ_CHUNK))
    end = offset + length
    while offset < end:
        offset += os.pwrite(fd, zeros[:end - offset], offset)


def zero_regions(path, meta, is_block):
    """Make the all-zero pieces of ``meta`` read as zeros on the target.

    Block devices get BLKZEROOUT, which thin-provisioned and loop devices turn
    into unmap, and others into zero writes without a round trip through
    user space. Files get holes punched. Either falls back to writing zeros.
    """
    runs = _zero_runs(meta)
    flags = os.O_WRONLY | (0 if is_block else os.O_CREAT)
    fd = os.open(path, flags, 0o600)
    try:
        if not is_block and os.fstat(fd).st_size < meta.size:
            os.ftruncate(fd, meta.size)
        for offset, length in runs:
            try:
                if is_block:
                    fcntl.ioctl(fd, _BLKZEROOUT,
                                struct.pack('QQ', offset, length))
                else:
                    _punch_hole(fd, offset, length)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY,
                                   errno.EINVAL):
                    raise
                _write_zeros(fd, offset, length)
        os.fsync(fd)
    finally:
        os.close(fd)
    return sum(length for _offset, length in runs)


def fsync_target(path):
    """Flush the target to stable storage.

    :raises: TargetError naming the target if the device reports an error.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise TargetError(_('Flushing %(t)s to disk failed: %(e)s. The '
                            'device may be failing; check the kernel log.')
                          % {'t': path, 'e': e})


def verify(path, meta, expected_sha256=None):
    """Read the image region back from the target and check it.

    The data comes from the device, not from what libtorrent just wrote
    into memory: the target is read with O_DIRECT (or its page cache is
    dropped first). With the image's sha256 one hash over the region is the
    proof; the piece hashes are only read again to name the piece that
    differs. Without it every piece is checked against the torrent.

    :raises: VerifyError naming the first piece that does not match, or
        the mismatching sha256.
    :returns: the hex sha256 of the first ``meta.size`` bytes.
    """
    if not expected_sha256:
        return _verify_fd(path, meta, check_pieces=True)
    sha256 = _verify_fd(path, meta, check_pieces=False)
    if sha256 != expected_sha256.lower():
        # Name the piece that differs, if one does.
        _verify_fd(path, meta, check_pieces=True)
        raise VerifyError(
            _('Image %(ih)s on %(t)s has sha256 %(got)s, but the image '
              'checksum is %(want)s. The torrent was not made from this '
              'image; publish it again.')
            % {'ih': meta.info_hash, 't': path, 'got': sha256,
               'want': expected_sha256})
    return sha256


def _open_direct(path):
    """Open ``path`` for reading around the page cache, if it allows.

    O_DIRECT reads come from the device itself, and a read-back of the
    whole image neither fills the page cache nor costs a copy through it.
    Some file systems refuse O_DIRECT (EINVAL); then the page cache is
    dropped for the region instead.
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT), True
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    return os.open(path, os.O_RDONLY), False


def _verify_fd(path, meta, check_pieces):
    try:
        fd, direct = _open_direct(path)
    except OSError as e:
        raise VerifyError(_('Cannot open %(t)s to verify it: %(e)s')
                          % {'t': path, 'e': e})
    try:
        return _read_back(fd, direct, path, meta, check_pieces)
    finally:
        os.close(fd)


def _read_back(fd, direct, path, meta, check_pieces):
    whole = hashlib.sha256()
    if not direct:
        os.posix_fadvise(fd, 0, meta.size, os.POSIX_FADV_DONTNEED)
    plen = meta.piece_length
    # Whole pieces per read (a multiple of 4 KiB, as O_DIRECT needs): few
    # system calls, bounded memory. An anonymous map is page aligned.
    chunk = max(plen, _READ_CHUNK // plen * plen)
    # Freed with the last view of it, also when a check raises.
    view = memoryview(mmap.mmap(-1, chunk))
    for offset in range(0, meta.size, chunk):
        length = min(chunk, meta.size - offset)
        # The last read is rounded up to whole 4 KiB blocks; a device holds
        # more than the image, a file ends early.
        want = min(chunk, -(-length // 4096) * 4096)
        try:
            got = os.preadv(fd, [view[:want]], offset)
        except OSError as e:
            raise VerifyError(
                _('Reading bytes %(off)d-%(end)d back from %(t)s failed: '
                  '%(e)s. The device may be failing; check the kernel log.')
                % {'off': offset, 'end': offset + length - 1, 't': path,
                   'e': e})
        if got < length:
            raise VerifyError(
                _('Target %(t)s ends at byte %(got)d: it holds fewer bytes '
                  'than the %(size)d of the image.')
                % {'t': path, 'got': offset + got, 'size': meta.size})
        data = view[:length]
        whole.update(data)
        if check_pieces:
            _check_pieces(data, offset, path, meta)
    return whole.hexdigest()


def _check_pieces(data, offset, path, meta):
    plen = meta.piece_length
    for start in range(0, len(data), plen):
        index = (offset + start) // plen
        piece = data[start:start + plen]
        if hashlib.sha1(piece).digest() != meta.piece_hash(index):
            raise VerifyError(
                _('Piece %(i)d (bytes %(off)d-%(end)d) read back from '
                  '%(t)s does not match the image. The device may be '
                  'failing; check its health and the kernel log.')
                % {'i': index, 'off': index * plen,
                   'end': index * plen + len(piece) - 1, 't': path})


def _parse_peer(peer):
    host, sep, port = peer.rpartition(':')
    if not sep or not port.isdigit():
        raise DownloadError(_('Peer "%s" is not HOST:PORT.') % peer)
    return host.strip('[]'), int(port)


class _Download:
    """One torrent in one session, from add to close."""

    def __init__(self, meta, target, trackers, peers, listen_host,
                 listen_port, settings, share=True):
        self.meta = meta
        self.target = target
        overrides = {
            'alert_mask': int(swarm.ALERT_MASK
                              | lt.alert_category.block_progress),
            # Room for the block alerts of a fast link between two polls.
            'alert_queue_size': 100000,
            # The piece plan may leave nothing to fetch for a moment (all
            # that is missing is on its way to its owners): stay connected
            # to the seeds meanwhile.
            'close_redundant_connections': False,
            # Disconnecting from the seeder (an IP filter rule) must not
            # cut the tracker, which usually shares its address.
            'apply_ip_filter_to_trackers': False,
        }
        overrides.update(settings or {})
        self.session = swarm.make_session(listen_host, listen_port,
                                          **overrides)
        params = lt.add_torrent_params()
        params.ti = meta.torrent_info()
        params.save_path = os.path.dirname(os.path.abspath(target))
        params.renamed_files = {0: os.path.basename(target)}
        # The zero pieces were just zeroed: declare them present and skip
        # reading the whole target to check it, which on a fresh disk would
        # find nothing and cost a full read of the device.
        params.have_pieces = [i in meta.zero_pieces
                              for i in range(meta.num_pieces)]
        params.flags |= lt.torrent_flags.no_verify_files
        params.flags &= ~(lt.torrent_flags.auto_managed
                          | lt.torrent_flags.paused)
        params.trackers = list(trackers)
        self.handle = self.session.add_torrent(params)
        self.peers = list(peers)
        self.seeder_ips = {host for host, _port in self.peers}
        self.from_seeder = 0
        for peer in self.peers:
            self.handle.connect_peer(peer)
        self.tracker_error = None
        self.error = None
        self.plan = (pieces.PiecePlan(meta.num_pieces, backup=_PLAN_BACKUP)
                     if share else None)
        self.using_seeder = True

    def share_pieces(self, st):
        """Apply the piece plan (see :mod:`ipa_extension.pieces`)."""
        plan = self.plan
        if plan is None or not plan.active:
            return
        me = None
        agents = []
        seeders = 0
        for p in self.handle.get_peer_info():
            if p.flags & (lt.peer_info.connecting | lt.peer_info.handshake):
                continue
            me = me or p.local_endpoint()[0]
            if p.ip[0] in self.seeder_ips:
                seeders += 1
            else:
                # Agents that completed stay members: they own nothing
                # anybody waits for, and ranking again costs CPU.
                agents.append(p.ip[0])
        availability = self.handle.piece_availability()
        if len(availability) != self.meta.num_pieces:
            # No piece picker yet (or any more): nothing to plan.
            return
        if seeders:
            availability = [a - seeders for a in availability]
        change = plan.update(time.monotonic(), me, agents, st.pieces,
                             availability)
        if change == []:
            if not plan.active:
                LOG.info('Nothing arrived for %(s).0f s with the piece plan '
                         'of %(ih)s: fetching the rest from any peer',
                         {'s': plan.grace, 'ih': self.meta.info_hash})
            self.handle.prioritize_pieces(
                [pieces.NORMAL] * self.meta.num_pieces)
        elif change:
            self.handle.prioritize_pieces(change)
        self._use_seeder(plan.need_seeder)

    def _use_seeder(self, use):
        """Connect to the seeder, or leave its upload to other agents."""
        if use == self.using_seeder or not self.seeder_ips:
            return
        self.using_seeder = use
        ip_filter = lt.ip_filter()
        if not use:
            for ip in self.seeder_ips:
                ip_filter.add_rule(ip, ip, 1)
        self.session.set_ip_filter(ip_filter)
        if use:
            self.reconnect()
        LOG.debug('%(what)s the seeder of %(ih)s',
                  {'what': 'Using' if use else 'Disconnected from',
                   'ih': self.meta.info_hash})

    def pump_alerts(self):
        for alert in self.session.pop_alerts():
            if isinstance(alert, lt.block_finished_alert):
                # Per-block accounting: a peer's byte counters vanish when
                # it disconnects, which seeds do as soon as we complete.
                if alert.ip[0] in self.seeder_ips:
                    self.from_seeder += _BLOCK
            elif isinstance(alert, lt.tracker_error_alert):
                if 'skipping tracker announce' in alert.message():
                    # libtorrent does not announce from its loopback listen
                    # socket to a remote tracker: expected, not an error.
                    LOG.debug('%s', alert.message())
                    continue
                self.tracker_error = alert.message()
                LOG.warning('Tracker error for %(ih)s: %(msg)s',
                            {'ih': self.meta.info_hash,
                             'msg': alert.message()})
            elif isinstance(alert, (lt.file_error_alert,
                                    lt.torrent_error_alert)):
                self.error = alert.message()
            elif isinstance(alert, lt.hash_failed_alert):
                LOG.warning('Piece failed its hash check and will be '
                            'fetched again: %s', alert.message())

    def status(self):
        self.pump_alerts()
        st = self.handle.status()
        if self.error or st.errc.value():
            raise TargetError(
                _('Writing %(ih)s to %(t)s failed: %(err)s. Check the '
                  'device and the kernel log.')
                % {'ih': self.meta.info_hash, 't': self.target,
                   'err': self.error or st.errc.message()})
        return st

    def reconnect(self):
        for peer in self.peers:
            self.handle.connect_peer(peer)

    def incomplete_peers(self, st):
        connected = sum(1 for p in self.handle.get_peer_info()
                        if not p.flags & lt.peer_info.seed)
        return max(connected, st.num_incomplete)

    def close(self):
        """Stop seeding and release the target before returning.

        Dropping the last reference to the session blocks until libtorrent
        has aborted every connection and closed its file handles.
        """
        if self.session is None:
            return
        self.session.remove_torrent(self.handle)
        self.handle = None
        self.session = None


def write(meta, target, trackers=(), peers=(), listen_host='0.0.0.0',
          listen_port=6881, linger_timeout=300, progress_interval=10,
          stall_timeout=300, expected_sha256=None, settings=None,
          create=False, share_pieces=True):
    """Download ``meta`` into ``target``, verify it, linger, and stop.

    :param meta: a :class:`ironic_bt.torrent.Metainfo`.
    :param target: a block device or a regular file path.
    :param trackers: announce URLs.
    :param peers: ``HOST:PORT`` strings to connect to directly.
    :param listen_host: address to accept peer connections on.
    :param listen_port: port to accept peer connections on.
    :param linger_timeout: most seconds to keep seeding after verifying.
    :param progress_interval: seconds between progress log lines.
    :param stall_timeout: seconds without progress before giving up.
    :param expected_sha256: hex sha256 of the image, checked if given.
    :param settings: extra libtorrent settings (see ironic_bt.swarm).
    :param create: create ``target`` as a regular file if it is missing.
    :param share_pieces: agree with the other agents on who fetches which
        piece from the seeder (:mod:`ipa_extension.pieces`).
    :raises: TargetError, DownloadError, VerifyError.
    :returns: a :class:`WriteResult`.
    """
    start = time.monotonic()
    # Refuse every bad argument before the first byte is written.
    peers = [_parse_peer(p) for p in peers]
    size = target_size(target, create=create)
    is_block = size is not None
    if is_block and size < meta.size:
        raise TargetError(
            _('Image %(ih)s is %(img)d bytes but target %(t)s holds only '
              '%(dev)d bytes. Choose a larger disk (root device hints) or a '
              'smaller image.')
            % {'ih': meta.info_hash, 'img': meta.size, 't': target,
               'dev': size})
    if not trackers and not peers:
        raise DownloadError(_('No tracker and no peer given for %s: there '
                              'is no one to download from.')
                            % meta.info_hash)
    try:
        zeroed = zero_regions(target, meta, is_block)
    except OSError as e:
        raise TargetError(_('Cannot write to target %(t)s: %(e)s')
                          % {'t': target, 'e': e})
    LOG.info('Writing %(ih)s (%(size)d bytes, %(pieces)d pieces of '
             '%(plen)d) to %(t)s; %(zero)d bytes are zero and were zeroed '
             'locally', {'ih': meta.info_hash, 'size': meta.size,
                         'pieces': meta.num_pieces, 'plen': meta.piece_length,
                         't': target, 'zero': zeroed})

    dl = _Download(meta, target, trackers, peers, listen_host, listen_port,
                   settings, share=share_pieces)
    try:
        st = _download(dl, progress_interval, stall_timeout)
        download_seconds = time.monotonic() - start
        fsync_target(target)
        verify_start = time.monotonic()
        sha256 = verify(target, meta, expected_sha256)
        verify_seconds = time.monotonic() - verify_start
        LOG.info('Verified %(t)s: sha256 %(sha)s in %(s).1f s',
                 {'t': target, 'sha': sha256, 's': verify_seconds})
        linger_seconds = _linger(dl, linger_timeout)
        st = dl.handle.status()
    finally:
        dl.close()
    return WriteResult(
        target=target, size=meta.size, info_hash=meta.info_hash,
        downloaded_bytes=st.total_payload_download,
        downloaded_from_seeder_bytes=min(dl.from_seeder,
                                         st.total_payload_download),
        uploaded_bytes=st.total_payload_upload,
        zero_bytes=zeroed, seconds=round(time.monotonic() - start, 3),
        download_seconds=round(download_seconds, 3),
        verify_seconds=round(verify_seconds, 3),
        linger_seconds=round(linger_seconds, 3), sha256=sha256)


def _download(dl, progress_interval, stall_timeout):
    meta = dl.meta
    start = last_log = last_progress = time.monotonic()
    last_done = -1
    while True:
        st = dl.status()
        now = time.monotonic()
        if st.is_seeding:
            LOG.info('Downloaded %(ih)s: %(b)d bytes in %(s).1f s',
                     {'ih': meta.info_hash, 'b': st.total_payload_download,
                      's': now - start})
            return st
        dl.share_pieces(st)
        # Bytes present, not "wanted": the piece plan changes what is
        # wanted while it runs.
        if st.total_done != last_done:
            last_done, last_progress = st.total_done, now
        elif now - last_progress > stall_timeout:
            raise DownloadError(
                _('Download of %(ih)s stalled at %(pct).1f%% for %(s)d s '
                  'with %(p)d peers. Last tracker error: %(err)s. Check that '
                  'the conductor\'s tracker and seeder are reachable from '
                  'this node.')
                % {'ih': meta.info_hash, 'pct': st.progress * 100,
                   's': stall_timeout, 'p': st.num_peers,
                   'err': dl.tracker_error or _('none')})
        if st.num_peers == 0 and now - last_progress > 5:
            # The seeder may have restarted; its address does not change.
            dl.reconnect()
        if now - last_log >= progress_interval:
            last_log = now
            LOG.info('%(ih)s: %(pct).1f%% of %(size)d bytes, %(rate).1f '
                     'MiB/s down, %(up).1f MiB/s up, %(peers)d peers '
                     '(%(seeds)d seeds)',
                     {'ih': meta.info_hash, 'pct': st.progress * 100,
                      'size': meta.size,
                      'rate': st.download_payload_rate / 1048576.0,
                      'up': st.upload_payload_rate / 1048576.0,
                      'peers': st.num_peers, 'seeds': st.num_seeds})
        time.sleep(_POLL)


def _linger(dl, linger_timeout):
    """Seed while the swarm has incomplete peers, at most linger_timeout."""
    start = time.monotonic()
    quiet_since = None
    while time.monotonic() - start < linger_timeout:
        try:
            st = dl.status()
        except TargetError as e:
            # The disk was verified already; a read error while serving
            # others ends our seeding, not our deploy.
            LOG.warning('Stopped seeding early: %s', e)
            break
        if dl.incomplete_peers(st) > 0:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > _QUIET:
            break
        time.sleep(_POLL)
    seconds = time.monotonic() - start
    LOG.info('Stopped seeding %(ih)s after lingering %(s).1f s, %(up)d bytes '
             'uploaded', {'ih': dl.meta.info_hash, 's': seconds,
                          'up': dl.handle.status().total_payload_upload})
    return seconds
