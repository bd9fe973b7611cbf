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

"""Tests for the sans-IO tracker protocol."""

import collections
import ipaddress
import urllib.parse

import pytest

from ironic_bt.common import publication
from ironic_bt.tracker import protocol
from ironic_bt.tracker import swarm_table
from tests import bencode

# Bytes that need escaping in a query string: '%', '&', '+', '=' and ' '.
V1 = bytes(range(0x20, 0x34))
V2 = bytes(range(0x3d, 0x51))
OTHER = b'\xff' * 20


def query(**params):
    """Percent-encode parameters the way libtorrent does."""
    defaults = {'info_hash': V1, 'peer_id': b'-LT2110-abcdefghijkl',
                'port': '6881', 'uploaded': '0', 'downloaded': '0',
                'left': '1000', 'compact': '1'}
    defaults.update(params)
    return '&'.join(
        '%s=%s' % (key, urllib.parse.quote_from_bytes(
            value if isinstance(value, bytes) else value.encode(), safe=''))
        for key, value in defaults.items() if value is not None).encode()


def request(ip='198.18.0.2', **params):
    return protocol.parse_announce(query(**params), ip)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def table(clock):
    table = swarm_table.SwarmTable(interval=10, clock=clock)
    table.publish([V1, V2], 'image-a', size=4096)
    return table


def announce(table, req):
    """What the HTTP tracker answers: the table's choice, bencoded."""
    return protocol.announce_reply(req, table.interval, *table.record(req))


def scrape(table, info_hashes):
    return protocol.scrape_reply(table.scrape_counts(info_hashes))


def peers_of(reply, key=b'peers'):
    """Decode a compact peer list into a set of (ip, port)."""
    raw = bencode.decode(reply).get(key, b'')
    size = 6 if key == b'peers' else 18
    assert len(raw) % size == 0
    return {(str(ipaddress.ip_address(raw[i:i + size - 2])),
             int.from_bytes(raw[i + size - 2:i + size], 'big'))
            for i in range(0, len(raw), size)}


# Parsing


def test_parse_announce_decodes_binary_values():
    req = protocol.parse_announce(
        query(uploaded='5', downloaded='7', left='0', event='started',
              numwant='20', node='1be26c0b-03f2-4d2d-ae87-c02d7f33c123',
              key='a1b2c3d4'),
        '198.18.0.2')
    assert req == protocol.AnnounceRequest(
        info_hash=V1, peer_id=b'-LT2110-abcdefghijkl', ip='198.18.0.2',
        port=6881, uploaded=5, downloaded=7, left=0, event='started',
        numwant=20, compact=True,
        node='1be26c0b-03f2-4d2d-ae87-c02d7f33c123')


def test_parse_announce_defaults():
    req = request(uploaded=None, downloaded=None, compact=None)
    assert (req.uploaded, req.downloaded, req.event, req.numwant,
            req.compact, req.node) == (0, 0, '', 50, True, None)


def test_parse_announce_clamps_numwant():
    assert request(numwant='100000').numwant == protocol.MAX_NUMWANT
    assert request(numwant='9' * 25).numwant == protocol.MAX_NUMWANT


def test_parse_announce_clamps_huge_counts():
    req = request(uploaded='9' * 40, downloaded='1' * 30, left='7' * 64)
    assert (req.uploaded, req.downloaded, req.left) == (
        protocol.MAX_COUNT,) * 3
    with pytest.raises(protocol.TrackerError, match='must be 1 to 65535'):
        request(port='9' * 30)
    with pytest.raises(protocol.TrackerError,
                       match='must be a non-negative integer'):
        request(left='9' * 65)


def test_parse_announce_ignores_the_clients_key():
    # BEP 3's "key" proves nothing here (announce keys do, see
    # publication): whatever a client sends, aria2's raw bytes or more, the
    # announce is read as without it.
    for key in (b'\xff\x00\x9c', b'k' * 65):
        assert request(key=key) == request()


def test_parse_announce_ignores_ip_parameter():
    # A client must not be able to register (or stop) someone else.
    req = protocol.parse_announce(query(ip='198.18.0.99'), '198.18.0.2')
    assert req.ip == '198.18.0.2'


def test_parse_announce_maps_ipv4_mapped_ipv6_to_ipv4():
    assert request(ip='::ffff:198.18.0.2').ip == '198.18.0.2'
    assert request(ip='2001:DB8::0:1').ip == '2001:db8::1'


@pytest.mark.parametrize('params, reason', [
    ({'info_hash': None}, 'missing parameter info_hash'),
    ({'info_hash': V1[:19]},
     'invalid parameter info_hash: must be 20 bytes, got 19'),
    ({'info_hash': V2.hex()},
     'invalid parameter info_hash: must be 20 bytes, got 40'),
    ({'peer_id': b'short'},
     'invalid parameter peer_id: must be 20 bytes, got 5'),
    ({'port': None}, 'missing parameter port'),
    ({'port': '0'}, 'invalid parameter port=0: must be 1 to 65535'),
    ({'port': '65536'}, 'invalid parameter port=65536: must be 1 to 65535'),
    ({'left': None}, 'missing parameter left'),
    ({'left': '-1'},
     "invalid parameter left='-1': must be a non-negative integer"),
    ({'uploaded': 'lots'},
     "invalid parameter uploaded='lots': must be a non-negative integer"),
    ({'downloaded': '1.5'},
     "invalid parameter downloaded='1.5': must be a non-negative integer"),
    ({'numwant': ' 5'},
     "invalid parameter numwant=' 5': must be a non-negative integer"),
    ({'event': 'finished'},
     "invalid parameter event='finished': must be one of started, "
     "completed, stopped, paused or empty"),
    ({'node': 'x' * 65},
     'invalid parameter node: must be at most 64 printable characters'),
    ({'node': 'a\nb'},
     'invalid parameter node: must be at most 64 printable characters'),
    ({'node': b'\xff'}, 'invalid parameter node: not UTF-8'),
])
def test_parse_announce_refuses_malformed(params, reason):
    with pytest.raises(protocol.TrackerError) as exc:
        request(**params)
    assert str(exc.value) == reason


def test_parse_announce_refuses_bad_remote_address():
    with pytest.raises(protocol.TrackerError,
                       match="invalid peer address 'nonsense'"):
        request(ip='nonsense')


def test_parse_scrape_multiple_hashes():
    raw = ('info_hash=%s&info_hash=%s&other=1' % (
        urllib.parse.quote_from_bytes(V1, safe=''),
        urllib.parse.quote_from_bytes(V2, safe=''))).encode()
    assert protocol.parse_scrape(raw) == [V1, V2]
    assert protocol.parse_scrape(b'') == []


def test_parse_scrape_refuses_short_hash():
    with pytest.raises(protocol.TrackerError,
                       match='info_hash: must be 20 bytes, got 3'):
        protocol.parse_scrape(b'info_hash=abc')


def test_failure():
    assert protocol.failure('no such torrent') == (
        b'd14:failure reason15:no such torrente')


# Announce


def test_announce_unknown_info_hash(table):
    with pytest.raises(protocol.TrackerError) as exc:
        announce(table, request(info_hash=OTHER))
    assert str(exc.value) == (
        'unknown info_hash ' + 'ff' * 20 + ': this tracker only serves '
        'images published by this ironic-bt deployment')


def test_first_announce_gets_exact_empty_reply(table):
    assert announce(table, request(event='started')) == (
        b'd8:completei0e10:incompletei1e8:intervali10e'
        b'12:min intervali10e5:peers0:e')


def test_announce_returns_other_peers_but_not_requester(table):
    announce(table, request(ip='198.18.0.2', left='0'))
    announce(table, request(ip='198.18.0.3'))
    reply = announce(table, request(ip='198.18.0.4', port='7000'))
    decoded = bencode.decode(reply)
    assert (decoded[b'complete'], decoded[b'incomplete']) == (1, 2)
    assert peers_of(reply) == {('198.18.0.2', 6881), ('198.18.0.3', 6881)}
    assert b'peers6' not in decoded
    # Same address, other port: another peer (several agents per host).
    assert peers_of(announce(table, request(ip='198.18.0.4'))) == {
        ('198.18.0.2', 6881), ('198.18.0.3', 6881), ('198.18.0.4', 7000)}


def test_seed_gets_downloading_peers_first(table):
    announce(table, request(ip='198.18.0.2', left='0'))
    announce(table, request(ip='198.18.0.3', left='0'))
    announce(table, request(ip='198.18.0.4', left='5'))
    for _ in range(20):
        assert peers_of(announce(table, request(
            ip='198.18.0.1', left='0', numwant='1'))) == {
                ('198.18.0.4', 6881)}
    # The rest of its numwant comes from the seeds: left=0 is also what a
    # client sends while it fetches the metadata, and it needs peers.
    assert peers_of(announce(table, request(ip='198.18.0.1', left='0'))) == {
        ('198.18.0.2', 6881), ('198.18.0.3', 6881), ('198.18.0.4', 6881)}
    assert peers_of(announce(table, request(ip='198.18.0.5', left='9'))) == {
        ('198.18.0.1', 6881), ('198.18.0.2', 6881), ('198.18.0.3', 6881),
        ('198.18.0.4', 6881)}


def test_numwant_limits_peers_to_a_random_subset(table):
    everyone = {('198.18.1.%d' % i, 6881) for i in range(1, 31)}
    for ip, _port in everyone:
        announce(table, request(ip=ip))
    seen = set()
    for _ in range(20):
        got = peers_of(announce(table, request(ip='198.18.0.1',
                                               numwant='5')))
        assert len(got) == 5 and got <= everyone
        seen |= got
    # Twenty random draws of five out of thirty: not always the same five.
    assert len(seen) > 5
    assert peers_of(announce(table, request(ip='198.18.0.1',
                                            numwant='0'))) == set()


def test_compact_0_gets_bep3_dictionaries(table):
    announce(table, request(ip='198.18.0.2', peer_id=b'A' * 20))
    announce(table, request(ip='2001:db8::2', peer_id=b'B' * 20))
    reply = bencode.decode(announce(table, request(ip='198.18.0.3',
                                                   compact='0')))
    assert sorted(reply[b'peers'], key=lambda p: p[b'ip']) == [
        {b'peer id': b'A' * 20, b'ip': b'198.18.0.2', b'port': 6881},
        {b'peer id': b'B' * 20, b'ip': b'2001:db8::2', b'port': 6881}]
    assert b'peers6' not in reply
    reply = bencode.decode(announce(table, request(
        ip='198.18.0.3', compact='0', no_peer_id='1')))
    assert {p[b'ip'] for p in reply[b'peers']} == {b'198.18.0.2',
                                                   b'2001:db8::2'}
    assert all(b'peer id' not in p for p in reply[b'peers'])


def test_seeds_and_leechers_move_as_left_changes(table):
    # Counts come from the lists, not from a scan: they must follow every
    # change of "left", both ways, and departures.
    for i in range(2, 12):
        announce(table, request(ip='198.18.0.%d' % i))
    for i in range(2, 6):
        announce(table, request(ip='198.18.0.%d' % i, left='0'))
    announce(table, request(ip='198.18.0.5', left='10'))
    announce(table, request(ip='198.18.0.11', event='stopped'))
    reply = bencode.decode(announce(table, request(ip='198.18.0.2',
                                                   left='0', numwant='200')))
    assert (reply[b'complete'], reply[b'incomplete']) == (3, 6)
    # A seed asking for six peers is given the six leechers and no seed.
    assert peers_of(announce(table, request(
        ip='198.18.0.2', left='0', numwant='6'))) == {
            ('198.18.0.%d' % i, 6881) for i in range(5, 11)}


def test_sample_is_uniform_and_never_the_requester(table):
    for i in range(2, 22):
        announce(table, request(ip='198.18.0.%d' % i))
    seen = collections.Counter()
    for _ in range(2000):
        peers = peers_of(announce(table, request(ip='198.18.0.2',
                                                 numwant='5')))
        assert len(peers) == 5
        assert ('198.18.0.2', 6881) not in peers
        seen.update(peers)
    assert len(seen) == 19
    # 2000 * 5 / 19 = 526 each on average.
    assert min(seen.values()) > 400 and max(seen.values()) < 660


def test_ipv6_peers_go_to_peers6(table):
    announce(table, request(ip='2001:db8::2', port='6882'))
    announce(table, request(ip='::ffff:198.18.0.3'))
    reply = announce(table, request(ip='198.18.0.4'))
    assert peers_of(reply) == {('198.18.0.3', 6881)}
    assert peers_of(reply, b'peers6') == {('2001:db8::2', 6882)}
    assert bencode.decode(reply)[b'peers6'] == (
        b'\x20\x01\x0d\xb8' + b'\x00' * 11 + b'\x02' + b'\x1a\xe2')


def test_v1_and_v2_keys_have_their_own_peers(table):
    # libtorrent announces a hybrid torrent under both keys, possibly with
    # a different peer id for each; rtorrent and aria2 only under v1. A
    # peer that announced v2 must not be handed a v1-only one: it would
    # connect with the v2 hash, and the v1-only client drops that.
    announce(table, request(ip='198.18.0.2', info_hash=V1, left='0',
                            peer_id=b'A' * 20))
    announce(table, request(ip='198.18.0.2', info_hash=V2, left='0',
                            peer_id=b'B' * 20))
    announce(table, request(ip='198.18.0.5', info_hash=V1,
                            peer_id=b'-lt0D80-rtorrent0001'))
    reply = announce(table, request(ip='198.18.0.3', info_hash=V2))
    assert peers_of(reply) == {('198.18.0.2', 6881)}
    decoded = bencode.decode(reply)
    assert (decoded[b'complete'], decoded[b'incomplete']) == (1, 1)
    reply = announce(table, request(ip='198.18.0.3', info_hash=V1))
    assert peers_of(reply) == {('198.18.0.2', 6881), ('198.18.0.5', 6881)}
    decoded = bencode.decode(reply)
    assert (decoded[b'complete'], decoded[b'incomplete']) == (1, 2)
    # One torrent for operators: each address once.
    swarm, = table.status()['swarms']
    assert (swarm['complete'], swarm['incomplete']) == (1, 2)
    assert sorted(peer['ip'] for peer in swarm['peers']) == [
        '198.18.0.2', '198.18.0.3', '198.18.0.5']


def test_stopped_removes_peer(table):
    for key in (V1, V2):
        announce(table, request(ip='198.18.0.2', info_hash=key))
    announce(table, request(ip='198.18.0.2', info_hash=V2, event='stopped'))
    reply = announce(table, request(ip='198.18.0.3', info_hash=V2))
    assert peers_of(reply) == set()
    assert bencode.decode(reply)[b'incomplete'] == 1
    # libtorrent stops each key of a hybrid torrent on its own.
    assert peers_of(announce(table, request(ip='198.18.0.3'))) == {
        ('198.18.0.2', 6881)}
    announce(table, request(ip='198.18.0.2', event='stopped'))
    reply = announce(table, request(ip='198.18.0.3'))
    assert peers_of(reply) == set()
    assert bencode.decode(reply)[b'incomplete'] == 1


def test_stopped_announce_of_a_node_is_reported(clock):
    stopped = []
    table = swarm_table.SwarmTable(interval=10, clock=clock,
                                   on_stopped=stopped.append)
    table.publish([V1, V2], 'image-a', size=4096)
    node = '1be26c0b-03f2-4d2d-ae87-c02d7f33c123'
    announce(table, request(node=node))
    announce(table, request(node=node, left='0', event='completed'))
    announce(table, request(ip='198.18.0.3', event='stopped'))
    assert stopped == []
    announce(table, request(node=node, event='stopped'))
    assert stopped == [node]


def test_silent_agents_expire(table, clock):
    announce(table, request(ip='198.18.0.2', node='node-2'))
    clock.now += 20
    announce(table, request(ip='198.18.0.3', node='node-3'))
    clock.now += 10   # 0.2 silent for 30 s: the default ttl, still there
    assert peers_of(announce(table, request(ip='198.18.0.4'))) == {
        ('198.18.0.2', 6881), ('198.18.0.3', 6881)}
    clock.now += 0.5
    reply = announce(table, request(ip='198.18.0.4'))
    assert peers_of(reply) == {('198.18.0.3', 6881)}
    assert bencode.decode(reply)[b'incomplete'] == 2


def test_standard_clients_stay_listed_between_300s_announces(table, clock):
    # qBittorrent (libtorrent) re-announces no more often than every 300 s
    # whatever interval it is asked for; it has no node label.
    announce(table, request(ip='198.18.0.5', peer_id=b'-qB4500-abcdefghijkl'))
    announce(table, request(ip='198.18.0.2', node='node-2'))
    for _ in range(2):
        clock.now += 300
        announce(table, request(ip='198.18.0.2', node='node-2'))
        assert peers_of(announce(table, request(ip='198.18.0.4'))) == {
            ('198.18.0.2', 6881), ('198.18.0.5', 6881)}
        assert {peer['ip'] for peer in table.status()['swarms'][0]['peers']
                } >= {'198.18.0.5'}
    announce(table, request(ip='198.18.0.5', peer_id=b'-qB4500-abcdefghijkl'))
    clock.now += swarm_table.FOREIGN_PEER_TTL + 1
    announce(table, request(ip='198.18.0.2', node='node-2'))
    # Silent for longer than three such intervals: forgotten.
    assert peers_of(announce(table, request(ip='198.18.0.4'))) == {
        ('198.18.0.2', 6881)}


def test_peer_that_gains_a_node_label_expires_as_an_agent(table, clock):
    announce(table, request(ip='198.18.0.2'))
    announce(table, request(ip='198.18.0.2', node='node-2'))
    clock.now += 31
    assert peers_of(announce(table, request(ip='198.18.0.4'))) == set()


def test_full_swarm_evicts_least_recently_seen(clock):
    table = swarm_table.SwarmTable(max_peers=2, clock=clock)
    table.publish([V1], 'image-a')
    announce(table, request(ip='198.18.0.2'))
    clock.now += 1
    announce(table, request(ip='198.18.0.3'))
    clock.now += 1
    announce(table, request(ip='198.18.0.2'))
    clock.now += 1
    reply = announce(table, request(ip='198.18.0.4'))
    assert peers_of(reply) == {('198.18.0.2', 6881)}
    assert bencode.decode(reply)[b'incomplete'] == 2


# Publishing


def test_publish_is_bounded_and_idempotent(clock):
    table = swarm_table.SwarmTable(max_swarms=1, clock=clock)
    table.publish([V1, V2], 'image-a')
    announce(table, request())
    table.publish([V1, V2], 'image-a')
    assert bencode.decode(announce(table, request(ip='198.18.0.3')))[
        b'incomplete'] == 2
    with pytest.raises(protocol.TrackerError) as exc:
        table.publish([OTHER], 'image-b')
    assert str(exc.value) == (
        'cannot publish image-b: the tracker already serves 1 torrents; '
        'unpublish unused images or raise [bittorrent]max_swarms')


@pytest.mark.parametrize('keys', [[V1, OTHER], [V1], [OTHER, V2]])
def test_publish_refuses_overlapping_aliases(table, keys):
    with pytest.raises(ValueError, match='overlap a published torrent'):
        table.publish(keys, 'image-b')


@pytest.mark.parametrize('keys', [[], [V1[:19]], [V1, V2, OTHER]])
def test_publish_refuses_bad_keys(keys):
    with pytest.raises(ValueError, match='one or two 20-byte info-hashes'):
        swarm_table.SwarmTable().publish(keys, 'image-a')


def test_unpublish_by_alias_drops_both_keys(table):
    announce(table, request())
    assert table.unpublish(V2.hex()) is True
    assert table.unpublish(V1.hex()) is False
    for key in (V1, V2):
        with pytest.raises(protocol.TrackerError, match='unknown info_hash'):
            announce(table, request(info_hash=key))
    table.publish([V1, V2], 'image-a')
    assert table.status()['swarms'][0]['peers'] == []


# Scrape and status


def test_scrape_counts_each_completion_once(table):
    table.publish([OTHER], 'image-b')
    announce(table, request(ip='198.18.0.2'))
    for key in (V1, V2):
        announce(table, request(ip='198.18.0.2', info_hash=key, left='0',
                                event='completed'))
    announce(table, request(ip='198.18.0.3'))
    unknown = b'\xee' * 20
    # 198.18.0.3 announced only the v1 key.
    assert bencode.decode(scrape(table, [V2, unknown])) == {
        b'files': {V2: {b'complete': 1, b'downloaded': 1,
                        b'incomplete': 0}}}
    assert bencode.decode(scrape(table, [])) == {b'files': {
        V1: {b'complete': 1, b'downloaded': 1, b'incomplete': 1},
        OTHER: {b'complete': 0, b'downloaded': 0, b'incomplete': 0}}}
    # Asked only for what it does not serve: a reason, not an empty list.
    with pytest.raises(protocol.TrackerError,
                       match='unknown info_hash %s' % unknown.hex()):
        scrape(table, [unknown])


def test_status_shows_each_node_progress(table, clock):
    table.publish([OTHER], 'image-b')
    announce(table, request(ip='198.18.0.2', left='0', node='conductor'))
    clock.now += 4
    announce(table, request(ip='2001:db8::3', port='6882', left='300',
                            uploaded='5', downloaded='700', event='started',
                            node='node-1'))
    clock.now += 1
    announce(table, request(ip='2001:db8::3', port='6882', left='200',
                            info_hash=V2))
    clock.now += 2.5
    assert table.status() == {'swarms': [
        {'name': 'image-a', 'size': 4096,
         'info_hashes': [V1.hex(), V2.hex()],
         'complete': 1, 'incomplete': 1, 'downloaded': 0,
         'peers': [
             {'ip': '198.18.0.2', 'port': 6881, 'node': 'conductor',
              'left': 0, 'uploaded': 0, 'downloaded': 0,
              'seconds_since_seen': 7.5, 'event': ''},
             {'ip': '2001:db8::3', 'port': 6882, 'node': 'node-1',
              'left': 200, 'uploaded': 0, 'downloaded': 0,
              'seconds_since_seen': 2.5, 'event': 'started'}]},
        {'name': 'image-b', 'size': None, 'info_hashes': [OTHER.hex()],
         'complete': 0, 'incomplete': 0, 'downloaded': 0, 'peers': []}]}


# Standard clients


def test_peer_id_prefix_is_the_sessions_fingerprint():
    from ironic_bt.common import swarm
    assert swarm_table.PEER_ID_PREFIX == swarm.PEER_ID_PREFIX
    assert swarm.session_settings()['peer_fingerprint'].encode().startswith(
        swarm_table.PEER_ID_PREFIX)
    # Seeders are ironic-bt peers to the tracker too, and agents tell them
    # from each other.
    seeder = swarm.SEEDER_FINGERPRINT.encode()
    assert seeder.startswith(swarm_table.PEER_ID_PREFIX)
    assert seeder.startswith(swarm.SEEDER_PEER_ID_PREFIX)
    assert not swarm.AGENT_FINGERPRINT.encode().startswith(
        swarm.SEEDER_PEER_ID_PREFIX)


def test_standard_clients_are_reported(clock):
    # The seeder must know before it hands a client any peer: the announce
    # reply is what brings the client to the seeder.
    seen = []
    table = swarm_table.SwarmTable(interval=10, clock=clock,
                                   on_clients=seen.append)
    table.publish([V1, V2], 'image-a')
    table.publish([OTHER], 'image-b')
    ours = b'-IB0001-abcdefghijkl'
    announce(table, request(ip='198.18.0.2', peer_id=ours))
    announce(table, request(ip='198.18.0.3', node='node-3'))
    assert seen == []
    rtorrent = b'-lt0D80-abcdefghijkl'
    announce(table, request(ip='198.18.0.5', peer_id=rtorrent))
    assert seen == [True]
    announce(table, request(ip='198.18.0.6', peer_id=rtorrent,
                            info_hash=OTHER))
    announce(table, request(ip='198.18.0.5', peer_id=rtorrent,
                            event='stopped'))
    assert seen == [True]
    announce(table, request(ip='198.18.0.6', peer_id=rtorrent,
                            info_hash=OTHER, event='stopped'))
    assert seen == [True, False]
    # Unpublishing forgets them too; expiry after FOREIGN_PEER_TTL.
    announce(table, request(ip='198.18.0.5', peer_id=rtorrent))
    table.unpublish(V1.hex())
    announce(table, request(ip='198.18.0.6', peer_id=rtorrent,
                            info_hash=OTHER))
    clock.now += swarm_table.FOREIGN_PEER_TTL + 1
    announce(table, request(ip='198.18.0.2', peer_id=ours, info_hash=OTHER))
    assert seen == [True, False, True, False, True, False]


# Announce keys

SECRET = b'k' * 32


@pytest.fixture
def keyed(clock):
    table = swarm_table.SwarmTable(interval=10, clock=clock,
                                   announce_secret=SECRET,
                                   publish_secret='s3cret')
    table.publish([V1, V2], 'image-a', size=4096)
    return table


def key_of(node, info_hash=V1):
    return publication.announce_key(SECRET, node, info_hash)


@pytest.mark.parametrize('auth', [None, 'f' * 32, key_of('node-b'),
                                  key_of('node-a', OTHER)])
def test_announce_without_the_nodes_key_gets_no_peers(keyed, auth):
    announce(keyed, request(ip='198.18.0.3', node='node-b',
                            auth=key_of('node-b')))
    with pytest.raises(protocol.TrackerError) as exc:
        announce(keyed, request(node='node-a', auth=auth))
    assert str(exc.value) == (
        'announce key missing or wrong for node "node-a" and info_hash '
        + V1.hex() + ': this tracker serves only the nodes this '
        'deployment deploys')
    # The refused announcer is handed to nobody.
    reply = announce(keyed, request(ip='198.18.0.3', node='node-b',
                                    auth=key_of('node-b')))
    assert peers_of(reply) == set()


def test_key_covers_both_hashes_of_a_hybrid_torrent(keyed):
    for info_hash in (V1, V2):
        reply = announce(keyed, request(node='node-a', info_hash=info_hash,
                                        auth=key_of('node-a')))
        assert b'failure' not in reply


def test_key_replayed_from_another_address_is_refused(keyed, clock):
    announce(keyed, request(ip='198.18.0.2', node='node-a',
                            auth=key_of('node-a')))
    with pytest.raises(protocol.TrackerError) as exc:
        announce(keyed, request(ip='198.18.0.66', port='7000',
                                node='node-a', auth=key_of('node-a')))
    assert str(exc.value) == (
        'the announce key of node "node-a" is in use from another address')
    # The node itself goes on, from its own address.
    announce(keyed, request(ip='198.18.0.2', node='node-a',
                            auth=key_of('node-a')))
    # Once the node is gone (silent for its time to live, or stopped),
    # the key may move with it to a new address.
    clock.now += 31
    reply = announce(keyed, request(ip='198.18.0.9', node='node-a',
                                    auth=key_of('node-a')))
    assert b'failure' not in reply


def test_seeders_with_a_publication_key_need_no_announce_key(keyed):
    key = publication.make_key('s3cret', [V1, V2], 4096)
    reply = announce(keyed, request(publish=key, left='0'))
    assert b'failure' not in reply


def test_the_table_is_keyed_by_hex_info_hashes(table):
    # The publisher and the seeder name a torrent by its hex info-hash;
    # bytes or a short hash are a mistake, not a torrent nobody publishes.
    for bad in (V1, V1.hex()[:38], 'not hex' * 6):
        with pytest.raises((ValueError, TypeError)):
            table.peer_progress(bad, 'node-2')
        with pytest.raises((ValueError, TypeError)):
            table.unpublish(bad)


def test_peer_progress_is_the_nodes_last_announce(table, clock):
    assert table.peer_progress(V1.hex(), 'node-2') is None
    announce(table, request(ip='198.18.0.2', node='node-2', left='3000',
                            downloaded='1000'))
    clock.now += 4
    announce(table, request(ip='198.18.0.3', node='node-3'))
    # Under the v2 key too: one torrent, one record per address.
    announce(table, request(ip='198.18.0.2', node='node-2', info_hash=V2,
                            left='1000', downloaded='3000', uploaded='512'))
    clock.now += 1.5
    assert table.peer_progress(V1.hex(), 'node-2') == {
        'left': 1000, 'downloaded': 3000, 'uploaded': 512,
        'seconds_since_seen': 1.5}
    assert table.peer_progress(V2.hex(), 'node-2') == table.peer_progress(
        V1.hex(), 'node-2')
    assert table.peer_progress(V1.hex(), 'node-9') is None
    assert table.peer_progress(OTHER.hex(), 'node-2') is None


def test_peer_progress_of_a_silent_node_grows_old_but_stays(table, clock):
    # A node that lost power stops announcing: its peer record expires
    # (nobody is handed a dead address), and its last progress stays, with
    # the time since, which is what tells the conductor to ask its BMC.
    announce(table, request(ip='198.18.0.2', node='node-2', left='1000'))
    clock.now += 31   # past the default ttl of three intervals
    assert peers_of(announce(table, request(ip='198.18.0.3'))) == set()
    assert table.peer_progress(V1.hex(), 'node-2') == {
        'left': 1000, 'uploaded': 0, 'downloaded': 0,
        'seconds_since_seen': 31.0}
    table.unpublish(V1.hex())
    assert table.peer_progress(V1.hex(), 'node-2') is None


def test_peer_progress_keeps_a_bounded_number_of_nodes(clock):
    table = swarm_table.SwarmTable(interval=10, clock=clock, max_peers=2)
    table.publish([V1, V2], 'image-a', size=4096)
    for i in range(6):
        clock.now += 1
        announce(table, request(ip='198.18.0.%d' % (10 + i),
                                node='node-%d' % i))
    known = [i for i in range(6)
             if table.peer_progress(V1.hex(), 'node-%d' % i) is not None]
    assert known == [2, 3, 4, 5]


def test_a_large_swarm_hands_an_agent_its_ring_neighbours_every_time(table):
    from ironic_bt.common import ring
    agents = ['198.18.%d.%d' % (i // 200, 2 + i % 200) for i in range(120)]
    for ip in agents:
        table.record(request(ip=ip, peer_id=b'-IB0100-abcdefghijkl'))
    table.record(request(ip='198.18.9.9', left='0',
                         peer_id=b'-IB0100-seederxxxxxx'))
    whole = ring.Ring(agents)
    me = agents[7]
    first = table.record(request(ip=me, numwant='30',
                                 peer_id=b'-IB0100-abcdefghijkl'))[2]
    again = table.record(request(ip=me, numwant='30',
                                 peer_id=b'-IB0100-abcdefghijkl'))[2]
    handed = [p.ip for p in first]
    # What the agent needs to know which pieces it owns, first.
    preds = whole.predecessors(me)
    assert handed[:len(preds)] == preds
    assert len(handed) == 30 and len(set(handed)) == 30
    assert me not in handed and '198.18.9.9' not in handed
    # The same peers at the next announce: its connections do not grow.
    assert [p.ip for p in again] == handed


def test_a_swarm_smaller_than_the_handout_is_handed_out_whole(table):
    agents = ['198.18.0.%d' % i for i in range(2, 12)]
    for ip in agents:
        table.record(request(ip=ip, peer_id=b'-IB0100-abcdefghijkl'))
    handed = table.record(request(ip=agents[0],
                                  peer_id=b'-IB0100-abcdefghijkl'))[2]
    assert {p.ip for p in handed} == set(agents[1:])


def test_an_agent_leaving_leaves_the_ring(table):
    agents = ['198.18.0.%d' % i for i in range(2, 60)]
    for ip in agents:
        table.record(request(ip=ip, peer_id=b'-IB0100-abcdefghijkl'))
    table.record(request(ip=agents[3], event='stopped',
                         peer_id=b'-IB0100-abcdefghijkl'))
    for ip in agents[:3] + agents[4:]:
        handed = table.record(request(ip=ip, numwant='20',
                                      peer_id=b'-IB0100-abcdefghijkl'))[2]
        assert agents[3] not in {p.ip for p in handed}
