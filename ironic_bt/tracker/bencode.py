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

"""Bencoding (BEP 3): the serialisation of tracker replies and torrents.

Pure functions, no I/O. :func:`encode` accepts ``bytes``, ``str`` (encoded
as UTF-8), ``int``, ``list``/``tuple`` and ``dict`` with ``bytes`` or
``str`` keys, and writes the one canonical encoding. The product decodes
with libtorrent (:func:`ironic_bt.common.torrent.bdecode`); the tests check the
tracker's replies with a strict decoder (``tests/bencode.py``).
"""


def encode(value):
    """Bencode a value.

    :param value: bytes, str, int, list, tuple or dict (keys bytes or str).
    :returns: the bencoded bytes; dict keys are sorted by their raw bytes,
        as BEP 3 requires.
    :raises: TypeError for any other type, including bool, which would
        otherwise silently become 0 or 1.
    """
    out = []
    _encode(value, out)
    return b''.join(out)


def _encode(value, out):
    if isinstance(value, str):
        value = value.encode('utf-8')
    if isinstance(value, bytes):
        out.append(b'%d:' % len(value))
        out.append(value)
    elif isinstance(value, bool):
        raise TypeError('cannot bencode a bool: %r' % value)
    elif isinstance(value, int):
        out.append(b'i%de' % value)
    elif isinstance(value, (list, tuple)):
        out.append(b'l')
        for item in value:
            _encode(item, out)
        out.append(b'e')
    elif isinstance(value, dict):
        items = []
        for key, item in value.items():
            if isinstance(key, str):
                key = key.encode('utf-8')
            elif not isinstance(key, bytes):
                raise TypeError('cannot bencode a dict key of type %s'
                                % type(key).__name__)
            items.append((key, item))
        items.sort(key=lambda pair: pair[0])
        out.append(b'd')
        for i, (key, item) in enumerate(items):
            if i and key == items[i - 1][0]:
                raise TypeError('duplicate dict key %r after UTF-8 encoding'
                                % key)
            _encode(key, out)
            _encode(item, out)
        out.append(b'e')
    else:
        raise TypeError('cannot bencode a value of type %s'
                        % type(value).__name__)
