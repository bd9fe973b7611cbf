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

"""A strict bencode decoder: the oracle the tests check replies with.

Anything that is not the one canonical encoding of a value is refused with
:class:`ValueError`, so a test that decodes the tracker's reply also checks
that the reply is canonical. :func:`encode` is the product's.
"""

import re

from ironic_bt.tracker.bencode import encode  # noqa: F401

# Deeper nesting than this is refused rather than risking a RecursionError
# on hostile input; torrents and tracker replies nest a handful of levels.
MAX_DEPTH = 64

# Canonical integers only: no leading zeros, no "-0", no sign on zero.
_INT_RE = re.compile(rb'i(0|-?[1-9][0-9]*)e')
_LEN_RE = re.compile(rb'(0|[1-9][0-9]*):')


def decode(data):
    """Decode one bencoded value that must span all of ``data``.

    :param data: bytes.
    :returns: the value; strings are returned as bytes (bencoding does not
        say whether a string is text), dicts have bytes keys.
    :raises: ValueError naming the offset and the problem when ``data`` is
        malformed, truncated, non-canonical or followed by trailing bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError('bencode.decode() needs bytes, not %s'
                        % type(data).__name__)
    data = bytes(data)
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise ValueError('invalid bencoding: %d trailing bytes at offset %d'
                         % (len(data) - end, end))
    return value


def _decode(data, pos, depth):
    if pos >= len(data):
        raise ValueError('invalid bencoding: truncated at offset %d' % pos)
    if depth > MAX_DEPTH:
        raise ValueError('invalid bencoding: nested deeper than %d levels '
                         'at offset %d' % (MAX_DEPTH, pos))
    lead = data[pos:pos + 1]
    if lead == b'i':
        match = _INT_RE.match(data, pos)
        if not match:
            raise ValueError('invalid bencoding: malformed integer at '
                             'offset %d' % pos)
        return int(match.group(1)), match.end()
    if lead.isdigit():
        return _decode_bytes(data, pos)
    if lead == b'l':
        items = []
        pos += 1
        while data[pos:pos + 1] != b'e':
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos + 1
    if lead == b'd':
        result = {}
        previous = None
        pos += 1
        while data[pos:pos + 1] != b'e':
            if not data[pos:pos + 1].isdigit():
                if pos >= len(data):
                    raise ValueError('invalid bencoding: truncated at '
                                     'offset %d' % pos)
                raise ValueError('invalid bencoding: dict key at offset %d '
                                 'is not a string' % pos)
            key_pos = pos
            key, pos = _decode_bytes(data, pos)
            # Canonical form has strictly increasing keys; anything else
            # would give two encodings (and two info-hashes) for one value.
            if previous is not None and key <= previous:
                raise ValueError('invalid bencoding: dict key %r at offset '
                                 '%d is duplicated or out of order'
                                 % (key, key_pos))
            previous = key
            result[key], pos = _decode(data, pos, depth + 1)
        return result, pos + 1
    raise ValueError('invalid bencoding: unexpected byte %r at offset %d'
                     % (lead, pos))


def _decode_bytes(data, pos):
    match = _LEN_RE.match(data, pos)
    if not match:
        raise ValueError('invalid bencoding: malformed string length at '
                         'offset %d' % pos)
    start = match.end()
    end = start + int(match.group(1))
    if end > len(data):
        raise ValueError('invalid bencoding: string at offset %d runs past '
                         'the end of the data' % pos)
    return data[start:end], end
