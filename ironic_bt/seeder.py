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

"""The conductor's seeder: one libtorrent session per process.

It seeds images whose torrent was built from the very file being seeded,
so it never re-reads a whole image at publish time. A torrent the caller
vouches for (``verified``: the conductor hashed this file into it, and the
file has not changed since) starts with every piece, and libtorrent sends
pieces without hashing them again; any other is added in seed mode, where
libtorrent checks each piece the first time it sends it (about 1.2 CPU
seconds per GiB sent more at line rate: doc/source/performance.rst). The
agents verify every piece they receive either way.
"""

import os
import threading
import urllib.parse

import libtorrent as lt
from oslo_log import log

from ironic_bt.common.i18n import _
from ironic_bt.common import sockets
from ironic_bt.common import swarm

LOG = log.getLogger(__name__)


def _none():
    return ''


class SeederError(Exception):
    """The seeder could not start or could not seed an image."""


def _global_class_filter(session):
    mask = 1 << session.global_peer_class_id
    peer_filter = lt.ip_filter()
    peer_filter.add_rule('0.0.0.0', '255.255.255.255', mask)
    peer_filter.add_rule('::', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff',
                         mask)
    return peer_filter


_SHARED_WHY = (' (other conductors share the tracker, and their seeders '
               'may serve the same swarms)')
#: Requests in flight at the seeder, over all the nodes downloading.
_IN_FLIGHT = 32
#: Requests per peer when the number of nodes is not known.
_DEFAULT_QUEUE = 8
#: Requests each peer may queue while a standard client is in a swarm:
#: libtorrent's default. libtorrent answers requests beyond the queue with a
#: reject (BEP 6), and a client without the fast extension (rtorrent) gets
#: nothing at all: it waits for those blocks forever.
_CLIENT_QUEUE = 2000
#: Requests each peer may queue when other conductors may seed the same
#: swarm (they share the tracker): the fewest that keep a connection busy.
#: Several seeders together have more upload than the nodes need, and
#: libtorrent fills every spare request slot at a seeder with pieces the
#: agents could give each other (two conductors, three nodes each at 25
#: Mbit/s: the seeders sent 1.53-1.60 copies of the image with the 11
#: requests per peer that three nodes get, 1.55 with 6, 1.41 with 4, 1.30
#: with 3 and 1.09-1.25 with 2, as fast; see also the piece plan's
#: ``shared``).
_SHARED_QUEUE = 2
#: Requests a lone node may queue: nobody else can get a duplicate, and on
#: a fast link 32 requests (512 KiB) in flight starved it (1 GiB over an
#: unshaped veth: 3.5-3.8 s against 3.9-4.8 s with 32).
_LONE_QUEUE = 256


def request_queue(nodes, shared=False):
    """Requests each peer may queue at the seeder.

    A seeder that queues thousands of requests per peer sends each early
    peer long runs of pieces nobody else has asked for yet, and requests
    still queued when the last pieces leave it become duplicates: the
    seeder's link carries the image more than once while the nodes wait.
    Too short a queue starves a lone node on a fast link instead (each
    connection moves at most queue x 16 KiB per round trip). So the
    seeder keeps about 32 requests (512 KiB) in flight over all the nodes
    downloading: 16 each for two nodes, 8 for four, 2 for sixteen or more
    (doc/source/performance.rst). A lone node cannot get duplicates, so it
    may queue 256, which a fast link needs.

    Where conductors share the tracker, their seeders may serve one swarm,
    whose nodes then need less of each seeder than this one sees: every
    peer queues the fewest requests, whatever the count: a seeder that
    gave its first node the lone node's 256 until the next one came sent
    1.50 copies in one run of two, as the first node filled that queue.
    A lone node on a fast link pays for it: 2 requests per round trip.

    :param nodes: how many nodes download at once; None or 0 if unknown.
    :param shared: whether other conductors may seed the same swarms.
    :returns: the ``max_allowed_in_request_queue`` to use (and announce to
        peers as ``reqq``).
    """
    if shared:
        return _SHARED_QUEUE
    if not nodes:
        return _DEFAULT_QUEUE
    if nodes == 1:
        return _LONE_QUEUE
    return max(2, min(_IN_FLIGHT, -(-_IN_FLIGHT // nodes)))


#: Seconds the alert reader waits for an alert before looking whether the
#: seeder is closing.
ALERT_WAIT = 0.5


class Seeder:
    """A libtorrent session seeding raw images."""

    def __init__(self, listen_host='0.0.0.0', listen_port=6881,
                 upload_rate_limit=0, settings=None, nodes=None, ssl=False,
                 shared=False, handshake_limit=sockets.HANDSHAKE_LIMIT):
        """Start the session.

        :param ssl: serve SSL torrents only, on an SSL listener (see
            :func:`ironic_bt.common.swarm.secure`); every :meth:`add` then
            needs credentials.
        :param shared: whether other conductors share the tracker, and so
            may seed the same swarms (see :func:`request_queue`).
        :param handshake_limit: seconds an incoming SSL connection may take
            to become a peer before it is closed (see
            :class:`ironic_bt.common.sockets.SslPort`).
        """
        self._shared = shared
        overrides = {
            'max_allowed_in_request_queue': request_queue(nodes, shared),
            'peer_fingerprint': swarm.SEEDER_FINGERPRINT,
        }
        overrides.update(settings or {})
        self._queue = overrides['max_allowed_in_request_queue']
        self._nodes = nodes
        self._clients = False
        # expect_nodes() comes from the conductor, serve_clients() from the
        # tracker's thread.
        self._queue_lock = threading.Lock()
        if upload_rate_limit:
            overrides['upload_rate_limit'] = int(upload_rate_limit)
        self._ssl = ssl
        self._session = swarm.make_session(listen_host, listen_port, ssl=ssl,
                                           **overrides)
        self._ssl_port = (sockets.SslPort(self._session, listen_host,
                                          handshake_limit) if ssl else None)
        if upload_rate_limit:
            # Peers on private addresses fall into libtorrent's "local" peer
            # class, which ignores rate limits; provisioning networks are
            # private, so apply the global class to every peer.
            self._session.set_peer_class_filter(
                _global_class_filter(self._session))
        self._lock = threading.Lock()
        self._handles = {}
        self._credentials = {}
        #: The port last seen listening: see :attr:`port`.
        self._port = 0
        if not self._session.is_listening():
            raise SeederError(
                _('The seeder cannot listen on %(host)s:%(port)s. Check '
                  '[bittorrent]seeder_listen_host and seeder_port.')
                % {'host': listen_host, 'port': listen_port})
        LOG.info('Seeder listening on port %(port)d%(ssl)s',
                 {'port': self.port, 'ssl': ' (SSL)' if ssl else ''})
        # Errors (a file that cannot be read, a tracker that refuses) are
        # logged when they happen, not at the next stats() call.
        self._alerts_lock = threading.Lock()
        self._closing = threading.Event()
        self._alert_reader = threading.Thread(
            target=self._read_alerts, args=(self._session,),
            name='ironic-bt-seeder-alerts', daemon=True)
        self._alert_reader.start()

    def expect_nodes(self, nodes):
        """Size the request queue for ``nodes`` nodes downloading at once.

        Peers learn the queue when they connect; peers connected before a
        change get the new limit enforced (their excess requests are
        rejected and asked again).
        """
        with self._queue_lock:
            self._nodes = nodes
            if not self._clients:
                self._set_queue(request_queue(nodes, self._shared),
                                'for %d node(s) downloading%s'
                                % (nodes, _SHARED_WHY if self._shared
                                   else ''))

    def serve_clients(self, present):
        """Serve standard BitTorrent clients, or stop doing so.

        ironic-bt agents are told how many requests to queue (``reqq``,
        sized to the swarm so the seeder sends each piece about once) and
        keep to it. Clients without the BEP 6 fast extension ignore it, and
        libtorrent drops their excess requests without a word. So while a
        standard client is in a swarm the seeder takes libtorrent's default
        queue; agents that connected before keep the short one they were
        told, so the piece plan keeps its gains for them.

        :param present: whether the tracker lists a standard client. The
            built-in tracker says so before it hands the client any peer.
        """
        with self._queue_lock:
            if present == self._clients:
                return
            self._clients = present
            if present:
                self._set_queue(_CLIENT_QUEUE, 'while a standard BitTorrent '
                                'client is in a swarm')
            else:
                self._set_queue(request_queue(self._nodes, self._shared),
                                'now that no standard client is left')

    def _set_queue(self, queue, why):
        if queue == self._queue:
            return
        self._session.apply_settings({'max_allowed_in_request_queue': queue})
        LOG.info('Seeder request queue is now %(q)d per peer %(why)s',
                 {'q': queue, 'why': why})
        self._queue = queue

    @property
    def port(self):
        """The port the seeder accepts peers on, which the agents dial.

        libtorrent closes and reopens its listen sockets when the host's
        network changes (a link going down or up, as a VM's tap does when
        the VM powers off), and meanwhile reports port 0; it reopens them
        on the same port, so that one is the answer.
        """
        port = swarm.listen_port(self._session, self._ssl)
        if port:
            self._port = port
        return self._port

    @property
    def ssl(self):
        return self._ssl

    def add(self, meta, path, trackers=(), verified=False, credentials=None,
            flags=0):
        """Seed ``path`` as the torrent ``meta``; idempotent.

        :param meta: a :class:`ironic_bt.common.torrent.Metainfo` built from
            ``path``.
        :param path: the raw image file to seed.
        :param trackers: announce URLs the seeder announces to.
        :param verified: whether the caller hashed this very file into
            ``meta`` and knows it unchanged since; if not, each piece is
            hashed the first time it is sent.
        :param credentials: :class:`ironic_bt.common.certs.Credentials` of the
            seeder in the torrent's swarm: required if the seeder serves
            SSL torrents, refused if not.
        :param flags: further ``lt.torrent_flags`` for the torrent, for
            experiments (the benchmark's super-seeding variant).
        :raises: SeederError if the credentials do not fit the seeder.
        """
        if self._ssl != (credentials is not None):
            raise SeederError(
                _('The seeder serves %(kind)s torrents: cannot seed %(ih)s '
                  '%(how)s credentials.')
                % {'kind': 'SSL' if self._ssl else 'plain',
                   'ih': meta.info_hash,
                   'how': 'without' if self._ssl else 'with'})
        with self._lock:
            handle = self._handles.get(meta.info_hash)
            if handle is not None:
                if (credentials is not None
                        and self._credentials.get(meta.info_hash)
                        != credentials):
                    # Renewed before the last one expires.
                    swarm.use_certificate(handle, credentials)
                    self._credentials[meta.info_hash] = credentials
                return
            params = lt.add_torrent_params()
            params.ti = meta.torrent_info()
            params.save_path = os.path.dirname(os.path.abspath(path))
            params.renamed_files = {0: os.path.basename(path)}
            if verified:
                params.have_pieces = [True] * meta.num_pieces
            else:
                params.flags |= lt.torrent_flags.seed_mode
            params.flags &= ~lt.torrent_flags.auto_managed
            params.flags &= ~lt.torrent_flags.paused
            params.flags |= flags
            params.trackers = list(trackers)
            handle = swarm.add_torrent(self._session, params, credentials)
            if credentials is not None:
                self._credentials[meta.info_hash] = credentials
            self._handles[meta.info_hash] = handle
        LOG.info('Seeding %(ih)s from %(path)s', {'ih': meta.info_hash,
                                                  'path': path})

    def remove(self, info_hash):
        """Stop seeding the torrent with this (hex v1) info-hash."""
        with self._lock:
            handle = self._handles.pop(info_hash, None)
            self._credentials.pop(info_hash, None)
            if handle is not None:
                self._session.remove_torrent(handle)
        if handle is not None:
            LOG.info('Stopped seeding %s', info_hash)

    def seeding(self):
        with self._lock:
            return sorted(self._handles)

    def stats(self):
        """Per torrent: payload bytes uploaded and connected peers."""
        self.pump_alerts()
        with self._lock:
            handles = dict(self._handles)
        result = {}
        for info_hash, handle in handles.items():
            st = handle.status()
            result[info_hash] = {'uploaded': st.total_payload_upload,
                                 'peers': st.num_peers,
                                 'error': st.errc.message()
                                 if st.errc.value() else None}
        return result

    def connect(self, info_hash, host, port):
        """Connect the seeder to a peer (the conductor handing out peers)."""
        with self._lock:
            handle = self._handles.get(info_hash)
        if handle is not None:
            handle.connect_peer((host, int(port)))

    def _read_alerts(self, session):
        while not self._closing.is_set():
            if session.wait_for_alert(int(ALERT_WAIT * 1000)):
                self.pump_alerts()
            if self._ssl_port is not None and self._ssl_port.due():
                self._check_handshakes()

    def _check_handshakes(self):
        """Close incoming connections that never became peers."""
        with self._lock:
            if self._session is None:
                return
            peers = {p.ip for handle in self._handles.values()
                     for p in handle.get_peer_info()}
        self._ssl_port.check(peers)

    def pump_alerts(self):
        """Log the errors libtorrent reported since the last call."""
        with self._alerts_lock:
            session = self._session
            alerts = session.pop_alerts() if session is not None else []
        for alert in alerts:
            if isinstance(alert, lt.tracker_alert):
                if not alert.category() & lt.alert_category.error:
                    continue
                # The announce URL carries a publication or announce key,
                # and so does the alert's message: log the tracker without
                # its query, and the reason alone.
                url = urllib.parse.urlsplit(alert.tracker_url())
                reason = (getattr(alert, 'failure_reason', _none)()
                          or getattr(alert, 'error_message', _none)()
                          or (alert.error.message()
                              if hasattr(alert, 'error') else alert.what()))
                LOG.warning('Seeder: tracker %(url)s: %(err)s',
                            {'url': url._replace(query='').geturl(),
                             'err': reason})
            elif alert.category() & lt.alert_category.error:
                LOG.warning('Seeder: %s', alert.message())

    def close(self):
        self._closing.set()
        self._alert_reader.join(ALERT_WAIT + 5)
        with self._lock:
            for handle in self._handles.values():
                self._session.remove_torrent(handle)
            self._handles.clear()
            self._credentials.clear()
            if self._ssl_port is not None:
                self._ssl_port.close()
            # Dropping the session aborts it and closes every file handle.
            self._session = None
