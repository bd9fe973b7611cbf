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

"""Who a write's bytes came from: the kinds of peers, and bytes per peer.

An agent meets four kinds of peers: seeders (its own conductor's, and
where conductors share a swarm, the others'), other agents, web seeds, and
standard BitTorrent clients. :class:`PeerBytes` tells them apart by the
peer id of the handshake and counts the payload each one sent.
"""

import ipaddress

import libtorrent as lt

from ipa_extension import pieces
from ironic_bt.common import swarm


SEEDER = 'seeder'
AGENT = 'agent'
WEB_SEED = 'web seed'
#: A standard BitTorrent client (qBittorrent, rtorrent, ...) in the swarm:
#: served like any peer, but no member of the piece plan, which only
#: ironic-bt agents follow.
OTHER = 'other client'


class PeerBytes:
    """Payload bytes received, per peer address and kind of peer.

    Counted from the peers' own counters, looked at every poll, instead of
    from an alert per 16 KiB block. A connection's counter vanishes with it
    (seeds disconnect once we complete), so its last value is kept; what
    arrived after the last look is given to whichever kind of peer was
    connected then (a seeder when one was).
    """

    def __init__(self, seeder_ips):
        #: Addresses of the seeder we were given (our conductor's).
        self.seeder_ips = seeder_ips
        #: Addresses of the seeders of other conductors met so far.
        self.other_seeders = set()
        self._live = {}
        self._closed = {}   # (kind, ip) -> bytes of closed connections
        self._seeder_last = True

    def kind(self, p):
        """SEEDER, AGENT, WEB_SEED or OTHER, for an ``lt.peer_info``.

        Agents, seeders and other clients are told apart by the peer id
        libtorrent sends in the handshake (BEP 20: it starts with the
        client's fingerprint, see :mod:`ironic_bt.common.swarm`); until the
        handshake is done it is all zeroes. A seeder is any conductor's:
        where conductors share a swarm, their seeders reach us through the
        tracker.
        """
        if p.connection_type != lt.peer_info.standard_bittorrent:
            return WEB_SEED
        if p.ip[0] in self.seeder_ips:
            return SEEDER
        pid = p.pid.to_bytes()
        if pid.startswith(swarm.SEEDER_PEER_ID_PREFIX):
            self.other_seeders.add(p.ip[0])
            return SEEDER
        if pid.startswith(swarm.PEER_ID_PREFIX) or not any(pid):
            return AGENT
        return OTHER

    def update(self, peer_info):
        live = {}
        for p in peer_info:
            kind = self.kind(p)
            live[(kind, p.ip[0], p.ip[1])] = p.total_download
        for key, total in self._live.items():
            # Gone, or connected anew between two looks (its counter
            # started again from zero).
            if key not in live or live[key] < total:
                closed = key[:2]
                self._closed[closed] = self._closed.get(closed, 0) + total
        self._live = live
        if live:
            self._seeder_last = any(k[0] in (SEEDER, WEB_SEED) for k in live)

    def by_peer(self):
        """{(kind, ip): bytes} over every connection so far."""
        totals = dict(self._closed)
        for (kind, ip, _port), total in self._live.items():
            totals[(kind, ip)] = totals.get((kind, ip), 0) + total
        return totals

    def counted(self, kind):
        return sum(t for k, t in self.by_peer().items() if k[0] == kind)

    def from_web_seeds(self):
        """Bytes received over HTTP from web seeds."""
        return self.counted(WEB_SEED)

    def from_seeder(self, total):
        """Bytes from seeders, given the torrent's total payload."""
        seeder = self.counted(SEEDER)
        rest = (total - seeder - self.counted(AGENT)
                - self.counted(OTHER) - self.counted(WEB_SEED))
        if rest > 0 and self._seeder_last:
            seeder += rest
        return max(0, min(seeder, total))

    def describe(self, limit=16):
        """Where the bytes came from, largest first, for the log."""
        peers = sorted(((t, ip, kind) for (kind, ip), t
                        in self.by_peer().items() if t),
                       reverse=True)
        text = ', '.join('%s (%s) %d' % (ip, kind, t)
                         for t, ip, kind in peers[:limit])
        if len(peers) > limit:
            text += ' and %d more' % (len(peers) - limit)
        return text or 'nobody'


class Silence:
    """Agents that stopped sending: requests out, no payload for a while.

    A node that loses power or its link closes no connection: its peers
    see it connected, with their requests to it outstanding, for minutes
    (libtorrent times a request out after ``request_timeout``, 60 s). As
    long as it counts as a member of the piece plan, the pieces only it
    has look available from a peer, nobody asks the seeder for them, and
    the whole swarm waits on a dead machine until the plan's grace runs
    out. A live agent on the provisioning network answers a request within
    milliseconds, or at least tells of the pieces it gets meanwhile; so an
    agent we have had requests at for ``quiet`` seconds, without a byte or
    a new piece from it, is taken for gone until it sends again.
    """

    def __init__(self, quiet):
        self.quiet = self.least = quiet
        self._since = {}    # (ip, port) -> ((payload, pieces), since)
        self.silent = set()

    def update(self, now, agents, rate=None):
        """Look at the connected agents (``lt.peer_info``) once.

        :param rate: our download rate (bytes/s), if known. On a slow link
            with many peers, a live agent takes a while to come back to us:
            its upload, about as fast as our download, serves a block to
            each of its peers in turn (32 agents at 1 Mbit/s: 4 s a
            round). The quiet time is then
            :func:`ipa_extension.pieces.rounds` at that rate, and never less
            than the one given.
        :returns: the addresses (ip, port) of the agents taken for gone
            that were not before.
        """
        self.quiet = self.least
        if rate:
            self.quiet = max(self.least, pieces.rounds(len(agents), rate))
        since = {}
        silent = set()
        for p in agents:
            key = (p.ip[0], p.ip[1])
            alive = (p.total_download, p.num_pieces)
            seen, start = self._since.get(key, (alive, now))
            if alive != seen or not (
                    p.download_queue_length or key in self.silent):
                # It sent something, or we have asked it for nothing.
                start = now
            since[key] = (alive, start)
            if now - start >= self.quiet:
                silent.add(key)
        new = silent - self.silent
        self._since = since
        self.silent = silent
        return new


class Redial:
    """Dial again an agent lost to a simultaneous open, from one side only.

    Two agents that learn of each other from the tracker at the same moment
    dial each other at once. libtorrent keeps one of the two connections,
    and for both ends to keep the same one it compares the listening ports
    (peer_list.cpp, "DUPLICATE_PEER_RESOLUTION"); agents all listen on the
    port the conductor gives them, so the ports are equal and each end
    picks at random. When the picks differ, each end closes the other's
    outgoing connection ("duplicate peer-id") and none is left; libtorrent
    tries a failed peer again only after ``min_reconnect_time`` (60 s),
    longer than a deploy. Seen in 2 Nova lab runs of 11: the two never
    traded a piece, and the seeder sent each the pieces the other owned
    (1.33 and 1.37 copies for three nodes instead of about 1.2).

    So when a connection to an agent ends as a duplicate and no other one
    to that address is left, the agent with the lower address dials it
    again at once, and the other one only waits: both dialling again would
    meet the same fate.
    """

    #: Seconds to let the other connection of the pair settle first.
    SETTLE = 0.3
    #: Attempts per lost agent.
    ATTEMPTS = 3

    def __init__(self, default_port):
        #: Agents listen on the port the conductor gives them all.
        self.default_port = default_port
        self._listen = {}     # agent ip -> the port it listens on
        self._lost = {}       # agent ip -> (since, attempts)

    def seen(self, p):
        """Learn an agent's listening port from a connection we made."""
        if p.flags & lt.peer_info.outgoing_connection:
            self._listen[p.ip[0]] = p.ip[1]

    def lost(self, now, ip, duplicate):
        """A connection to agent ``ip`` ended (``duplicate``: as one)."""
        if duplicate and ip not in self._lost:
            self._lost[ip] = (now, 0)

    def due(self, now, me, connected):
        """Endpoints to dial now.

        :param me: our own address, as the peers see it (None: unknown).
        :param connected: addresses with a live connection to us.
        """
        dial = []
        for ip, (since, attempts) in list(self._lost.items()):
            if ip in connected or attempts >= self.ATTEMPTS:
                del self._lost[ip]
                continue
            if (me is None or now - since < self.SETTLE * (attempts + 1)
                    or not _lower(me, ip)):
                continue
            self._lost[ip] = (since, attempts + 1)
            dial.append((ip, self._listen.get(ip, self.default_port)))
        return dial


def _lower(a, b):
    """Whether address ``a`` sorts before ``b`` (same on both ends)."""
    return ipaddress.ip_address(a) < ipaddress.ip_address(b)
