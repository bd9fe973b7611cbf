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

"""The tracker's swarm table: what it knows and decides, without I/O.

It takes validated requests (:mod:`ironic_bt.tracker.protocol`), records
the peers of each published torrent and chooses whom to hand out. It
serves only torrents published by this deployment: a tracker that accepted
any info-hash would be an open tracker on the provisioning network.
"""

import collections
import dataclasses
import ipaddress
import random
import threading
import time

from ironic_bt.common.i18n import _
from ironic_bt.common import publication
from ironic_bt.common import ring
from ironic_bt.tracker import protocol

#: Seconds a standard client stays listed after its last announce. Those
#: built on libtorrent (qBittorrent, Deluge) re-announce no more often than
#: every 300 s (libtorrent's ``min_announce_interval``), whatever interval
#: the tracker asks for: three of their intervals, so one lost announce
#: does not drop them.
FOREIGN_PEER_TTL = 900

#: How the peer id of an ironic-bt session starts (the fingerprint set in
#: :mod:`ironic_bt.common.swarm`, which this module does not import: the
#: tracker has no business with libtorrent).
PEER_ID_PREFIX = b'-IB'

#: ironic-bt's agents and seeders (that peer id, or a ``node`` label), and
#: every other client.
_AGENT, _FOREIGN = 0, 1


@dataclasses.dataclass(frozen=True, slots=True)
class NodeProgress:
    """The last announce of a node (an agent announcing its label)."""

    left: int
    uploaded: int
    downloaded: int
    #: When it came (the table's clock).
    seen: float


@dataclasses.dataclass(slots=True)
class Peer:
    """What the table knows about one peer of one swarm."""

    ip: str
    port: int
    peer_id: bytes
    left: int
    uploaded: int
    downloaded: int
    node: str | None
    first_seen: float
    last_seen: float
    event: str
    #: Whether this peer's "completed" was seen (and counted once in its
    #: torrent's ``downloaded``, see :meth:`_Torrent.counted`).
    counted: bool = False
    #: The BEP 23 / BEP 7 form, packed once: address then big-endian port.
    packed: bytes = b''
    v6: bool = False
    #: Index in its swarm's list of seeds or of leechers.
    slot: int = -1
    #: _AGENT or _FOREIGN: which recency order, and so which TTL.
    kind: int = 0

    def __post_init__(self):
        if not self.packed:
            self.packed = (ipaddress.ip_address(self.ip).packed
                           + self.port.to_bytes(2, 'big'))
            self.v6 = len(self.packed) == 18

    @property
    def complete(self):
        return self.left == 0


def key(info_hash):
    """The table's key for a torrent, from its info-hash as hex.

    Outside the tracker a torrent is named by the hex of its v1 info-hash
    (``Metainfo.info_hash``: the publisher, the seeder, the logs); inside,
    by the 20-byte keys announces carry (the v1 info-hash and the
    truncated v2 one, both published). The hex of either finds it.

    :raises: ValueError if ``info_hash`` is not 40 hex digits.
    """
    raw = bytes.fromhex(info_hash)
    if len(raw) != 20:
        raise ValueError('an info-hash is 20 bytes (40 hex digits), not %r'
                         % info_hash)
    return raw


class _Swarm:
    """The peers that announced one info-hash.

    Every operation of an announce costs O(1) or O(numwant), whatever the
    swarm's size: peers are kept by address in order of last announce (so
    expiry and eviction only look at the front), and in two lists, seeds
    and leechers, from which a random sample is drawn by index.

    ironic-bt agents (they announce a ``node`` label at the short interval
    asked for) and other clients (which may announce only every 300 s)
    expire after different times, so each kind has its own recency order.
    """

    def __init__(self, torrent, info_hash, census):
        self.torrent = torrent
        self.info_hash = info_hash
        #: Peers of each kind in the whole table (shared by every swarm).
        self.census = census
        self.peers = {}
        self.orders = (collections.OrderedDict(), collections.OrderedDict())
        self.seeds = []
        self.leechers = []
        #: The agents that came to download, on the ring of the piece plan
        #: (:mod:`ironic_bt.common.ring`), by address as their peers see
        #: it; and the peers at each such address.
        self.ring = ring.Ring()
        self.ringed = collections.defaultdict(set)

    def _list(self, peer):
        return self.seeds if peer.complete else self.leechers

    def _enlist(self, peer):
        peers = self._list(peer)
        peer.slot = len(peers)
        peers.append(peer)

    def _unlist(self, peer):
        peers = self._list(peer)
        last = peers.pop()
        if last is not peer:
            peers[peer.slot] = last
            last.slot = peer.slot

    def add(self, address, peer):
        self.peers[address] = peer
        self.orders[peer.kind][address] = peer
        self.census[peer.kind] += 1
        self._enlist(peer)
        if peer.kind == _AGENT and not peer.complete:
            # An agent that came to download (seeders announce complete).
            self.ringed[peer.ip].add(address)
            self.ring.add(peer.ip)

    def _unring(self, address):
        at = self.ringed.get(address[0])
        if at is not None and address in at:
            at.discard(address)
            if not at:
                del self.ringed[address[0]]
                self.ring.remove(address[0])

    def touch(self, address, peer, kind):
        """Move a peer to the back of its (possibly new) recency order."""
        if kind != peer.kind:
            del self.orders[peer.kind][address]
            self.census[peer.kind] -= 1
            self.census[kind] += 1
            peer.kind = kind
            self.orders[kind][address] = peer
        else:
            self.orders[kind].move_to_end(address)

    def remove(self, address):
        peer = self.peers.pop(address, None)
        if peer is not None:
            del self.orders[peer.kind][address]
            self.census[peer.kind] -= 1
            self._unlist(peer)
            self._unring(address)

    def clear(self):
        for kind, order in enumerate(self.orders):
            self.census[kind] -= len(order)

    def set_left(self, peer, left):
        if (left == 0) != peer.complete:
            self._unlist(peer)
            peer.left = left
            self._enlist(peer)
        else:
            peer.left = left

    def pop_oldest(self, ttls):
        """Drop the peer that would expire first."""
        fronts = [(next(iter(order.values())), kind)
                  for kind, order in enumerate(self.orders) if order]
        peer, _kind = min(fronts,
                          key=lambda item: item[0].last_seen + ttls[item[1]])
        self.remove((peer.ip, peer.port))

    def expire(self, now, ttls):
        for order, ttl in zip(self.orders, ttls):
            deadline = now - ttl
            while order:
                peer = next(iter(order.values()))
                if peer.last_seen >= deadline:
                    break
                self.remove((peer.ip, peer.port))

    def counts(self):
        return len(self.seeds), len(self.leechers)

    def sample(self, rng, requester, count, seed):
        """Up to ``count`` random peers other than ``requester``.

        A window of ``count + 1`` consecutive peers at a random place in
        the lists (seen as one ring): each peer is handed out with the same
        probability, and the copy is done by list slicing, not one peer at
        a time. The lists' order is the announce order shuffled by every
        removal, so windows of neighbours do not repeat.

        A ``seed`` gets leechers first: seeds have nothing to exchange. The
        rest is filled with seeds all the same, because ``left=0`` is also
        what a client sends while it still fetches the metadata (BEP 9)
        and so does not know the torrent's size.

        An agent on a ring larger than ``count`` gets its predecessors,
        with which it knows which pieces it owns, then its fingers: the
        same peers at every announce, so that its connections stay
        bounded (:mod:`ironic_bt.common.ring`). Its conductor gives it the
        seeder.
        """
        ring = self.ring
        if (requester is None or requester.ip not in ring
                or len(ring) <= count):
            return self._sample(rng, requester, count, seed)
        ips = ring.predecessors(requester.ip)[:count]
        ips += ring.fingers(requester.ip, count - len(ips), exclude=ips)
        return [self.peers[next(iter(self.ringed[ip]))] for ip in ips]

    def _sample(self, rng, requester, count, seed):
        if seed:
            chosen = self._window(rng, [self.leechers], count + 1)
            if len(chosen) < count + 1:
                chosen += self._window(rng, [self.seeds],
                                       count + 1 - len(chosen))
        else:
            chosen = self._window(rng, [self.leechers, self.seeds], count + 1)
        if requester is not None:
            chosen = [peer for peer in chosen if peer is not requester]
        return chosen[:count]

    @staticmethod
    def _window(rng, pools, want):
        total = sum(len(pool) for pool in pools)
        want = min(total, want)
        if not want:
            return []
        start = rng.randrange(total) if want < total else 0
        chosen = []
        while want:
            offset = start
            for pool in pools:
                if offset < len(pool):
                    piece = pool[offset:offset + want]
                    chosen.extend(piece)
                    want -= len(piece)
                    start += len(piece)
                    break
                offset -= len(pool)
            else:
                start = 0
        return chosen


class _Torrent:
    """One published torrent: a swarm per info-hash, one download count.

    A hybrid v1+v2 torrent is announced under its v1 info-hash and under its
    v2 info-hash truncated to 20 bytes. The two are kept apart, as
    opentracker does: a peer that connects with the v2 hash to a v1-only
    client (rtorrent, aria2) gets a v1 handshake back and drops it
    ("received invalid info_hash"). libtorrent announces both, so an agent
    is in both swarms; a v1-only client only in the first.
    """

    def __init__(self, name, info_hashes, size, census, local=True):
        self.name = name
        self.size = size
        self.info_hashes = info_hashes
        self.swarms = [_Swarm(self, key, census) for key in info_hashes]
        self.downloaded = 0
        #: Published by this tracker's own conductor (or command).
        self.local = local
        #: Seeders of other conductors publishing it with a key: address
        #: -> when last seen.
        self.publishers = {}
        #: With announce keys: node label -> (address, when last seen) of
        #: the one address its key is served to.
        self.announcers = {}
        #: Node label -> its last announce (:class:`NodeProgress`), kept
        #: after its peer record expires: how long a node has been silent
        #: is what the conductor asks about a node that lost power.
        self.progress = {}

    def note_progress(self, req, now, limit):
        """Keep what a node's announce says of its progress."""
        if req.node not in self.progress and len(self.progress) >= limit:
            oldest = min(self.progress, key=lambda n: self.progress[n].seen)
            del self.progress[oldest]
        self.progress[req.node] = NodeProgress(
            left=req.left, uploaded=req.uploaded,
            downloaded=req.downloaded, seen=now)

    def alive(self, now, ttl):
        """Whether anybody still publishes it.

        Published here, or by a seeder that announced with a publication
        key in the last ``ttl`` seconds.
        """
        if self.publishers:
            deadline = now - ttl
            for address, seen in list(self.publishers.items()):
                if seen < deadline:
                    del self.publishers[address]
        return self.local or bool(self.publishers)

    def counted(self, address):
        # libtorrent sends "completed" once per info-hash of a hybrid
        # torrent, and that is still one download.
        for swarm in self.swarms:
            peer = swarm.peers.get(address)
            if peer is not None and peer.counted:
                return True
        return False

    def peers(self):
        """Each address once: (peer as last seen, event, node label).

        The peer's record under the info-hash it announced last; the event
        and label are the last ones it sent under any of them (libtorrent
        sends "started" under each key, later announces carry none).
        """
        merged = {}
        for swarm in self.swarms:
            for address, peer in swarm.peers.items():
                known = merged.get(address)
                if known is None:
                    merged[address] = (peer, peer.event, peer.node)
                    continue
                older, newer = ((known[0], peer)
                                if peer.last_seen > known[0].last_seen
                                else (peer, known[0]))
                merged[address] = (newer, newer.event or older.event,
                                   newer.node or older.node)
        return list(merged.values())


class SwarmTable:
    """The published torrents and their peers, bounded and expiring.

    Thread-safe: the HTTP server answers from several threads while the
    conductor publishes and unpublishes.
    """

    def __init__(self, max_swarms=256, max_peers=2000, interval=10,
                 peer_ttl=None, foreign_peer_ttl=FOREIGN_PEER_TTL,
                 clock=time.monotonic, on_stopped=None, on_clients=None,
                 publish_secret=None, announce_secret=None):
        """Create an empty table.

        :param max_swarms: most torrents published at once.
        :param max_peers: most peers kept per info-hash; the one that would
            expire first is dropped to make room.
        :param interval: seconds between announces asked of clients.
        :param peer_ttl: seconds after which a silent ironic-bt peer (an
            agent or a seeder) is forgotten; three announce intervals by
            default, so one lost announce does not drop it.
        :param foreign_peer_ttl: the same for standard clients, which may
            announce far less often than asked (see
            :data:`FOREIGN_PEER_TTL`). At least ``peer_ttl``.
        :param clock: monotonic time source, replaceable in tests.
        :param on_stopped: called with the ``node`` parameter of every
            ``stopped`` announce that carries one, outside the table's
            lock: an agent that stops announcing has ended its download,
            successfully or not. The parameter is the announcer's claim,
            so it may only prompt a check, never decide anything.
        :param on_clients: called with True when a standard client (a peer
            whose id is not ironic-bt's) announces while none is listed,
            before it is given any peer, and with False when the last one
            is gone; outside the lock. The seeder serves such clients
            differently (see :meth:`ironic_bt.seeder.Seeder.serve_clients`).
        :param publish_secret: the secret shared with other conductors
            (``[bittorrent]tracker_secret``). With it, a seeder announcing
            a valid publication key (see :mod:`.publication`) publishes its
            torrent here for as long as it keeps announcing; without it,
            only :meth:`publish` does.
        :param announce_secret: bytes; with it, only announcers with the
            announce key of their ``node`` label and the torrent
            (:func:`.publication.announce_key`), or a publication key, are
            served, and a key is served to one address at a time. The
            others get a failure and no peers.
        """
        self.max_swarms = max_swarms
        self.max_peers = max_peers
        self.interval = interval
        self.peer_ttl = 3 * interval if peer_ttl is None else peer_ttl
        self.foreign_peer_ttl = max(self.peer_ttl, foreign_peer_ttl)
        self._ttls = (self.peer_ttl, self.foreign_peer_ttl)
        self._clock = clock
        self._on_stopped = on_stopped
        self._on_clients = on_clients
        self._publish_secret = publish_secret
        self._announce_secret = announce_secret
        self._census = [0, 0]
        self._clients = False
        self._lock = threading.Lock()
        self._random = random.Random()
        self._swarms = {}   # every info-hash -> its _Swarm

    def _torrents(self):
        # Each torrent once, under its first (v1) key.
        return {swarm.torrent.info_hashes[0]: swarm.torrent
                for swarm in self._swarms.values()}

    def publish(self, info_hashes, name, size=None):
        """Serve one torrent, reachable under each of its info-hashes.

        :param info_hashes: one or two 20-byte keys: a hybrid v1+v2
            torrent's v1 hash and its v2 hash truncated to 20 bytes. Each
            gets its own peer list (see :class:`_Torrent`).
        :param name: label shown in :meth:`status`.
        :param size: the torrent's size in bytes, shown in :meth:`status`
            so that progress can be given as a fraction.
        :raises: ValueError if the keys are not 20-byte values, or if some
            but not all of them belong to another published torrent.
        :raises: protocol.TrackerError if ``max_swarms`` torrents are
            published.
        """
        keys = tuple(dict.fromkeys(bytes(key) for key in info_hashes))
        if not 1 <= len(keys) <= 2 or any(len(key) != 20 for key in keys):
            raise ValueError('publish() needs one or two 20-byte info-hashes')
        with self._lock:
            existing = {self._swarms[key].torrent if key in self._swarms
                        else None for key in keys}
            if existing == {None}:
                self._drop_dead_locked(self._clock())
                if len(self._torrents()) >= self.max_swarms:
                    raise protocol.TrackerError(
                        _('cannot publish %(name)s: the tracker already '
                          'serves %(max)d torrents; unpublish unused images '
                          'or raise [bittorrent]max_swarms')
                        % {'name': name, 'max': self.max_swarms})
                torrent = _Torrent(name, keys, size, self._census)
                for swarm in torrent.swarms:
                    self._swarms[swarm.info_hash] = swarm
                return
            torrent = existing.pop()
            if existing or torrent is None or torrent.info_hashes != keys:
                raise ValueError('info-hashes %s overlap a published torrent '
                                 'with other info-hashes'
                                 % ', '.join(key.hex() for key in keys))
            if not torrent.local:
                # Another conductor published it first: now ours too.
                torrent.local = True
                torrent.name = name
                torrent.size = size if size is not None else torrent.size

    def unpublish(self, info_hash):
        """Stop serving a torrent and forget its peers.

        :param info_hash: the torrent's info-hash, hex (see :func:`key`).
        :returns: True if it was published.
        """
        with self._lock:
            swarm = self._swarms.get(key(info_hash))
            if swarm is None or not swarm.torrent.local:
                return False
            torrent = swarm.torrent
            torrent.local = False
            if torrent.alive(self._clock(), self.peer_ttl):
                # Other conductors' seeders still publish it: their nodes
                # keep their swarm.
                return True
            self._drop_locked(torrent)
            clients = self._clients_changed()
        self._report_clients(clients)
        return True

    def _drop_locked(self, torrent):
        for swarm in torrent.swarms:
            swarm.clear()
            del self._swarms[swarm.info_hash]

    def _drop_dead_locked(self, now):
        """Forget the torrents nobody publishes any more."""
        for torrent in list(self._torrents().values()):
            if not torrent.alive(now, self.peer_ttl):
                self._drop_locked(torrent)

    def _lookup_locked(self, req, now):
        """The swarm of an announce, published by its key if it has one.

        :raises: protocol.TrackerError if nobody publishes the info-hash,
            or the publication key is refused.
        """
        swarm = self._swarms.get(req.info_hash)
        if req.publish is not None:
            swarm = self._publish_remote_locked(req, swarm, now)
        elif swarm is not None and not swarm.torrent.alive(now,
                                                           self.peer_ttl):
            self._drop_locked(swarm.torrent)
            swarm = None
        if swarm is None:
            raise protocol.TrackerError(
                _('unknown info_hash %s: this tracker only serves images '
                  'published by this ironic-bt deployment')
                % req.info_hash.hex())
        return swarm

    def _publish_remote_locked(self, req, swarm, now):
        if self._publish_secret is None:
            raise protocol.TrackerError(
                _('this tracker takes no publications from other '
                  'conductors; set the same [bittorrent]tracker_secret on '
                  'every conductor that uses it'))
        try:
            keys, size = publication.check_key(self._publish_secret,
                                               req.publish)
        except publication.InvalidKey as e:
            raise protocol.TrackerError(str(e)) from None
        if req.info_hash not in keys:
            raise protocol.TrackerError(_('the publication key is for another '
                                          'torrent than info_hash %s')
                                        % req.info_hash.hex())
        if swarm is None:
            if any(key in self._swarms for key in keys):
                raise protocol.TrackerError(
                    _('info-hashes %s overlap a published torrent with '
                      'other info-hashes')
                    % ', '.join(key.hex() for key in keys))
            self._drop_dead_locked(now)
            if len(self._torrents()) >= self.max_swarms:
                raise protocol.TrackerError(
                    _('cannot publish %(ih)s: the tracker already serves '
                      '%(max)d torrents') % {'ih': keys[0].hex(),
                                             'max': self.max_swarms})
            torrent = _Torrent(_('published by %s') % req.ip, keys, size,
                               self._census, local=False)
            for each in torrent.swarms:
                self._swarms[each.info_hash] = each
            swarm = self._swarms[req.info_hash]
        address = (req.ip, req.port)
        if req.event == 'stopped':
            swarm.torrent.publishers.pop(address, None)
        else:
            swarm.torrent.publishers[address] = now
        return swarm

    def record(self, req):
        """Record an announce and choose the peers to hand out.

        :param req: a :class:`~ironic_bt.tracker.protocol.AnnounceRequest`.
        :returns: (complete, incomplete, peers): the counts of the swarm of
            ``req.info_hash`` and at most ``req.numwant`` :class:`Peer` of
            it other than the requester, chosen at random (leechers first
            for a seed, see :meth:`_Swarm.sample`).
        :raises: protocol.TrackerError if the info-hash is not published.
        """
        now = self._clock()
        with self._lock:
            swarm = self._lookup_locked(req, now)
            if self._announce_secret is not None and req.publish is None:
                self._authorize_locked(swarm.torrent, req, now)
            swarm.expire(now, self._ttls)
            address = (req.ip, req.port)
            if req.event == 'stopped':
                swarm.remove(address)
                requester = None
            else:
                requester = self._update(swarm, address, req, now)
            if req.node:
                swarm.torrent.note_progress(req, now, 2 * self.max_peers)
            chosen = swarm.sample(self._random, requester, req.numwant,
                                  seed=req.left == 0)
            complete, incomplete = swarm.counts()
            clients = self._clients_changed()
        self._report_clients(clients)
        if (req.event == 'stopped' and req.node
                and self._on_stopped is not None):
            self._on_stopped(req.node)
        return complete, incomplete, chosen

    def _authorize_locked(self, torrent, req, now):
        """Refuse an announcer without its key, or using another's.

        :raises: protocol.TrackerError.
        """
        node = req.node or ''
        if not publication.check_announce_key(
                self._announce_secret, node, torrent.info_hashes[0],
                req.auth):
            raise protocol.TrackerError(
                _('announce key missing or wrong for node "%(node)s" and '
                  'info_hash %(ih)s: this tracker serves only the nodes '
                  'this deployment deploys')
                % {'node': node[:protocol.MAX_NODE_LENGTH],
                   'ih': req.info_hash.hex()})
        if not node:
            return
        # One address per node: agents listen on their provisioning
        # address only.
        label = node
        holder = torrent.announcers.get(label)
        if (holder is not None and holder[0] != req.ip
                and holder[1] > now - self.peer_ttl):
            raise protocol.TrackerError(
                _('the announce key of node "%s" is in use from another '
                  'address') % node)
        if holder is None and len(torrent.announcers) >= 2 * self.max_peers:
            deadline = now - self.peer_ttl
            for old, (_ip, seen) in list(torrent.announcers.items()):
                if seen < deadline:
                    del torrent.announcers[old]
            if len(torrent.announcers) >= 2 * self.max_peers:
                raise protocol.TrackerError(
                    _('too many announcers for info_hash %s')
                    % req.info_hash.hex())
        if req.event == 'stopped':
            torrent.announcers.pop(label, None)
        else:
            torrent.announcers[label] = (req.ip, now)

    def has_clients(self):
        """Whether a standard client is listed (see ``on_clients``)."""
        with self._lock:
            return self._clients

    def _clients_changed(self):
        """Under the lock: True or False if that changed, else None."""
        present = self._census[_FOREIGN] > 0
        if present == self._clients:
            return None
        self._clients = present
        return present

    def _report_clients(self, present):
        if present is not None and self._on_clients is not None:
            self._on_clients(present)

    def _update(self, swarm, address, req, now):
        peer = swarm.peers.get(address)
        ours = (req.node or req.peer_id.startswith(PEER_ID_PREFIX)
                or (peer is not None and peer.node))
        kind = _AGENT if ours else _FOREIGN
        if peer is None:
            if len(swarm.peers) >= self.max_peers:
                swarm.pop_oldest(self._ttls)
            peer = Peer(ip=req.ip, port=req.port, peer_id=req.peer_id,
                        left=req.left, uploaded=req.uploaded,
                        downloaded=req.downloaded, node=req.node,
                        first_seen=now, last_seen=now, event=req.event,
                        kind=kind)
            swarm.add(address, peer)
        else:
            swarm.touch(address, peer, kind)
            peer.peer_id = req.peer_id
            swarm.set_left(peer, req.left)
            peer.uploaded = req.uploaded
            peer.downloaded = req.downloaded
            peer.node = req.node or peer.node
            peer.last_seen = now
            # Keep the last meaningful event: regular announces carry none.
            peer.event = req.event or peer.event
        if req.event == 'completed' and not peer.counted:
            if not swarm.torrent.counted(address):
                swarm.torrent.downloaded += 1
            peer.counted = True
        return peer

    def scrape_counts(self, info_hashes):
        """The counts of each info-hash asked for.

        :param info_hashes: the requested keys; empty means every published
            torrent, each under its first (v1) key, which every client
            announces.
        :returns: {key: (complete, downloaded, incomplete)}; unknown keys
            are omitted. ``downloaded`` counts the torrent's completions
            under any of its keys.
        :raises: protocol.TrackerError if keys were asked for and none is
            published.
        """
        now = self._clock()
        files = {}
        with self._lock:
            self._drop_dead_locked(now)
            if info_hashes:
                wanted = {key: self._swarms[key] for key in info_hashes
                          if key in self._swarms}
                if not wanted:
                    raise protocol.TrackerError(
                        _('unknown info_hash %s: this tracker only serves '
                          'images published by this ironic-bt deployment')
                        % info_hashes[0].hex())
            else:
                wanted = {key: torrent.swarms[0]
                          for key, torrent in self._torrents().items()}
            for key, swarm in wanted.items():
                swarm.expire(now, self._ttls)
                complete, incomplete = swarm.counts()
                files[key] = (complete, swarm.torrent.downloaded, incomplete)
        return files

    def peer_progress(self, info_hash, node):
        """What ``node`` last announced in the swarm of ``info_hash``.

        Kept while the torrent is published, also after the node's peer
        record expired: a node that stopped announcing (it lost power, its
        agent died) is reported with the time since, which grows.

        :param info_hash: the torrent's info-hash, hex (see :func:`key`).
        :param node: the node label of its announce URL.
        :returns: a dict with ``left``, ``uploaded``, ``downloaded`` and
            ``seconds_since_seen``; None if the torrent is not published or
            the node never announced.
        """
        now = self._clock()
        with self._lock:
            swarm = self._swarms.get(key(info_hash))
            last = swarm.torrent.progress.get(node) if swarm else None
        if last is None:
            return None
        return {'left': last.left, 'uploaded': last.uploaded,
                'downloaded': last.downloaded,
                'seconds_since_seen': round(now - last.seen, 1)}

    def status(self):
        """Return a JSON-serialisable snapshot for operators.

        :returns: ``{"swarms": [...]}``, one per torrent, with ``name``,
            ``info_hashes`` (hex), ``complete``, ``incomplete``,
            ``downloaded`` and ``peers``: every address that announced any
            of the info-hashes, once, with ``ip``, ``port``, ``node``,
            ``left``, ``uploaded``, ``downloaded``, ``seconds_since_seen``
            and ``event`` as of its last announce.
        """
        now = self._clock()
        swarms = []
        with self._lock:
            self._drop_dead_locked(now)
            for torrent in self._torrents().values():
                for swarm in torrent.swarms:
                    swarm.expire(now, self._ttls)
                peers = sorted(torrent.peers(),
                               key=lambda item: item[0].first_seen)
                complete = sum(1 for peer, _event, _node in peers
                               if peer.complete)
                swarms.append({
                    'name': torrent.name,
                    'size': torrent.size,
                    'info_hashes': [key.hex() for key in torrent.info_hashes],
                    'complete': complete,
                    'incomplete': len(peers) - complete,
                    'downloaded': torrent.downloaded,
                    'peers': [{
                        'ip': peer.ip,
                        'port': peer.port,
                        'node': node,
                        'left': peer.left,
                        'uploaded': peer.uploaded,
                        'downloaded': peer.downloaded,
                        'seconds_since_seen': round(now - peer.last_seen, 1),
                        'event': event,
                    } for peer, event, node in peers],
                })
        swarms.sort(key=lambda swarm: swarm['name'])
        return {'swarms': swarms}
