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

"""The tracker's wire protocol, without state or I/O.

Parsing of announce and scrape queries (BEP 3, BEP 48) into validated
requests, and the bencoded replies (BEP 23 compact peers, BEP 7
``peers6``, BEP 48 scrapes, failures). What the tracker knows and decides
is :mod:`ironic_bt.tracker.swarm_table`; the HTTP and UDP adapters
(:mod:`~ironic_bt.tracker.server`, :mod:`~ironic_bt.tracker.udp`) move
bytes in and out.
"""

import dataclasses
import functools
import ipaddress
import re
import urllib.parse

from ironic_bt.common.i18n import _
from ironic_bt.common import publication
from ironic_bt.tracker import bencode

DEFAULT_NUMWANT = 50
MAX_NUMWANT = 200
MAX_NODE_LENGTH = 64
MAX_KEY_LENGTH = 64
EVENTS = ('', 'started', 'completed', 'stopped', 'paused')
#: Byte counts above this are clamped to it (a signed 64-bit integer, what
#: clients and bencoding tools can take back).
MAX_COUNT = (1 << 63) - 1

# Decimal digits only: int() would also take '+5', ' 5', '5_0' and '-5'.
# Longer numbers are clamped, not refused; 64 digits keep int() cheap.
_UINT_RE = re.compile(rb'[0-9]{1,64}')


class TrackerError(Exception):
    """A refused request; ``str()`` is the ``failure reason`` sent back."""


@dataclasses.dataclass(frozen=True)
class AnnounceRequest:
    """A validated announce (BEP 3).

    ``ip`` is the address the request came from, normalised: IPv4-mapped
    IPv6 addresses are plain IPv4.
    """

    info_hash: bytes
    peer_id: bytes
    ip: str
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str = ''
    numwant: int = DEFAULT_NUMWANT
    compact: bool = True
    no_peer_id: bool = False
    node: str | None = None
    #: A conductor's publication key (see :mod:`.publication`), as sent.
    publish: bytes | None = None
    #: The announcer's announce key (:func:`.publication.announce_key`).
    auth: bytes | None = None


def split_query(query):
    """Yield (key, value) byte pairs of a raw query string.

    Each part is percent-decoded to bytes: info_hash and peer_id are binary,
    and decoding them to str (as parse_qs does) would corrupt them. '+' is
    left alone for the same reason; BitTorrent clients percent-encode it.
    """
    for part in query.split(b'&'):
        if not part:
            continue
        key, _sep, value = part.partition(b'=')
        yield (urllib.parse.unquote_to_bytes(key),
               urllib.parse.unquote_to_bytes(value))


def _uint(params, name, default=None, limit=MAX_COUNT):
    """A non-negative integer parameter, clamped to ``limit``."""
    value = params.get(name)
    if value is None:
        if default is None:
            raise TrackerError(_('missing parameter %s') % name)
        return default
    if not _UINT_RE.fullmatch(value):
        raise TrackerError(_('invalid parameter %(name)s=%(value)r: must be '
                             'a non-negative integer')
                           % {'name': name,
                              'value': value[:32].decode('latin-1')})
    return min(int(value), limit)


def _hash20(value, name):
    if value is None:
        raise TrackerError(_('missing parameter %s') % name)
    if len(value) != 20:
        raise TrackerError(_('invalid parameter %(name)s: must be 20 bytes, '
                             'got %(length)d') %
                           {'name': name, 'length': len(value)})
    return value


def _opaque(params, name, limit):
    value = params.get(name)
    if value is not None and len(value) > limit:
        raise TrackerError(_('invalid parameter %(name)s: must be at most '
                             '%(limit)d bytes')
                           % {'name': name, 'limit': limit})
    return value


def node_label(value):
    """The ``node`` parameter, validated: None, or short printable text."""
    return _checked_text(value, 'node', MAX_NODE_LENGTH)


def _text(params, name, limit):
    return _checked_text(params.get(name), name, limit)


def _checked_text(value, name, limit):
    if value is None:
        return None
    try:
        text = value.decode('utf-8')
    except UnicodeDecodeError:
        raise TrackerError(_('invalid parameter %s: not UTF-8')
                           % name) from None
    # The label ends up in "ironic-bt status" output and in logs: keep it
    # short and free of control characters.
    if len(text) > limit or not text.isprintable():
        raise TrackerError(_('invalid parameter %(name)s: must be at most '
                             '%(limit)d printable characters')
                           % {'name': name, 'limit': limit})
    return text


@functools.lru_cache(maxsize=65536)
def normalise_ip(address):
    """Return the canonical text form of a peer address.

    :param address: an IPv4 or IPv6 address as text, possibly with a zone.
    :returns: IPv4 for IPv4-mapped IPv6 addresses (what a dual-stack socket
        reports for IPv4 clients), so such peers go into ``peers``.
    :raises: TrackerError if ``address`` is not an IP address.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise TrackerError(_('invalid peer address %r') % address) from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def parse_announce(query, remote_ip):
    """Parse and validate the query string of ``GET /announce``.

    :param query: the raw query string bytes, still percent-encoded.
    :param remote_ip: the address the request came from. It is the only
        address recorded for the peer: the ``ip`` parameter is ignored,
        because honouring it would let any client add, or stop, a peer at
        someone else's address.
    :returns: an :class:`AnnounceRequest`.
    :raises: TrackerError naming the offending parameter.
    """
    params = {}
    for key, value in split_query(query):
        # First occurrence wins; clients never repeat announce parameters.
        params.setdefault(key.decode('latin-1'), value)
    info_hash = _hash20(params.get('info_hash'), 'info_hash')
    peer_id = _hash20(params.get('peer_id'), 'peer_id')
    port = _uint(params, 'port', limit=1 << 64)
    if not 1 <= port <= 65535:
        raise TrackerError(_('invalid parameter port=%d: must be 1 to '
                             '65535') % port)
    event = params.get('event', b'').decode('latin-1')
    if event not in EVENTS:
        raise TrackerError(_('invalid parameter event=%(event)r: must be one '
                             'of started, completed, stopped, paused or '
                             'empty') % {'event': event[:32]})
    return AnnounceRequest(
        info_hash=info_hash,
        peer_id=peer_id,
        ip=normalise_ip(remote_ip),
        port=port,
        # "left" tells a seed from a downloader and is the progress shown
        # per node, so it is required; the transfer totals are informative.
        left=_uint(params, 'left'),
        uploaded=_uint(params, 'uploaded', 0),
        downloaded=_uint(params, 'downloaded', 0),
        event=event,
        numwant=_uint(params, 'numwant', DEFAULT_NUMWANT, MAX_NUMWANT),
        # Compact (BEP 23) unless the client asks for BEP 3's list of
        # dictionaries.
        compact=params.get('compact', b'1') != b'0',
        no_peer_id=params.get('no_peer_id', b'0') == b'1',
        node=_text(params, 'node', MAX_NODE_LENGTH),
        publish=_opaque(params, publication.PARAM, publication.MAX_LENGTH),
        auth=_opaque(params, publication.ANNOUNCE_PARAM, MAX_KEY_LENGTH),
    )


def parse_scrape(query):
    """Parse the query string of ``GET /scrape`` (BEP 48).

    :param query: the raw query string bytes, still percent-encoded.
    :returns: the list of requested 20-byte info-hashes, possibly empty.
    :raises: TrackerError if an info_hash is not 20 bytes.
    """
    return [_hash20(value, 'info_hash')
            for key, value in split_query(query) if key == b'info_hash']


def failure(reason):
    """Return the bencoded reply refusing a request.

    :param reason: the text the client shows, for example in libtorrent's
        tracker error alert.
    """
    return bencode.encode({'failure reason': reason})


def announce_reply(req, interval, complete, incomplete, peers):
    """The bencoded reply to an announce.

    :param req: the :class:`AnnounceRequest` answered.
    :param interval: seconds until the next announce.
    :param complete: seeds in the swarm.
    :param incomplete: leechers in the swarm.
    :param peers: the peers handed out (``ip``, ``port``, ``peer_id``,
        ``packed``, ``v6``; see :class:`ironic_bt.tracker.swarm_table.Peer`).
    :returns: bytes: peers compact (BEP 23, BEP 7) or, for ``compact=0``,
        BEP 3 dictionaries.
    """
    if req.compact:
        v4 = b''.join(p.packed for p in peers if not p.v6)
        v6 = b''.join(p.packed for p in peers if p.v6)
    else:
        v4 = [{'ip': p.ip, 'port': p.port}
              if req.no_peer_id else
              {'peer id': p.peer_id, 'ip': p.ip, 'port': p.port}
              for p in peers]
        v6 = b''
    reply = {
        'interval': interval,
        'min interval': interval,
        'complete': complete,
        'incomplete': incomplete,
        'peers': v4,
    }
    if v6:
        reply['peers6'] = v6
    return bencode.encode(reply)


def scrape_reply(counts):
    """The bencoded reply to a scrape (BEP 48).

    :param counts: info-hash -> (complete, downloaded, incomplete).
    """
    return bencode.encode({'files': {
        key: {'complete': complete, 'downloaded': downloaded,
              'incomplete': incomplete}
        for key, (complete, downloaded, incomplete) in counts.items()}})
