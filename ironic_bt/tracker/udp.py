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

"""The UDP tracker protocol (BEP 15, with BEP 41 URL data), without I/O.

One datagram in, at most one datagram out: :meth:`UdpTracker.handle`.
An announce costs one round trip on an established connection ID and no
TCP connection at all, which is what makes UDP an order of magnitude
cheaper than HTTP per announce.

Connection IDs guard against spoofed source addresses (BEP 15): a client
must first ``connect`` and echo the ID it got in its announces. The ID is a
keyed hash of the client's address and port and of the current two-minute
window, so the tracker keeps no state per client and an ID is only valid
for the address it was given to, for two to four minutes.
"""

import hashlib
import hmac
import os
import struct
import time
import urllib.parse

from oslo_utils import netutils

from ironic_bt.common.i18n import _
from ironic_bt.common import publication
from ironic_bt.tracker import protocol

PROTOCOL_ID = 0x41727101980
CONNECT, ANNOUNCE, SCRAPE, ERROR = 0, 1, 2, 3
#: BEP 15 event codes.
EVENTS = {0: '', 1: 'completed', 2: 'started', 3: 'stopped'}
#: Seconds a connection ID stays valid (at least; at most twice that).
ID_WINDOW = 120
#: BEP 15 allows at most 74 info-hashes per scrape.
MAX_SCRAPE = 74

_CONNECT = struct.Struct('>QII')
_HEADER = struct.Struct('>QII')
_ANNOUNCE = struct.Struct('>QII20s20sQQQIIIiH')
_REPLY_HEADER = struct.Struct('>II')
_ANNOUNCE_REPLY = struct.Struct('>IIIII')
_CONNECT_REPLY = struct.Struct('>IIQ')
_SCRAPE_ITEM = struct.Struct('>III')
_INT32_MAX = (1 << 31) - 1


class UdpTracker:
    """Answers BEP 15 datagrams from a swarm table.

    :param table: the :class:`~ironic_bt.tracker.swarm_table.SwarmTable`
        shared with the HTTP tracker.
    :param clock: time source (seconds), replaceable in tests.
    """

    def __init__(self, table, clock=time.time, secret=None):
        self.table = table
        self._clock = clock
        self._secret = secret or os.urandom(32)

    def connection_id(self, ip, port, window=None):
        if window is None:
            window = int(self._clock() // ID_WINDOW)
        mac = hmac.new(self._secret, b'%s|%d|%d' % (
            ip.encode('ascii'), port, window), hashlib.sha256).digest()
        return int.from_bytes(mac[:8], 'big')

    def _valid(self, cid, ip, port):
        window = int(self._clock() // ID_WINDOW)
        return (cid == self.connection_id(ip, port, window)
                or cid == self.connection_id(ip, port, window - 1))

    def handle(self, data, ip, port):
        """Answer one datagram.

        :param data: the datagram's bytes.
        :param ip: the sender's address (text, as the socket reports it).
        :param port: the sender's port.
        :returns: the reply datagram, or None to send nothing (too short
            to carry a transaction ID, or a connection ID that is not
            valid: an error reply to a spoofed address would make the
            tracker an amplifier).
        """
        if len(data) < _HEADER.size:
            return None
        cid, action, txid = _HEADER.unpack_from(data)
        if action == CONNECT:
            if cid != PROTOCOL_ID:
                return None
            return _CONNECT_REPLY.pack(CONNECT, txid,
                                       self.connection_id(ip, port))
        if not self._valid(cid, ip, port):
            return None
        try:
            if action == ANNOUNCE:
                return self._announce(data, ip, txid)
            if action == SCRAPE:
                return self._scrape(data, txid)
            raise protocol.TrackerError(_('unknown action %d') % action)
        except protocol.TrackerError as e:
            return _REPLY_HEADER.pack(ERROR, txid) + str(e).encode('utf-8')

    def _announce(self, data, ip, txid):
        if len(data) < _ANNOUNCE.size:
            raise protocol.TrackerError(
                _('announce of %d bytes; it needs %d')
                % (len(data), _ANNOUNCE.size))
        (_cid, _action, _txid, info_hash, peer_id, downloaded, left,
         uploaded, event, _ip, _key, numwant, port) = _ANNOUNCE.unpack_from(
            data)
        if event not in EVENTS:
            raise protocol.TrackerError(_('invalid event %d') % event)
        if not 1 <= port <= 65535:
            raise protocol.TrackerError(
                _('invalid port %d: must be 1 to 65535') % port)
        params = _url_data(data[_ANNOUNCE.size:])
        req = protocol.AnnounceRequest(
            info_hash=info_hash, peer_id=peer_id,
            # The sender's address only: the ip field would let anyone
            # register someone else.
            ip=protocol.normalise_ip(ip), port=port,
            uploaded=min(uploaded, protocol.MAX_COUNT),
            downloaded=min(downloaded, protocol.MAX_COUNT),
            left=min(left, protocol.MAX_COUNT),
            event=EVENTS[event],
            numwant=(protocol.DEFAULT_NUMWANT if numwant < 0
                     else min(numwant, protocol.MAX_NUMWANT)),
            node=protocol.node_label(params.get('node')),
            publish=params.get(publication.PARAM),
            auth=params.get(publication.ANNOUNCE_PARAM))
        complete, incomplete, peers = self.table.record(req)
        # Peers of the sender's family only: a UDP reply has no room to
        # tell them apart (BEP 15).
        v6 = ':' in req.ip
        packed = b''.join(p.packed for p in peers if p.v6 == v6)
        return _ANNOUNCE_REPLY.pack(
            ANNOUNCE, txid, self.table.interval,
            min(incomplete, _INT32_MAX), min(complete, _INT32_MAX)) + packed

    def _scrape(self, data, txid):
        body = data[_HEADER.size:]
        hashes = [body[i:i + 20] for i in range(0, len(body) - 19, 20)]
        if not hashes or len(hashes) > MAX_SCRAPE:
            raise protocol.TrackerError(
                _('a scrape needs 1 to %d info-hashes') % MAX_SCRAPE)
        counts = self.table.scrape_counts(hashes)
        out = [_REPLY_HEADER.pack(SCRAPE, txid)]
        for key in hashes:
            complete, downloaded, incomplete = counts.get(key, (0, 0, 0))
            out.append(_SCRAPE_ITEM.pack(min(complete, _INT32_MAX),
                                         min(downloaded, _INT32_MAX),
                                         min(incomplete, _INT32_MAX)))
        return b''.join(out)


def _url_data(options):
    """The query of the BEP 41 URL data options, as {name: bytes}."""
    url = b''
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:      # end of options
            break
        if kind == 1:      # no-op
            i += 1
            continue
        if i + 1 >= len(options):
            break
        length = options[i + 1]
        if kind == 2:
            url += options[i + 2:i + 2 + length]
        i += 2 + length
    _path, _sep, query = url.partition(b'?')
    params = {}
    for key, value in protocol.split_query(query):
        params.setdefault(key.decode('latin-1'), value)
    return params


def announce_url(host, port, node=None):
    """The ``udp://`` announce URL of a tracker, with the node's label."""
    url = 'udp://%s:%d/announce' % (netutils.escape_ipv6(host), port)
    if node:
        url += '?' + urllib.parse.urlencode({'node': node},
                                            quote_via=urllib.parse.quote)
    return url
