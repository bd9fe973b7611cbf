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

"""The writer's count of the bytes from the seeder, agents and web seeds."""

import types

import libtorrent as lt

from ipa_extension import peers

SEEDER = '198.18.0.1'


def peer(ip, port, total, web=False, pid=b'-IB0001-' + b'x' * 12):
    return types.SimpleNamespace(
        ip=(ip, port), total_download=total, pid=lt.sha1_hash(pid),
        connection_type=(lt.peer_info.web_seed if web
                         else lt.peer_info.standard_bittorrent))


def test_counts_survive_disconnects():
    counts = peers.PeerBytes({SEEDER})
    counts.update([peer(SEEDER, 6881, 100), peer('198.18.0.2', 6881, 50)])
    counts.update([peer(SEEDER, 6881, 300), peer('198.18.0.2', 6881, 80)])
    # The seeder disconnects (we completed), then connects again anew.
    counts.update([peer('198.18.0.2', 6881, 90)])
    counts.update([peer(SEEDER, 6881, 20), peer('198.18.0.2', 6881, 90)])
    assert counts.from_seeder(410) == 320


def test_bytes_after_the_last_look_go_to_who_was_there():
    counts = peers.PeerBytes({SEEDER})
    counts.update([peer(SEEDER, 6881, 700)])
    # 300 more bytes arrived before the seeder's connection closed.
    counts.update([])
    assert counts.from_seeder(1000) == 1000

    agents_only = peers.PeerBytes({SEEDER})
    agents_only.update([peer('198.18.0.2', 6881, 700)])
    agents_only.update([])
    assert agents_only.from_seeder(1000) == 0


def test_never_more_than_downloaded():
    counts = peers.PeerBytes({SEEDER})
    counts.update([peer(SEEDER, 6881, 5000)])
    assert counts.from_seeder(4096) == 4096


def test_reconnect_between_two_looks_keeps_the_old_bytes():
    counts = peers.PeerBytes({SEEDER})
    counts.update([peer(SEEDER, 6881, 400)])
    # Same address and port, a new connection: its counter started again.
    counts.update([peer(SEEDER, 6881, 100)])
    assert counts.from_seeder(500) == 500


def test_web_seed_bytes_are_counted_apart_from_the_seeder():
    # The conductor's web server shares the seeder's address.
    counts = peers.PeerBytes({SEEDER})
    counts.update([peer(SEEDER, 6881, 300), peer('198.18.0.2', 6881, 100)])
    # The seeder dies; the web seed on port 8080 takes over.
    counts.update([peer('198.18.0.2', 6881, 150),
                   peer(SEEDER, 8080, 200, web=True)])
    counts.update([peer(SEEDER, 8080, 450, web=True)])
    assert counts.from_web_seeds() == 450
    assert counts.from_seeder(900) == 300
    assert counts.counted(peers.AGENT) == 150


def test_standard_clients_are_neither_agents_nor_seeders():
    counts = peers.PeerBytes({SEEDER})
    qbittorrent = peer('198.18.0.5', 6881, 0, pid=b'-qB4520-abcdefghijkl')
    handshaking = peer('198.18.0.6', 6881, 0, pid=b'\0' * 20)
    assert counts.kind(qbittorrent) == peers.OTHER
    assert counts.kind(peer('198.18.0.2', 6881, 0)) == peers.AGENT
    assert counts.kind(peer(SEEDER, 6881, 0, pid=b'-LT2110-abcdefghijkl')
                       ) == peers.SEEDER
    # No peer id yet: taken for an agent until the handshake tells.
    assert counts.kind(handshaking) == peers.AGENT
    counts.update([peer(SEEDER, 6881, 100),
                   peer('198.18.0.5', 6881, 300,
                        pid=b'-qB4520-abcdefghijkl')])
    assert counts.counted(peers.OTHER) == 300
    # Bytes from a client are not the seeder's.
    assert counts.from_seeder(400) == 100


def test_every_conductors_seeder_is_a_seeder():
    # Two conductors share the swarm: the other's seeder (met through the
    # tracker) is told by its peer id, and its bytes are a seeder's.
    counts = peers.PeerBytes({SEEDER})
    other = peer('198.18.0.9', 6881, 0, pid=b'-IBS001-abcdefghijkl')
    assert counts.kind(other) == peers.SEEDER
    assert counts.other_seeders == {'198.18.0.9'}
    counts.update([peer(SEEDER, 6881, 100),
                   peer('198.18.0.9', 6881, 200,
                        pid=b'-IBS001-abcdefghijkl'),
                   peer('198.18.0.2', 6881, 300)])
    assert counts.from_seeder(600) == 300
    assert counts.counted(peers.AGENT) == 300


def test_describe_names_each_peer_largest_first():
    counts = peers.PeerBytes({SEEDER})
    counts.update([peer(SEEDER, 6881, 100), peer('198.18.0.2', 6881, 300)])
    # A reconnect: both connections of 198.18.0.2 add up.
    counts.update([peer(SEEDER, 6881, 100), peer('198.18.0.2', 6882, 50)])
    assert counts.describe() == ('198.18.0.2 (agent) 350, '
                                 '198.18.0.1 (seeder) 100')
    assert counts.describe(limit=1) == '198.18.0.2 (agent) 350 and 1 more'
    assert peers.PeerBytes({SEEDER}).describe() == 'nobody'


def agent(ip, total, queued, pieces=0):
    return types.SimpleNamespace(ip=(ip, 6881), total_download=total,
                                 download_queue_length=queued,
                                 num_pieces=pieces)


def test_an_agent_that_leaves_requests_unanswered_is_taken_for_gone():
    silence = peers.Silence(quiet=1.5)
    assert silence.update(0.0, [agent('198.18.0.9', 100, 4)]) == set()
    assert silence.update(1.0, [agent('198.18.0.9', 100, 4)]) == set()
    # Reported once, when it goes quiet; it stays so while it sends nothing.
    assert silence.update(1.5, [agent('198.18.0.9', 100, 4)]) == {
        ('198.18.0.9', 6881)}
    assert silence.update(2.0, [agent('198.18.0.9', 100, 4)]) == set()
    # libtorrent timing its requests out does not bring it back...
    silence.update(60.0, [agent('198.18.0.9', 100, 0)])
    assert silence.silent == {('198.18.0.9', 6881)}
    # ...a byte from it does.
    silence.update(61.0, [agent('198.18.0.9', 116, 0)])
    assert silence.silent == set()


def test_on_a_slow_link_with_many_agents_a_live_one_gets_its_rounds():
    # 32 agents, 1 Mbit/s: a block from each of its peers in turn takes a
    # live agent about 4 s a round.
    def swarm(second):
        # 31 that send now and then, and one that stopped.
        return [agent('198.18.1.%d' % i, 500 * second, 1, 3)
                for i in range(31)] + [agent('198.18.0.9', 100, 4)]

    silence = peers.Silence(quiet=1.5)
    assert silence.update(0.0, swarm(0), rate=125000) == set()
    assert silence.update(5.0, swarm(5), rate=125000) == set()
    assert silence.quiet > 12
    assert silence.update(13.0, swarm(13), rate=125000) == {
        ('198.18.0.9', 6881)}
    # A fast link keeps the quiet time given.
    silence.update(13.1, swarm(14), rate=3e6)
    assert silence.quiet == 1.5


def test_an_agent_we_ask_nothing_or_that_sends_is_never_gone():
    silence = peers.Silence(quiet=1.5)
    for second in range(10):
        # Nothing asked of the first; the second sends all the time.
        silence.update(float(second), [agent('198.18.0.3', 0, 0),
                                       agent('198.18.0.4', second, 8)])
    assert silence.silent == set()
    # One whose uplink is full still tells of the pieces it gets.
    for second in range(10):
        silence.update(float(second), [agent('198.18.0.5', 0, 8, second)])
    assert silence.silent == set()
    # A connection that closed is forgotten.
    silence.update(10.0, [agent('198.18.0.3', 0, 3)])
    silence.update(20.0, [])
    assert silence.update(20.5, [agent('198.18.0.3', 0, 3)]) == set()


def outgoing(ip, port):
    return types.SimpleNamespace(ip=(ip, port),
                                 flags=lt.peer_info.outgoing_connection)


def test_only_the_lower_address_dials_again_after_a_simultaneous_open():
    low, high = peers.Redial(6881), peers.Redial(6881)
    low.seen(outgoing('198.18.0.4', 7000))
    # Both ends closed their incoming connection as a duplicate.
    low.lost(10.0, '198.18.0.4', duplicate=True)
    high.lost(10.0, '198.18.0.3', duplicate=True)
    assert low.due(10.1, '198.18.0.3', set()) == []   # settling
    assert low.due(10.4, '198.18.0.3', set()) == [('198.18.0.4', 7000)]
    assert high.due(10.4, '198.18.0.4', set()) == []
    # Connected again: nothing more to do.
    assert low.due(11.0, '198.18.0.3', {'198.18.0.4'}) == []
    assert low.due(20.0, '198.18.0.3', set()) == []


def test_redial_gives_up_and_ignores_other_disconnects():
    redial = peers.Redial(6881)
    redial.lost(0.0, '198.18.0.9', duplicate=False)
    assert redial.due(5.0, '198.18.0.2', set()) == []
    redial.lost(0.0, '198.18.0.9', duplicate=True)
    dialled = [redial.due(t / 10.0, '198.18.0.2', set())
               for t in range(1, 100)]
    # The agents' own port when no outgoing connection told another one.
    assert [d for d in dialled if d] == [[('198.18.0.9', 6881)]] * 3
