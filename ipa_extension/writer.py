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

1. checks the target can hold the image, before writing anything, and holds
   it open until the end (see :mod:`ipa_extension.device`);
2. zeroes the all-zero pieces locally (they never cross the wire), and
   keeps the pieces the target already holds (see
   :mod:`ipa_extension.resume`);
3. downloads every other piece with libtorrent's POSIX disk backend, which
   writes with ``pwrite`` at the piece's offset: no temporary copy, and
   memory bounded by libtorrent's queues rather than by the image size;
   meanwhile it reads the image back from the disk behind the download
   front and flushes the disk every second, so that a failing disk stops
   the download at once with an error that blames it. When the seeder
   is gone, the pieces no peer has come from web seeds (see
   :mod:`ipa_extension.sources`); with no source at all, the write fails
   naming each;
4. flushes the target and reads the rest back: the proof that the disk
   holds the image (the sha256 of the region against the image's, or
   without it every piece's sha1);
5. keeps seeding while other peers are still incomplete, up to
   ``linger_timeout`` seconds, then closes the session, so that nothing is
   served once the caller starts writing (config drive, boot loader).

:class:`Tuning` and :class:`Observer` are the seams for experiments and
benchmarks: they change or watch the product's own code paths, never
replace them.
"""

import dataclasses
import time
from urllib import parse

import libtorrent as lt
from oslo_log import log
from oslo_utils import netutils

from ipa_extension import device
from ipa_extension import errors
from ipa_extension import peers as peer_kinds
from ipa_extension import pieces
from ipa_extension import resume
from ipa_extension import sources
from ironic_bt.common import certs
from ironic_bt.common.i18n import _
from ironic_bt.common import sockets
from ironic_bt.common import swarm

LOG = log.getLogger(__name__)

# The errors, where callers have always found them.
WriterError = errors.WriterError
TargetError = errors.TargetError
DownloadError = errors.DownloadError
VerifyError = errors.VerifyError


#: Seconds a closing writer leaves its "stopped" announce to go out to a
#: UDP tracker (one datagram on the provisioning network) before its
#: listen sockets, which carry it, close.
STOPPED_WAIT = 0.5


@dataclasses.dataclass
class Tuning:
    """Knobs of the writer's loop; the defaults are the product's."""

    #: Seconds between two looks at the torrent: piece plan, progress,
    #: read-back, accounting.
    poll_interval: float = 0.1
    #: See :class:`ipa_extension.pieces.PiecePlan`.
    plan_backup: int = 16
    #: Seconds without an incomplete peer after which lingering ends. Every
    #: deploy pays it once, so it only bridges the moment between a peer's
    #: last piece and its "completed" announce.
    linger_quiet: float = 0.5
    #: Seconds between flushes of the target while downloading (0: only
    #: at the end); each one reports write errors since the last.
    flush_interval: float = 1.0
    #: Read the image back behind the download front (else only after it).
    overlap_read_back: bool = True
    #: Fetch pieces in order (libtorrent's sequential download) while the
    #: tracker counts no other incomplete peer and no other agent is
    #: connected, so that the read-back, which hashes the image in order,
    #: keeps up with the download front; with other agents the piece plan
    #: and rarest-first decide. False: never in order.
    sequential_alone: bool = True
    #: Seconds between attempts to reach the seeder again while it is
    #: needed and not connected (the conductor may have restarted).
    seeder_retry: float = 2.0
    #: Pieces sampled to decide whether the target holds part of the image
    #: (see :mod:`ipa_extension.resume`); 0 never looks.
    resume_samples: int = resume.SAMPLES
    #: Seconds to wait for the tracker's first answer before fetching
    #: anything, when there is a tracker (see PiecePlan.held).
    tracker_wait: float = 2.0
    #: Seconds an agent may leave our requests unanswered before the piece
    #: plan takes it for gone (see :class:`ipa_extension.peers.Silence`).
    agent_silence: float = 1.5
    #: Seconds an incoming SSL connection may take to become a peer before
    #: it is closed (see :class:`ironic_bt.common.sockets.SslPort`).
    handshake_limit: float = sockets.HANDSHAKE_LIMIT
    #: Extra libtorrent settings (see :mod:`ironic_bt.common.swarm`).
    settings: dict = dataclasses.field(default_factory=dict)


class Observer:
    """Watches a write; every method is a no-op here.

    Subclass it to report progress elsewhere, to log peers in experiments,
    or to time the phases of a write.
    """

    def alert(self, alert):
        """A libtorrent alert the writer popped."""

    def peers(self, peer_info):
        """The connected peers (``lt.peer_info`` list), every poll."""

    def progress(self, present, size):
        """Bytes of the image on the disk (never decreasing), every poll."""

    def verified(self, sha256):
        """The disk holds the image; lingering starts."""


@dataclasses.dataclass
class WriteResult:
    target: str
    size: int
    info_hash: str
    downloaded_bytes: int
    #: Of downloaded_bytes, what came from conductors' seeders: the
    #: ``peers`` given, and the seeders of other conductors sharing the
    #: swarm; the rest came from other nodes.
    downloaded_from_seeder_bytes: int
    uploaded_bytes: int
    zero_bytes: int
    seconds: float
    download_seconds: float
    verify_seconds: float
    linger_seconds: float
    sha256: str
    #: Pieces that failed their hash check (bad data from a peer).
    hash_failures: int = 0
    #: Of downloaded_bytes, what came over HTTP from web seeds.
    downloaded_from_web_seed_bytes: int = 0
    #: Bytes of the image found on the target already (a restarted agent).
    resumed_bytes: int = 0

    def to_dict(self):
        return dataclasses.asdict(self)


def _parse_peer(peer):
    try:
        host, port = netutils.parse_host_port(peer)
    except ValueError:
        host, port = None, None
    if not host or port is None or not 0 < port <= 65535:
        raise DownloadError(_('Peer "%s" is not HOST:PORT.') % peer)
    return host, port


#: Seconds between looks at the peers while a connection is in its
#: handshake (see :meth:`_Download.wait`): a few blocks at line rate.
HANDSHAKE_LOOK = 0.005
#: Seconds a connection attempt is watched while its TCP connection is
#: not up yet. libtorrent says "connecting" from the moment it sends the
#: SYN (that is when it posts ``peer_connect_alert``), and an attempt to a
#: node that lost its link stays so for seconds: watched all that time,
#: seven agents of eight looked at their peers every 5 ms and slowed the
#: swarm. On the provisioning network a connection is up in milliseconds.
CONNECT_WATCH = 0.5
#: Error categories of libtorrent's SSL setup (asio's is "asio.ssl").
_SSL_CATEGORIES = ('ssl', 'asio.ssl')
#: ``torrent_status.error_file`` of an SSL context error
#: (``torrent_status::error_file_ssl_ctx``).
_ERROR_FILE_SSL_CTX = -3


def _file_error(alert):
    """What a file_error_alert says, with the errno when it is one."""
    code = alert.error
    if code.category().name() in ('system', 'generic'):
        return '%s: %s' % (alert.filename(), device.describe_os_error(
            OSError(code.value(), code.message())))
    return alert.message()


class _Download:
    """One torrent in one session, from add to close."""

    def __init__(self, meta, target, readback, trackers, peers, listen_host,
                 listen_port, tuning, observer, share=True, present=(),
                 web_seeds=(), web_seed_delay=5.0, credentials=None):
        self.meta = meta
        self.target = target
        self.readback = readback
        self.tuning = tuning
        self.observer = observer
        overrides = {
            # Bans are worth a warning: they should only ever hit a peer
            # that sent bad data, never one our own disk made look bad.
            'alert_mask': int(swarm.ALERT_MASK | lt.alert_category.peer
                              | lt.alert_category.connect),
            # The piece plan may leave nothing to fetch for a moment (all
            # that is missing is on its way to its owners): stay connected
            # to the seeds meanwhile.
            'close_redundant_connections': False,
            # Disconnecting from the seeder (an IP filter rule) must not
            # cut the tracker, which usually shares its address.
            'apply_ip_filter_to_trackers': False,
            # Trackers are tiers in order of preference (UDP, then HTTP):
            # announce to the first that answers, not to all of them.
            'announce_to_all_tiers': False,
            'announce_to_all_trackers': False,
            # A web seed that failed is tried again soon: it is the
            # fallback, used only when the seeder is gone.
            'urlseed_wait_retry': 5,
            # One request at a time on a web seed connection: libtorrent
            # fills every free request slot with whatever piece it can get,
            # also those other agents have, and what an HTTP response
            # carries cannot be cancelled once a peer delivered the piece.
            'urlseed_pipeline_size': 1,
            # libtorrent extends a web seed request over the pieces next to
            # the one it picked (up to 16 MiB), which other agents have:
            # one piece per request.
            'urlseed_max_request_bytes': meta.piece_length,
            # A peer that refused a connection is dialled again only
            # after this many seconds times its failures (libtorrent: 60):
            # an agent that started before its seeder listened (the
            # conductor restarting) asked for it every seeder_retry in
            # vain, and stalled for a minute.
            'min_reconnect_time': max(1, int(tuning.seeder_retry)),
        }
        if any(parse.urlsplit(url).query for url in web_seeds):
            # libtorrent refuses web seeds on private addresses whose URL
            # has a query string, against torrents that point peers at
            # local services. These URLs come from the conductor, not from
            # a torrent file (Swift temporary URLs have a query).
            overrides['ssrf_mitigation'] = False
        # A bounded peer list: a reply that full says the swarm is larger
        # than this agent will see (see PiecePlan.partial).
        overrides['num_want'] = pieces.HANDOUT
        overrides.update(tuning.settings)
        self.num_want = overrides['num_want']
        ssl = credentials is not None
        #: libtorrent announces to UDP trackers from its listen sockets.
        self.udp_trackers = any(url.startswith('udp://') for url in trackers)
        self.session = swarm.make_session(listen_host, listen_port, ssl=ssl,
                                          **overrides)
        self.ssl_port = (sockets.SslPort(self.session, listen_host,
                                         tuning.handshake_limit)
                         if ssl else None)
        params = lt.add_torrent_params()
        params.ti = meta.torrent_info()
        params.save_path = device.save_path(target.write_path)
        params.renamed_files = {0: device.file_name(target.write_path)}
        # The zero pieces were just zeroed: declare them present and skip
        # reading the whole target to check it, which on a fresh disk would
        # find nothing and cost a full read of the device.
        # So are the pieces found on the disk already (an agent restarted).
        params.have_pieces = [i in meta.zero_pieces or i in present
                              for i in range(meta.num_pieces)]
        params.flags |= lt.torrent_flags.no_verify_files
        params.flags &= ~(lt.torrent_flags.auto_managed
                          | lt.torrent_flags.paused)
        params.trackers = list(trackers)
        # Each tracker a tier of its own (BEP 12): tried in the order given,
        # the next only when the one before does not answer.
        params.tracker_tiers = list(range(len(params.trackers)))
        # With credentials, only peers with a certificate of the
        # deployment's authority exchange a byte with us: see
        # ironic_bt.common.swarm.secure.
        self.handle = swarm.add_torrent(self.session, params, credentials)
        self.peers = list(peers)
        self.bytes = peer_kinds.PeerBytes(
            {host for host, _port in self.peers})
        # With a tracker, the seeder waits until it answers: the plan then
        # knows the swarm (see PiecePlan.held).
        held = bool(trackers) and share and bool(self.peers)
        for peer in self.peers:
            if not held:
                self.handle.connect_peer(peer)
        self.error = None
        self.swarm_error = None
        self.hash_failures = 0
        self.present = 0
        self.plan = (pieces.PiecePlan(meta.num_pieces,
                                      backup=tuning.plan_backup, held=held)
                     if share else None)
        self._held_until = time.monotonic() + tuning.tracker_wait
        self.silence = peer_kinds.Silence(tuning.agent_silence)
        self.redial = peer_kinds.Redial(listen_port)
        self.using_seeder = True
        self._blocked_seeders = set()
        #: A connection may be in its handshake: see :meth:`wait`.
        self._handshaking = False
        #: Connection attempts not up yet: endpoint -> when first seen.
        self._connecting = {}
        self.sequential = False
        self.sources = sources.Sources(trackers, self.peers, web_seeds)
        self.fallback = sources.Fallback(web_seeds, web_seed_delay)
        self._seeder_tried = time.monotonic()
        self.web_seeds_added = False
        self.connected = 0
        if held:
            self._use_seeder(False)

    def poll(self, downloading=True):
        """Look at the torrent once: alerts, status, peers, the plan.

        :raises: TargetError if the disk failed.
        :returns: the torrent's status.
        """
        st = self.status()
        peer_info = self.handle.get_peer_info()
        self.connected = sum(
            1 for p in peer_info
            if not p.flags & (lt.peer_info.connecting
                              | lt.peer_info.handshake))
        self.bytes.update(peer_info)
        self._shut_out_seeders(peer_info)
        if self.ssl_port is not None and self.ssl_port.due():
            self.ssl_port.check({p.ip for p in peer_info})
        self.observer.peers(peer_info)
        if downloading:
            self._in_order(st, peer_info)
            needed = self._share_pieces(st, peer_info)
            self._fall_back(peer_info, needed and not st.is_seeding)
        return st

    def wait(self, seconds):
        """Sleep until the next poll, shutting other seeders out at once.

        A seeder of another conductor sharing the swarm is known by the
        peer id of its handshake, and its first blocks follow one round
        trip later. Looked for only at every poll, it could send a whole
        poll interval at line rate first (300 KiB at 25 Mbit/s). So the
        wait wakes on every new connection and looks at the peers every
        :data:`HANDSHAKE_LOOK` seconds until no handshake is under way.
        """
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._handshaking:
                time.sleep(min(left, HANDSHAKE_LOOK))
                self._shut_out_seeders(self.handle.get_peer_info())
            elif self.session.wait_for_alert(int(left * 1000) + 1):
                self.pump_alerts()

    def _shut_out_seeders(self, peer_info):
        """Filter out the seeders of other conductors among the peers.

        Also decides whether :meth:`wait` keeps looking closely: while a
        connection is in its handshake, or is a young attempt (see
        :data:`CONNECT_WATCH`).
        """
        now = time.monotonic()
        watch = False
        connecting = {}
        for p in peer_info:
            self.bytes.kind(p)   # learns the seeders of other conductors
            if p.flags & lt.peer_info.handshake:
                watch = True
            elif p.flags & lt.peer_info.connecting:
                since = self._connecting.get(p.ip, now)
                connecting[p.ip] = since
                watch = watch or now - since < CONNECT_WATCH
        self._connecting = connecting
        if self.bytes.other_seeders != self._blocked_seeders:
            self._filter_seeders()
        self._handshaking = watch

    def _in_order(self, st, peer_info):
        """Fetch in order while there is nobody to share pieces with.

        A lone node gains nothing from rarest-first, and pieces in order
        let the read-back hash the image right behind the download. Alone
        means the tracker counts no other incomplete peer (its count
        includes us) and no agent is connected: nodes that start together
        must not all ask the seeder for the same first pieces.
        """
        alone = (self.tuning.sequential_alone
                 and 0 <= st.num_incomplete <= 1
                 and not any(self.bytes.kind(p) == peer_kinds.AGENT
                             for p in peer_info))
        if alone == self.sequential:
            return
        self.sequential = alone
        if alone:
            self.handle.set_flags(lt.torrent_flags.sequential_download)
        else:
            self.handle.unset_flags(lt.torrent_flags.sequential_download)

    def present_bytes(self, st):
        """Bytes of the image on the disk, never decreasing.

        Counted from the pieces that passed their hash check, not from
        libtorrent's ``progress``, which counts only the pieces wanted at
        the moment (the piece plan changes which ones are).
        """
        meta = self.meta
        have = st.num_pieces
        present = have * meta.piece_length
        if have and st.pieces and st.pieces[-1]:
            present -= meta.piece_length - meta.piece_size(
                meta.num_pieces - 1)
        self.present = max(self.present, min(present, meta.size))
        self.observer.progress(self.present, meta.size)
        return self.present

    def _share_pieces(self, st, peer_info):
        """Apply the piece plan (see :mod:`ipa_extension.pieces`).

        :returns: whether this agent needs a seed: the seeder, or the web
            seeds in its place.
        """
        plan = self.plan
        if plan is None or not plan.active:
            return True
        now = time.monotonic()
        if plan.held and now >= self._held_until:
            LOG.info('No tracker answered about %(ih)s within %(s).0f s: '
                     'planning with the peers at hand',
                     {'ih': self.meta.info_hash,
                      's': self.tuning.tracker_wait})
            plan.release()
        if plan.held:
            return False
        me = None
        agents = []
        seeders = 0
        for p in peer_info:
            if p.flags & (lt.peer_info.connecting | lt.peer_info.handshake):
                continue
            kind = self.bytes.kind(p)
            if kind == peer_kinds.OTHER:
                # Its pieces count as available from a peer, nothing more.
                continue
            me = me or p.local_endpoint()[0]
            if kind == peer_kinds.AGENT:
                # Agents that completed stay members: they own nothing
                # anybody waits for, and ranking again costs CPU.
                agents.append(p)
                self.redial.seen(p)
            elif kind == peer_kinds.WEB_SEED or p.flags & lt.peer_info.seed:
                # The seeder, or a web seed: both have every piece. The
                # seeder counts in the availability only once its bitfield
                # is in: subtracting it before made every piece another
                # agent has look like one only a seed has, and every piece
                # only a seed has look available (-1), so an agent of 64
                # needed no seed and dropped the plan 8 s into the deploy.
                seeders += 1
        for endpoint in self.redial.due(now, me,
                                        {p.ip[0] for p in peer_info}):
            LOG.info('Connecting again to agent %(ip)s:%(port)d of %(ih)s: '
                     'we both dialled at once and libtorrent closed both '
                     'connections', {'ip': endpoint[0], 'port': endpoint[1],
                                     'ih': self.meta.info_hash})
            self.handle.connect_peer(endpoint)
        availability = self.handle.piece_availability()
        if len(availability) != self.meta.num_pieces:
            # No piece picker yet (or any more): nothing to plan.
            return True
        for key in self.silence.update(now, agents,
                                       rate=st.download_payload_rate):
            LOG.info('Agent %(ip)s of %(ih)s has not answered our requests '
                     'for %(s).1f s: the pieces only it has are fetched from '
                     'the seeder until it sends again',
                     {'ip': key[0], 'ih': self.meta.info_hash,
                      's': self.silence.quiet})
        silent = self.silence.silent
        gone = [p for p in agents if (p.ip[0], p.ip[1]) in silent]
        if seeders or gone:
            availability = [max(a - seeders, 0) for a in availability]
            for p in gone:
                # What it has cannot come from it: only from a seed.
                availability = [a - h for a, h in zip(availability,
                                                      p.pieces)]
        change = plan.update(now, me,
                             [p.ip[0] for p in agents
                              if (p.ip[0], p.ip[1]) not in silent],
                             st.pieces, availability,
                             received=st.total_payload_download,
                             rate=st.download_payload_rate)
        if change == []:
            if not plan.active:
                LOG.info('Nothing arrived for %(s).0f s with the piece plan '
                         'of %(ih)s: fetching the rest from any peer',
                         {'s': plan.waited, 'ih': self.meta.info_hash})
            self.handle.prioritize_pieces(
                [pieces.NORMAL] * self.meta.num_pieces)
        elif change:
            self.handle.prioritize_pieces(change)
        self._use_seeder(plan.need_seeder)
        return plan.need_seeder

    def _fall_back(self, peer_info, needed):
        """Use the web seeds while the seeder is gone, and only then."""
        now = time.monotonic()
        seeder_up = False
        for p in peer_info:
            kind = self.bytes.kind(p)
            up = not p.flags & (lt.peer_info.connecting
                                | lt.peer_info.handshake)
            seeder_up = seeder_up or (up and kind == peer_kinds.SEEDER)
        if (needed and not seeder_up and self.using_seeder
                and now - self._seeder_tried >= self.tuning.seeder_retry):
            # The conductor may have restarted: its address stays.
            self._seeder_tried = now
            self.reconnect()
        engaged = self.fallback.engaged
        use = self.fallback.update(now, seeder_up, needed)
        if self.fallback.engaged != engaged:
            if self.plan is not None:
                self.plan.over_http = self.fallback.engaged
            if self.fallback.engaged:
                LOG.warning('The seeder of %(ih)s has been out of reach for '
                            '%(s).0f s: fetching the pieces that no peer has '
                            'from %(urls)s until it is back (%(sources)s)',
                            {'ih': self.meta.info_hash,
                             's': self.fallback.delay,
                             'urls': ', '.join(
                                 sources.redact(u, path=False)
                                 for u in self.fallback.urls),
                             'sources': self.sources.describe()})
            else:
                LOG.info('The seeder of %s is back: no more web seeds',
                         self.meta.info_hash)
        if use != self.web_seeds_added:
            self.web_seeds_added = use
            for url in self.fallback.urls:
                if use:
                    self.handle.add_url_seed(url)
                else:
                    self.handle.remove_url_seed(url)
            self.sources.web_seeds_state(
                _('in use') if use else _('not needed any more'))

    def _use_seeder(self, use):
        """Connect to the seeder, or leave its upload to other agents."""
        if use == self.using_seeder or not self.bytes.seeder_ips:
            return
        self.using_seeder = use
        self._filter_seeders()
        if use:
            self.reconnect()
        LOG.debug('%(what)s the seeder of %(ih)s',
                  {'what': 'Using' if use else 'Disconnected from',
                   'ih': self.meta.info_hash})

    def _filter_seeders(self):
        """Keep away from other conductors' seeders, and ours if unused.

        Where conductors share a swarm, the tracker hands out every
        conductor's seeder. Each agent takes the pieces it owns in the
        piece plan from its own conductor's seeder only, whose request
        queue is sized for that conductor's nodes; the rest comes from the
        agents. A piece then leaves the conductors about once, as with one
        conductor: with every seeder open to every agent, libtorrent filled
        the free request slots of the extra seeders with pieces the agents
        could have given each other (two conductors, six nodes: the
        seeders sent 1.6 copies of the image).
        """
        blocked = set(self.bytes.other_seeders) - self.bytes.seeder_ips
        if not self.bytes.seeder_ips:
            # Given no seeder of our own ("ironic-bt write --tracker"
            # alone), the seeders the tracker hands out are the sources.
            blocked = set()
        self._blocked_seeders = set(self.bytes.other_seeders)
        if self.plan is not None and blocked:
            self.plan.shared = True
        if not self.using_seeder:
            blocked |= self.bytes.seeder_ips
        ip_filter = lt.ip_filter()
        for ip in blocked:
            ip_filter.add_rule(ip, ip, 1)
        self.session.set_ip_filter(ip_filter)

    def _note_handout(self, num_peers):
        """A full peer list: the swarm is larger than this agent sees."""
        plan = self.plan
        if plan is not None and plan.held:
            plan.release()
        if plan is None or plan.partial or num_peers < self.num_want:
            return
        plan.partial = True
        LOG.info('The tracker handed out %(n)d peers of %(ih)s, as many as '
                 'asked for: the swarm is larger than this agent sees, so '
                 'pieces are owned on the ring',
                 {'n': num_peers, 'ih': self.meta.info_hash})

    def pump_alerts(self):
        for alert in self.session.pop_alerts():
            self.observer.alert(alert)
            if isinstance(alert, lt.tracker_reply_alert):
                self.sources.tracker(alert.tracker_url(), _(
                    'answered with %d peers') % alert.num_peers)
                self._note_handout(alert.num_peers)
            elif isinstance(alert, lt.tracker_error_alert):
                # The message holds the URL, whose query may carry the
                # node's announce key: log the URL redacted instead.
                url = sources.redact(alert.tracker_url())
                if 'skipping tracker announce' in alert.message():
                    # libtorrent does not announce from its loopback listen
                    # socket to a remote tracker: expected, not an error.
                    LOG.debug('Tracker %s skipped: not reachable from the '
                              'loopback listen socket', url)
                    continue
                reason = alert.failure_reason() or alert.error.message()
                self.sources.tracker(alert.tracker_url(), reason)
                LOG.warning('Tracker %(url)s of %(ih)s: %(err)s',
                            {'url': url, 'ih': self.meta.info_hash,
                             'err': reason})
            elif isinstance(alert, lt.file_error_alert):
                self.error = _file_error(alert)
            elif isinstance(alert, lt.torrent_error_alert):
                if alert.error.category().name() in _SSL_CATEGORIES:
                    # Our certificate, not the disk: libtorrent refused it.
                    self.swarm_error = alert.error.message()
                else:
                    self.error = alert.message()
            elif isinstance(alert, lt.hash_failed_alert):
                self.hash_failures += 1
                # libtorrent hashed what the page cache holds, which is
                # what the peer sent unless the disk already failed to
                # store earlier writes: ask the disk first, so a failing
                # disk is named at once and not taken for a bad peer.
                self.target.flush()
                self.readback.check()
                LOG.warning('Piece %(p)d of %(ih)s failed its hash check '
                            'and will be fetched again; the disk is fine, '
                            'so a peer sent bad data',
                            {'p': alert.piece_index,
                             'ih': self.meta.info_hash})
            elif isinstance(alert, lt.url_seed_alert):
                self.sources.web_seed(alert.server_url(),
                                      alert.error_message()
                                      or alert.error.message())
                LOG.warning('Web seed %(url)s of %(ih)s: %(err)s',
                            {'url': sources.redact(alert.server_url(),
                                                   path=False),
                             'ih': self.meta.info_hash,
                             'err': alert.error_message()
                             or alert.error.message()})
            elif isinstance(alert, (lt.peer_error_alert,
                                    lt.peer_disconnected_alert)):
                if alert.ip[0] in self.bytes.seeder_ips:
                    self.sources.seeder(alert.ip[0], alert.ip[1],
                                        alert.error.message())
                else:
                    LOG.debug('Peer %(ip)s:%(port)d of %(ih)s: %(err)s',
                              {'ip': alert.ip[0], 'port': alert.ip[1],
                               'ih': self.meta.info_hash,
                               'err': alert.error.message()})
                    # libtorrent's errors::duplicate_peer_id.
                    self.redial.lost(time.monotonic(), alert.ip[0],
                                     alert.error.message()
                                     == 'duplicate peer-id')
            elif isinstance(alert, lt.incoming_connection_alert):
                self._handshaking = True
            elif isinstance(alert, lt.peer_connect_alert):
                self._handshaking = True
                if alert.ip[0] in self.bytes.seeder_ips:
                    self.sources.seeder(alert.ip[0], alert.ip[1],
                                        _('connected'))
            elif isinstance(alert, lt.peer_ban_alert):
                LOG.warning('Banned peer %(ip)s of %(ih)s: it sent data that '
                            'failed the hash check',
                            {'ip': alert.ip[0], 'ih': self.meta.info_hash})

    def status(self):
        self.pump_alerts()
        st = self.handle.status()
        if (self.swarm_error or st.errc.value()
                and (st.errc.category().name() in _SSL_CATEGORIES
                     or st.error_file == _ERROR_FILE_SSL_CTX)):
            raise DownloadError(
                _('The swarm of %(ih)s refused this node\'s certificate: '
                  '%(err)s. Check the certificate the conductor issued for '
                  'this deploy ([bittorrent]ssl).')
                % {'ih': self.meta.info_hash,
                   'err': self.swarm_error or st.errc.message()})
        if self.error or st.errc.value():
            raise TargetError(
                _('Writing %(ih)s to %(t)s failed: %(err)s. Check the '
                  'disk\'s health and the kernel log (dmesg).')
                % {'ih': self.meta.info_hash, 't': self.target.path,
                   'err': self.error or st.errc.message()})
        return st

    def reconnect(self):
        for peer in self.peers:
            self.handle.connect_peer(peer)

    def connected_incomplete(self):
        """Connected peers that do not have every piece yet."""
        return sum(1 for p in self.handle.get_peer_info()
                   if not p.flags & lt.peer_info.seed)

    def refresh_swarm_counts(self):
        """Announce now, so the tracker's counts in the status are fresh."""
        self.handle.force_reannounce(
            0, -1, lt.reannounce_flags_t.ignore_min_interval)

    def close(self):
        """Stop seeding and release the target before returning.

        Dropping the last reference to the session blocks until libtorrent
        has aborted every connection and closed its file handles.
        """
        if self.session is None:
            return
        self.session.remove_torrent(self.handle)
        self.handle = None
        if self.ssl_port is not None:
            # Leave the "stopped" announce a moment to leave over UDP: the
            # tracker then releases the node at once.
            self.ssl_port.close(
                announce_wait=STOPPED_WAIT if self.udp_trackers else 0.0)
        self.session = None


def write(meta, target, trackers=(), peers=(), listen_host='0.0.0.0',
          listen_port=6881, linger_timeout=300, progress_interval=10,
          stall_timeout=300, expected_sha256=None, settings=None,
          create=False, share_pieces=True, tuning=None, observer=None,
          web_seeds=(), web_seed_delay=5.0, unreachable_timeout=60,
          credentials=None):
    """Download ``meta`` into ``target``, verify it, linger, and stop.

    :param meta: a :class:`ironic_bt.common.torrent.Metainfo`.
    :param target: a block device or a regular file path.
    :param trackers: announce URLs.
    :param peers: ``HOST:PORT`` strings to connect to directly.
    :param listen_host: address to accept peer connections on.
    :param listen_port: port to accept peer connections on.
    :param linger_timeout: most seconds to keep seeding after verifying.
    :param progress_interval: seconds between progress log lines.
    :param stall_timeout: seconds without progress before giving up.
    :param expected_sha256: hex sha256 of the image, checked if given.
    :param settings: extra libtorrent settings (see
        :mod:`ironic_bt.common.swarm`), on top of ``tuning.settings``.
    :param create: create ``target`` as a regular file if it is missing.
    :param share_pieces: agree with the other agents on who fetches which
        piece from the seeder (:mod:`ipa_extension.pieces`).
    :param tuning: a :class:`Tuning`; the defaults if None.
    :param observer: an :class:`Observer`.
    :param web_seeds: HTTP(S) URLs of the raw image (BEP 19 web seeds),
        used only for the pieces no peer has, once the seeder has been out
        of reach for ``web_seed_delay`` seconds.
    :param web_seed_delay: see ``web_seeds``.
    :param unreachable_timeout: seconds without any connected source (no
        seeder, peer or web seed) and no progress after which the write
        fails, naming every source and what happened to it.
    :param credentials: :class:`ironic_bt.common.certs.Credentials`: join the
        swarm over SSL only, with this certificate (None: plain torrent).
    :raises: TargetError (the disk), DownloadError (the swarm),
        VerifyError (what the disk holds is not the image).
    :returns: a :class:`WriteResult`.
    """
    start = time.monotonic()
    tuning = dataclasses.replace(tuning or Tuning())
    if settings:
        tuning.settings = dict(tuning.settings, **settings)
    observer = observer or Observer()
    # Refuse every bad argument before the first byte is written.
    peers = [_parse_peer(p) for p in peers]
    if credentials is not None:
        try:
            credentials.check()
        except certs.CertificateError as e:
            raise DownloadError(_('Cannot join the swarm of %(ih)s: %(err)s')
                                % {'ih': meta.info_hash, 'err': e})
    dev = device.Target(target, create=create)
    dev.check_fits(meta)
    if not trackers and not peers and not web_seeds:
        raise DownloadError(_('No tracker, peer or web seed given for %s: '
                              'there is no one to download from.')
                            % meta.info_hash)
    for url in web_seeds:
        if parse.urlsplit(url).scheme not in ('http', 'https'):
            raise DownloadError(_('Web seed "%s" is not an HTTP(S) URL.')
                                % sources.redact(url, path=False))
    with dev:
        zeroed = dev.zero(meta)
        LOG.info('Writing %(ih)s (%(size)d bytes, %(pieces)d pieces of '
                 '%(plen)d) to %(t)s; %(zero)d bytes are zero and were '
                 'zeroed locally',
                 {'ih': meta.info_hash, 'size': meta.size,
                  'pieces': meta.num_pieces, 'plen': meta.piece_length,
                  't': target, 'zero': zeroed})
        present, seconds = resume.present_pieces(
            target, meta, samples=tuning.resume_samples)
        resumed = sum(meta.piece_size(i) for i in present)
        if present:
            LOG.info('%(t)s already holds %(n)d of the %(all)d pieces of '
                     '%(ih)s (%(b)d bytes, found in %(s).1f s): downloading '
                     'only the rest',
                     {'t': target, 'n': len(present),
                      'all': meta.num_pieces - len(meta.zero_pieces),
                      'ih': meta.info_hash, 'b': resumed, 's': seconds})
        readback = device.ReadBack(dev, meta, expected_sha256,
                                   flush_interval=tuning.flush_interval)
        try:
            dl = _Download(meta, dev, readback, trackers, peers, listen_host,
                           listen_port, tuning, observer,
                           share=share_pieces, present=present,
                           web_seeds=web_seeds,
                           web_seed_delay=web_seed_delay,
                           credentials=credentials)
            try:
                st = _download(dl, readback, progress_interval,
                               stall_timeout, unreachable_timeout)
                download_seconds = time.monotonic() - start
                dev.flush()
                verify_start = time.monotonic()
                sha256 = readback.finish()
                verify_seconds = time.monotonic() - verify_start
                LOG.info('Verified %(t)s: sha256 %(sha)s, %(s).1f s after '
                         'the last piece arrived',
                         {'t': target, 'sha': sha256, 's': verify_seconds})
                observer.verified(sha256)
                linger_seconds = _linger(dl, linger_timeout)
                st = dl.handle.status()
                from_seeder = dl.bytes.from_seeder(st.total_payload_download)
                web_bytes = dl.bytes.from_web_seeds()
            finally:
                dl.close()
        finally:
            readback.close()
    return WriteResult(
        target=target, size=meta.size, info_hash=meta.info_hash,
        downloaded_bytes=st.total_payload_download,
        downloaded_from_seeder_bytes=from_seeder,
        uploaded_bytes=st.total_payload_upload,
        zero_bytes=zeroed, seconds=round(time.monotonic() - start, 3),
        download_seconds=round(download_seconds, 3),
        verify_seconds=round(verify_seconds, 3),
        linger_seconds=round(linger_seconds, 3), sha256=sha256,
        hash_failures=dl.hash_failures,
        downloaded_from_web_seed_bytes=web_bytes, resumed_bytes=resumed)


def _download(dl, readback, progress_interval, stall_timeout,
              unreachable_timeout):
    meta = dl.meta
    poll = dl.tuning.poll_interval
    start = last_log = last_progress = last_reachable = time.monotonic()
    last_present = -1
    while True:
        st = dl.poll()
        readback.check()
        now = time.monotonic()
        present = dl.present_bytes(st)
        if dl.tuning.overlap_read_back and present != last_present:
            readback.update(st.pieces)
        if st.is_seeding:
            LOG.info('Downloaded %(ih)s: %(b)d bytes in %(s).1f s, from '
                     '%(from)s',
                     {'ih': meta.info_hash, 'b': st.total_payload_download,
                      's': now - start, 'from': dl.bytes.describe()})
            return st
        if present != last_present or dl.connected:
            last_reachable = now
        if present != last_present:
            last_present, last_progress = present, now
        elif now - last_reachable > unreachable_timeout:
            raise DownloadError(
                _('Download of %(ih)s made no progress for %(s)d s with '
                  'nothing to download from, at %(pct).1f%%: %(sources)s. '
                  'Check that the conductor\'s tracker, seeder and web '
                  'server are reachable from this node on the provisioning '
                  'network.')
                % {'ih': meta.info_hash, 's': unreachable_timeout,
                   'pct': 100.0 * present / meta.size,
                   'sources': dl.sources.describe()})
        elif now - last_progress > stall_timeout:
            raise DownloadError(
                _('Download of %(ih)s stalled at %(pct).1f%% for %(s)d s '
                  'with %(p)d peers: %(sources)s. Check that the '
                  'conductor\'s tracker and seeder are reachable from this '
                  'node.')
                % {'ih': meta.info_hash, 'pct': 100.0 * present / meta.size,
                   's': stall_timeout, 'p': st.num_peers,
                   'sources': dl.sources.describe()})
        if now - last_log >= progress_interval:
            last_log = now
            LOG.info('%(ih)s: %(pct).1f%% of %(size)d bytes on the disk, '
                     '%(rate).1f MiB/s down, %(up).1f MiB/s up, %(peers)d '
                     'peers (%(seeds)d seeds)',
                     {'ih': meta.info_hash,
                      'pct': 100.0 * present / meta.size, 'size': meta.size,
                      'rate': st.download_payload_rate / 1048576.0,
                      'up': st.upload_payload_rate / 1048576.0,
                      'peers': st.num_peers, 'seeds': st.num_seeds})
        dl.wait(poll)


def _linger(dl, linger_timeout):
    """Seed while the swarm has incomplete peers, at most linger_timeout."""
    start = time.monotonic()
    quiet_since = None
    refreshed = False
    while time.monotonic() - start < linger_timeout:
        try:
            st = dl.poll(downloading=False)
        except TargetError as e:
            # The disk was verified already; a read error while serving
            # others ends our seeding, not our deploy.
            LOG.warning('Stopped seeding early: %s', e)
            break
        connected = dl.connected_incomplete()
        if connected:
            refreshed = False
        elif st.num_incomplete > 0 and not refreshed:
            # The tracker's count dates from our last announce, often the
            # "completed" one, when the peers around us were still
            # downloading. Now that every connected peer has the image,
            # ask again rather than linger until the next interval; once
            # per time the connected peers all finish, so the tracker sees
            # at most a few extra announces per node.
            dl.refresh_swarm_counts()
            refreshed = True
        if connected or st.num_incomplete > 0:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > dl.tuning.linger_quiet:
            break
        time.sleep(dl.tuning.poll_interval)
    seconds = time.monotonic() - start
    LOG.info('Stopped seeding %(ih)s after lingering %(s).1f s, %(up)d bytes '
             'uploaded', {'ih': dl.meta.info_hash, 's': seconds,
                          'up': dl.handle.status().total_payload_upload})
    return seconds
