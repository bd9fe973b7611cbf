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

"""Tests for the bencode codec."""

import pytest

from tests import bencode


def test_encode_tracker_reply_with_sorted_keys():
    reply = {'peers': b'\x7f\x00\x00\x01\x1a\xe1', 'interval': 10,
             'min interval': 10, 'complete': 1, 'incomplete': -2}
    assert bencode.encode(reply) == (
        b'd8:completei1e10:incompletei-2e8:intervali10e'
        b'12:min intervali10e5:peers6:\x7f\x00\x00\x01\x1a\xe1e')


def test_encode_str_as_utf8_and_lists():
    assert bencode.encode(['é', b'', 0, ('a',), {}]) == (
        b'l2:\xc3\xa90:i0el1:aedee')


def test_encode_sorts_keys_by_raw_bytes():
    # "Z" (0x5a) sorts before "a" (0x61), and b"a" before b"aa".
    assert bencode.encode({'aa': 1, b'a': 2, 'Z': 3}) == (
        b'd1:Zi3e1:ai2e2:aai1ee')


@pytest.mark.parametrize('value', [True, 1.5, None, {1: 2}, {'a', 'b'}])
def test_encode_refuses_unsupported_types(value):
    with pytest.raises(TypeError, match='cannot bencode'):
        bencode.encode(value)


def test_encode_refuses_keys_that_collide_after_utf8():
    with pytest.raises(TypeError, match='duplicate dict key'):
        bencode.encode({'a': 1, b'a': 2})


def test_decode_round_trip():
    value = {b'files': {b'\x00' * 20: {b'complete': 3, b'downloaded': 0,
                                       b'incomplete': 7}},
             b'list': [b'x', -5, [], {}]}
    assert bencode.decode(bencode.encode(value)) == value


def test_decode_accepts_bytearray():
    assert bencode.decode(bytearray(b'4:spam')) == b'spam'


@pytest.mark.parametrize('data, message', [
    (b'', 'truncated at offset 0'),
    (b'i01e', 'malformed integer at offset 0'),
    (b'i-0e', 'malformed integer at offset 0'),
    (b'ie', 'malformed integer at offset 0'),
    (b'i12', 'malformed integer at offset 0'),
    (b'l', 'truncated at offset 1'),
    (b'li1e', 'truncated at offset 4'),
    (b'5:abc', 'string at offset 0 runs past the end'),
    (b'03:abc', 'malformed string length at offset 0'),
    (b'3abc', 'malformed string length at offset 0'),
    (b'i1ei2e', '3 trailing bytes at offset 3'),
    (b'd1:a', 'truncated at offset 4'),
    (b'd1:ai1e', 'truncated at offset 7'),
    (b'di1ei2ee', 'dict key at offset 1 is not a string'),
    (b'd1:bi1e1:ai2ee', "dict key b'a' at offset 7 is duplicated or out"),
    (b'd1:ai1e1:ai2ee', "dict key b'a' at offset 7 is duplicated or out"),
    (b'x', "unexpected byte b'x' at offset 0"),
    (b'l' * 100 + b'e' * 100, 'nested deeper than 64 levels'),
])
def test_decode_malformed(data, message):
    with pytest.raises(ValueError, match='invalid bencoding: .*' + message):
        bencode.decode(data)


def test_decode_refuses_text():
    with pytest.raises(TypeError, match='needs bytes'):
        bencode.decode('4:spam')


def test_product_decodes_tracker_replies_with_libtorrent():
    from ironic_bt.common import torrent
    reply = {b'files': {b'\x01' * 20: {b'complete': 2, b'downloaded': 1,
                                       b'incomplete': 5}}}
    assert torrent.bdecode(bencode.encode(reply), 'tracker') == reply
    for junk in (b'<html>', b'', b'i3e'):
        with pytest.raises(ValueError) as e:
            torrent.bdecode(junk, 'http://198.18.0.1:6969/scrape')
        assert 'http://198.18.0.1:6969/scrape did not send a bencoded ' \
               'dictionary' in str(e.value)
