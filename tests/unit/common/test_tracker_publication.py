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

"""Conductors publishing to another conductor's tracker with a key."""

import pytest

from ironic_bt.common import publication
from ironic_bt.tracker import protocol
from ironic_bt.tracker import swarm_table
from tests import bencode
from tests.unit.common.test_tracker_protocol import Clock
from tests.unit.common.test_tracker_protocol import request
from tests.unit.common.test_tracker_protocol import V1
from tests.unit.common.test_tracker_protocol import V2

SECRET = 'shared by the conductors'
SEEDER_ID = b'-IBS001-abcdefghijkl'
AGENT_ID = b'-IB0001-abcdefghijkl'


def key(secret=SECRET, hashes=(V1, V2), size=4096):
    return publication.make_key(secret, hashes, size).encode()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def table(clock):
    # A conductor's built-in tracker; it published nothing itself.
    return swarm_table.SwarmTable(interval=10, clock=clock,
                                  publish_secret=SECRET)


def seeder_announce(table, ip='198.18.0.9', **params):
    params.setdefault('publish', key())
    return table.record(request(ip=ip, peer_id=SEEDER_ID, left='0',
                                **params))


def agent_announce(table, ip='198.18.0.2', info_hash=V1):
    return table.record(request(ip=ip, peer_id=AGENT_ID, info_hash=info_hash))


def test_key_round_trip():
    assert publication.check_key(SECRET, key()) == ((V1, V2), 4096)
    assert publication.check_key(SECRET, key(hashes=[V1], size=0)) == (
        (V1,), 0)


def test_labels_added_to_a_url_reach_the_tracker_unchanged():
    # The tracker reads '+' as '+' (RFC 3986), so a space must not become
    # one on the way: a node named 'rack 1+2' is labelled 'rack 1+2'.
    url = publication.with_query('http://198.18.0.1:6969/announce?a=1',
                                 {'node': 'rack 1+2', 'auth': 'k/=&'})
    query = url.split('?', 1)[1].encode()
    assert dict(protocol.split_query(query)) == {
        b'a': b'1', b'node': b'rack 1+2', b'auth': b'k/=&'}


@pytest.mark.parametrize('value, reason', [
    (key(secret='another site'), 'not signed'),
    (key().replace(b'4096', b'4097'), 'not signed'),
    (key()[:-1], 'malformed'),
    (b'\xff' * 40, 'not ASCII'),
    (key(hashes=(V1, V1)), 'repeats'),
    (publication.make_key(SECRET, [V1], 1 << 63).encode(), 'impossible'),
])
def test_bad_keys_are_refused(value, reason):
    with pytest.raises(publication.InvalidKey, match=reason):
        publication.check_key(SECRET, value)


def test_unknown_torrent_without_a_key_is_refused(table):
    with pytest.raises(protocol.TrackerError, match='unknown info_hash'):
        agent_announce(table)


def test_seeder_with_a_key_publishes_for_everyone(table):
    complete, incomplete, peers = seeder_announce(table)
    assert (complete, incomplete, peers) == (1, 0, [])
    # The other conductor's agents, with no key, now find its seeder, under
    # either info-hash of the hybrid torrent.
    _c, _i, peers = agent_announce(table)
    assert [(p.ip, p.port) for p in peers] == [('198.18.0.9', 6881)]
    seeder_announce(table, info_hash=V2)
    _c, _i, peers = agent_announce(table, ip='198.18.0.3', info_hash=V2)
    assert [(p.ip, p.port) for p in peers] == [('198.18.0.9', 6881)]
    swarm, = table.status()['swarms']
    assert swarm['size'] == 4096
    assert swarm['name'] == 'published by 198.18.0.9'


def test_publication_ends_when_its_seeder_stops(table):
    seeder_announce(table)
    agent_announce(table)
    seeder_announce(table, event='stopped')
    with pytest.raises(protocol.TrackerError, match='unknown info_hash'):
        agent_announce(table)
    assert table.status()['swarms'] == []


def test_publication_ends_when_its_seeder_goes_silent(table, clock):
    seeder_announce(table)
    clock.now += table.peer_ttl - 1
    agent_announce(table)
    clock.now += 2
    with pytest.raises(protocol.TrackerError, match='unknown info_hash'):
        agent_announce(table)
    assert table.scrape_counts([]) == {}


def test_two_publishers_keep_it_until_both_are_gone(table):
    seeder_announce(table, ip='198.18.0.9')
    seeder_announce(table, ip='198.18.0.10')
    seeder_announce(table, ip='198.18.0.9', event='stopped')
    _c, _i, peers = agent_announce(table)
    assert [(p.ip, p.port) for p in peers] == [('198.18.0.10', 6881)]
    seeder_announce(table, ip='198.18.0.10', event='stopped')
    with pytest.raises(protocol.TrackerError, match='unknown info_hash'):
        agent_announce(table)


def test_local_and_remote_publications_of_one_torrent(table):
    # Both conductors deploy the image: the tracker's own conductor
    # publishes it, another one's seeder announces it with a key.
    seeder_announce(table)
    table.publish([V1, V2], 'image-a', size=4096)
    assert table.status()['swarms'][0]['name'] == 'image-a'
    # Our conductor is done with it; the other's nodes keep their swarm.
    assert table.unpublish(V1.hex())
    _c, _i, peers = agent_announce(table)
    assert [(p.ip, p.port) for p in peers] == [('198.18.0.9', 6881)]
    seeder_announce(table, event='stopped')
    with pytest.raises(protocol.TrackerError, match='unknown info_hash'):
        agent_announce(table)
    # Unpublishing a torrent we never published is refused.
    seeder_announce(table)
    assert not table.unpublish(V1.hex())


@pytest.mark.parametrize('params, reason', [
    ({'publish': key(secret='another site')}, 'tracker_secret'),
    ({'publish': key(hashes=[V2])}, 'for another torrent'),
    ({'publish': b'junk'}, 'malformed'),
])
def test_refused_keys_publish_nothing(table, params, reason):
    with pytest.raises(protocol.TrackerError, match=reason):
        seeder_announce(table, **params)
    assert table.status()['swarms'] == []


def test_key_that_overlaps_a_published_torrent_is_refused(table):
    table.publish([V1], 'v1 only', size=4096)
    with pytest.raises(protocol.TrackerError, match='overlap'):
        seeder_announce(table, info_hash=V2)


def test_tracker_without_the_secret_takes_no_publications(clock):
    table = swarm_table.SwarmTable(interval=10, clock=clock)
    with pytest.raises(protocol.TrackerError,
                       match='no publications from other conductors'):
        seeder_announce(table)


def test_publications_count_against_max_swarms(clock):
    table = swarm_table.SwarmTable(interval=10, clock=clock, max_swarms=1,
                                   publish_secret=SECRET)
    table.publish([b'\x01' * 20], 'ours', size=1)
    with pytest.raises(protocol.TrackerError, match='already serves'):
        seeder_announce(table)
    # A dead publication makes room.
    table.unpublish('01' * 20)
    seeder_announce(table)


def test_http_reply_to_a_refused_key_is_a_failure_reason(table):
    with pytest.raises(protocol.TrackerError) as err:
        table.record(request(peer_id=SEEDER_ID, left='0',
                             publish=key(secret='x')))
    reply = bencode.decode(protocol.failure(str(err.value)))
    assert b'tracker_secret' in reply[b'failure reason']
