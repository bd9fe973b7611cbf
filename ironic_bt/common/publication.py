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

"""Publication keys: several conductors, one tracker.

A site with several conductors points them all at one tracker
(``[bittorrent]tracker_url``), so that the nodes deploying an image form
one swarm whichever conductor deploys each of them. That tracker may be the
built-in tracker of one conductor, which serves only torrents published by
this deployment. The other conductors publish to it through their seeders'
announces: each carries a publication key, an HMAC of the torrent's
info-hashes and size under the secret the conductors share
(``[bittorrent]tracker_secret``). The tracker serves the torrent while a
seeder with a valid key keeps announcing it.

Pure functions, no I/O. The key lets its holder publish that one torrent,
which its conductor publishes anyway; only the secret must stay secret.
"""

import hashlib
import hmac
import re
import urllib.parse

from ironic_bt.common.i18n import _

#: The announce parameter (and BEP 41 URL data key) carrying the key.
PARAM = 'publish'
#: Longest key: two hex info-hashes, a size and the signature.
MAX_LENGTH = 160
_CONTEXT = b'ironic-bt publication v1\0'
_SIG_BYTES = 16
_KEY_RE = re.compile(r'((?:[0-9a-f]{40}\.){1,2})([0-9]{1,19})\.'
                     r'([0-9a-f]{%d})' % (2 * _SIG_BYTES))


class InvalidKey(ValueError):
    """A publication key that is malformed or not signed by the secret."""


def _signature(secret, info_hashes, size):
    message = _CONTEXT + b''.join(info_hashes) + size.to_bytes(8, 'big')
    return hmac.new(secret.encode('utf-8'), message,
                    hashlib.sha256).digest()[:_SIG_BYTES]


def make_key(secret, info_hashes, size):
    """The publication key of a torrent.

    :param secret: the secret shared by the conductors (text).
    :param info_hashes: the torrent's 20-byte keys, as the tracker serves
        them (a hybrid torrent's v1 hash and truncated v2 hash).
    :param size: the torrent's size in bytes.
    :returns: printable ASCII, safe in a URL query.
    """
    keys = [bytes(key) for key in info_hashes]
    return '%s.%d.%s' % ('.'.join(key.hex() for key in keys), size,
                         _signature(secret, keys, size).hex())


def check_key(secret, value):
    """Check a publication key against the shared secret.

    :param secret: the secret shared by the conductors (text).
    :param value: the key as received (bytes).
    :returns: (info_hashes, size): a tuple of 20-byte keys, and the size.
    :raises: InvalidKey.
    """
    try:
        text = value.decode('ascii')
    except UnicodeDecodeError:
        raise InvalidKey(_('publication key is not ASCII')) from None
    match = _KEY_RE.fullmatch(text)
    if match is None:
        raise InvalidKey(_('malformed publication key'))
    keys = tuple(bytes.fromhex(part)
                 for part in match.group(1).rstrip('.').split('.'))
    size = int(match.group(2))
    if size >= 1 << 63:
        raise InvalidKey(_('publication key with an impossible size'))
    expected = _signature(secret, keys, size)
    if not hmac.compare_digest(expected, bytes.fromhex(match.group(3))):
        raise InvalidKey(_('publication key not signed with this tracker\'s '
                           'secret; check that every conductor has the same '
                           '[bittorrent]tracker_secret'))
    if len(set(keys)) != len(keys):
        raise InvalidKey(_('publication key repeats an info-hash'))
    return keys, size


#: The announce parameter carrying an announcer's key.
ANNOUNCE_PARAM = 'auth'
#: What the announce keys' secret is derived for from the swarm
#: authority's key (:meth:`ironic_bt.common.certs.Authority.derive_secret`).
ANNOUNCE_SECRET_PURPOSE = b'tracker announce keys'
_ANNOUNCE_CONTEXT = b'ironic-bt announce v1\0'
_ANNOUNCE_BYTES = 16


def announce_key(secret, node, info_hash):
    """The key that lets one node announce one torrent.

    :param secret: bytes that only the conductors hold (derived from the
        swarm authority's key, :meth:`ironic_bt.common.certs.Authority.
        derive_secret`).
    :param node: the announcer's label (a node UUID; '' for a seeder).
    :param info_hash: the torrent's first (v1) 20-byte info-hash.
    :returns: 32 hex characters.
    """
    message = (_ANNOUNCE_CONTEXT + node.encode('utf-8') + b'\0'
               + bytes(info_hash))
    return hmac.new(secret, message,
                    hashlib.sha256).digest()[:_ANNOUNCE_BYTES].hex()


def keyed_url(url, secret, node, info_hash):
    """``url`` with the label and announce key of ``node``.

    :param node: the announcer's label; '' for a seeder, which announces
        with no label.
    :param info_hash: the torrent's first (v1) 20-byte info-hash.
    """
    if node:
        url = with_query(url, {'node': node})
    return with_query(url, {ANNOUNCE_PARAM: announce_key(secret, node,
                                                         info_hash)})


def check_announce_key(secret, node, info_hash, value):
    """Whether ``value`` (bytes, as received) is that node's key."""
    if value is None:
        return False
    expected = announce_key(secret, node or '', info_hash).encode('ascii')
    return hmac.compare_digest(expected, bytes(value))


def with_query(url, params):
    """An announce URL with ``params`` added to its query.

    The conductor adds node labels and keys to the URLs it hands out; the
    agent adds the announce key it unsealed.
    """
    parts = urllib.parse.urlsplit(url)
    # The tracker reads '+' as itself (RFC 3986), not as a space.
    added = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    query = '&'.join(q for q in (parts.query, added) if q)
    return urllib.parse.urlunsplit(parts._replace(query=query))
