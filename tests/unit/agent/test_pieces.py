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

"""The agents' piece plan: who asks the seeder for which piece."""

import collections
import os
import subprocess
import sys

from oslotest import base

from ipa_extension import pieces
from ironic_bt.common import ring
from ironic_bt.tracker import protocol
from ironic_bt.tracker import swarm_table

N = 1024
ME = '198.18.0.3'
OTHERS = ['198.18.0.%d' % i for i in range(4, 19)]


def _plan(members=None, me=ME, pieces_count=N):
    plan = pieces.PiecePlan(pieces_count, grace=2.0)
    have = [False] * pieces_count
    avail = [0] * pieces_count
    change = plan.update(0.0, me, members if members is not None
                         else OTHERS, have, avail)
    return plan, have, avail, dict(change or [])


def _fetch_everything_ranked(plan, have):
    """Mark as present every piece this agent would ask the seeder for."""
    for i in range(N):
        if plan.rank(i) < plan.DEPTH:
            have[i] = True


class TestOwnership(base.BaseTestCase):

    def test_every_piece_has_one_owner_and_shares_are_even(self):
        members = [ME] + OTHERS
        owners = {}
        for me in members:
            plan, _h, _a, prios = _plan(
                [m for m in members if m != me], me=me)
            for piece, prio in prios.items():
                if prio == pieces.OWN:
                    # No two agents ask the seeder for the same piece.
                    self.assertNotIn(piece, owners)
                    owners[piece] = me
        self.assertEqual(N, len(owners))
        shares = collections.Counter(owners.values())
        self.assertEqual(set(members), set(shares))
        # 64 each on average; rendezvous hashing keeps them close.
        self.assertLess(max(shares.values()), 64 * 1.5)
        self.assertGreater(min(shares.values()), 64 * 0.5)

    def test_all_agents_agree_whatever_order_they_learn_peers(self):
        a = pieces.PiecePlan(N)
        b = pieces.PiecePlan(N)
        have, avail = [False] * N, [0] * N
        a.update(0.0, ME, OTHERS[:3], have, avail)
        a.update(0.1, ME, OTHERS, have, avail)
        b.update(0.0, ME, list(reversed(OTHERS)), have, avail)
        self.assertEqual([a.owner(i) for i in range(N)],
                         [b.owner(i) for i in range(N)])
        self.assertEqual([a.rank(i) for i in range(N)],
                         [b.rank(i) for i in range(N)])

    def test_a_member_leaving_gives_its_pieces_to_the_others(self):
        plan, have, avail, prios = _plan()
        gone = OTHERS[0]
        theirs = [i for i in range(N) if plan.owner(i) == gone]
        mine = {i for i, p in prios.items() if p == pieces.OWN}
        self.assertTrue(theirs)
        change = dict(plan.update(0.1, ME, OTHERS[1:], have, avail))
        # Only pieces of the member that left change hands.
        self.assertTrue(all(plan.owner(i) != gone for i in range(N)))
        for i in mine:
            self.assertEqual(ME, plan.owner(i))
        self.assertLessEqual(set(change), set(theirs))


class TestMembersComingAndGoing(base.BaseTestCase):

    def test_ranks_after_members_left_and_came_are_ranks_from_scratch(self):
        plan = pieces.PiecePlan(N)
        have, avail = [False] * N, [0] * N
        views = [OTHERS, OTHERS[3:], OTHERS[3:] + OTHERS[:2], OTHERS[::2],
                 OTHERS]
        for t, view in enumerate(views):
            plan.update(float(t) * 0.1, ME, view, have, avail)
            fresh = pieces.PiecePlan(N)
            fresh.update(0.0, ME, view, have, avail)
            self.assertEqual([fresh.rank(p) for p in range(N)],
                             [plan.rank(p) for p in range(N)])
            self.assertEqual([fresh.owner(p) for p in range(N)],
                             [plan.owner(p) for p in range(N)])


class TestPriorities(base.BaseTestCase):

    def test_own_wait_and_normal(self):
        plan, have, avail, prios = _plan()
        mine = [i for i in range(N) if plan.owner(i) == ME]
        theirs = [i for i in range(N) if plan.owner(i) != ME]
        self.assertTrue(all(prios[i] == pieces.OWN for i in mine))
        self.assertTrue(all(prios[i] == pieces.WAIT for i in theirs))
        self.assertTrue(plan.need_seeder)

        # Another agent got one of its pieces: take it from that agent.
        avail[theirs[0]] = 1
        # We got one of ours: nothing more to ask for it.
        have[mine[0]] = True
        change = dict(plan.update(0.1, ME, OTHERS, have, avail))
        self.assertEqual({theirs[0]: pieces.NORMAL, mine[0]: pieces.NORMAL},
                         change)
        # Nothing else changed: no update at all.
        self.assertIsNone(plan.update(0.2, ME, OTHERS, have, avail))

    def test_runner_up_pieces_when_own_pieces_run_out(self):
        plan, have, avail, _p = _plan()
        mine = [i for i in range(N) if plan.rank(i) == 0]
        second = [i for i in range(N) if plan.rank(i) == 1]
        third = [i for i in range(N) if plan.rank(i) == 2]
        # All but 10 of ours are in (backup threshold 16): help the owners
        # of the pieces we rank second for, not those we rank third for.
        for i in mine[10:]:
            have[i] = True
        change = dict(plan.update(0.1, ME, OTHERS, have, avail))
        self.assertTrue(all(change[i] == pieces.BACKUP for i in second))
        self.assertFalse(any(i in change for i in third))
        self.assertTrue(plan.need_seeder)
        # A piece another agent has comes from that agent, even ours.
        avail[second[0]] = 1
        change = dict(plan.update(0.2, ME, OTHERS, have, avail))
        self.assertEqual({second[0]: pieces.NORMAL}, change)

    def _assert_own_pieces_only(self, **flags):
        plan, have, avail, _p = _plan()
        for name, value in flags.items():
            setattr(plan, name, value)
        mine = [i for i in range(N) if plan.rank(i) == 0]
        for i in mine[10:]:
            have[i] = True
        change = dict(plan.update(0.1, ME, OTHERS, have, avail))
        self.assertNotIn(pieces.BACKUP, change.values())
        self.assertTrue(plan.need_seeder)
        for i in mine:
            have[i] = True
        plan.update(0.2, ME, OTHERS, have, avail)
        # Once our own pieces are in, the seeder is left to the others.
        self.assertFalse(plan.need_seeder)

    def test_no_runner_up_pieces_over_http(self):
        # The web seeds stand in for the seeder: each piece from its owner
        # only, even when ours run out.
        self._assert_own_pieces_only(over_http=True)

    def test_no_runner_up_pieces_when_other_conductors_seed(self):
        # Other conductors' seeders serve the swarm: the owner of a piece
        # we rank second for may be fetching it from its own seeder.
        self._assert_own_pieces_only(shared=True)

    def test_over_http_own_pieces_come_before_those_peers_have(self):
        plan, have, avail, _p = _plan()
        mine = [i for i in range(N) if plan.rank(i) == 0]
        theirs = [i for i in range(N) if plan.rank(i) != 0]
        for i in theirs[:20]:
            avail[i] = 1
        change = dict(plan.update(0.1, ME, OTHERS, have, avail))
        self.assertEqual({pieces.NORMAL}, {change[i] for i in theirs[:20]})
        plan.over_http = True
        change = dict(plan.update(0.2, ME, OTHERS, have, avail))
        # A web seed could take blocks of these: they wait for ours, and
        # only they change.
        self.assertEqual({i: pieces.WAIT for i in theirs[:20]}, change)
        self.assertTrue(plan.need_seeder)
        for i in mine:
            have[i] = True
        change = dict(plan.update(0.3, ME, OTHERS, have, avail))
        # Ours are in: the rest comes from the peers that have it.
        self.assertEqual({pieces.NORMAL}, {change[i] for i in theirs[:20]})
        self.assertFalse(plan.need_seeder)

    def test_done_with_own_pieces_no_longer_needs_the_seeder(self):
        plan, have, avail, _p = _plan()
        _fetch_everything_ranked(plan, have)
        plan.update(0.1, ME, OTHERS, have, avail)
        self.assertFalse(plan.need_seeder)
        self.assertTrue(plan.active)

    def test_pieces_other_agents_have_come_from_them(self):
        plan, have, avail, _p = _plan()
        mine = [i for i in range(N) if plan.owner(i) == ME]
        for i in range(N):
            avail[i] = 1
        change = dict(plan.update(0.1, ME, OTHERS, have, avail))
        self.assertTrue(all(change[i] == pieces.NORMAL for i in mine))
        self.assertFalse(plan.need_seeder)

    def test_alone_everything_is_normal(self):
        plan, have, avail, prios = _plan(members=[])
        self.assertEqual({}, prios)
        self.assertTrue(plan.need_seeder)
        # Peers arrive: the plan starts...
        self.assertEqual(N, len(plan.update(0.1, ME, OTHERS, have, avail)))
        # ...and when they are gone again, everything is ours: [] resets.
        self.assertEqual([], plan.update(0.2, ME, [], have, avail))
        self.assertTrue(plan.active)

    def test_no_address_yet_means_alone(self):
        plan, _h, _a, prios = _plan(me=None)
        self.assertEqual({}, prios)
        self.assertTrue(plan.need_seeder)


class TestGrace(base.BaseTestCase):

    def test_stalled_plan_is_dropped_for_good(self):
        plan, have, avail, _p = _plan()
        _fetch_everything_ranked(plan, have)
        plan.update(1.0, ME, OTHERS, have, avail)
        self.assertFalse(plan.need_seeder)
        # Pieces keep arriving: the plan holds.
        arrived = [i for i in range(N) if not have[i]][0]
        have[arrived] = True
        self.assertEqual([(arrived, pieces.NORMAL)],
                         plan.update(2.5, ME, OTHERS, have, avail))
        self.assertTrue(plan.active)
        # Nothing for `grace` seconds (an owner died): back to normal for
        # every piece, the seeder included, and it stays that way.
        self.assertEqual([], plan.update(4.6, ME, OTHERS, have, avail))
        self.assertFalse(plan.active)
        self.assertTrue(plan.need_seeder)
        self.assertIsNone(plan.update(5.0, ME, OTHERS[:1], have, avail))


def _bounded_views(count):
    """Who each of ``count`` agents is connected to in a swarm that large.

    Every agent announces to the built-in tracker twice (as the swarm
    forms, then once everybody is in) asking for :data:`pieces.HANDOUT`
    peers, dials what it is handed, and is dialled by those that got it.
    """
    table = swarm_table.SwarmTable(interval=10)
    info_hash = bytes(range(20))
    table.publish([info_hash], 'image', size=N * 16384)
    agents = ['198.18.%d.%d' % (i // 200, 2 + i % 200) for i in range(count)]
    views = {a: set() for a in agents}
    full = 0
    for _round in range(2):
        for agent in agents:
            req = protocol.AnnounceRequest(
                info_hash=info_hash, peer_id=b'-IB0100-' + bytes(12),
                port=6881, uploaded=0, downloaded=0, left=N * 16384,
                event='', ip=agent, numwant=pieces.HANDOUT)
            _c, _i, handed = table.record(req)
            full += len(handed) == pieces.HANDOUT
            for peer in handed:
                views[agent].add(peer.ip)
                views[peer.ip].add(agent)
    return views, full


def _claims(views, partial):
    """Per piece, the agents that would ask the seeder for it."""
    claims = collections.defaultdict(set)
    for me, view in views.items():
        plan = pieces.PiecePlan(N)
        plan.partial = partial
        change = plan.update(0.0, me, sorted(view), [False] * N, [0] * N)
        for piece, prio in change:
            if prio == pieces.OWN:
                claims[piece].add(me)
    return claims


class TestBoundedViews(base.BaseTestCase):
    """300 agents, each seeing a bounded part of the swarm."""

    def setUp(self):
        super().setUp()
        self.views, self.full = _bounded_views(300)

    def test_views_are_bounded_and_the_agents_know_it(self):
        degrees = sorted(len(v) for v in self.views.values())
        # About two handouts each: its own, and the agents it is in the
        # handout of (more for the agents with the longest arcs of the
        # ring, and for the first to come).
        self.assertLessEqual(degrees[len(degrees) // 2], 3 * pieces.HANDOUT)
        self.assertLessEqual(degrees[-1], 4 * pieces.HANDOUT)
        # Once the swarm is larger than a handout, every reply is full:
        # that is how an agent learns to rank on the ring.
        self.assertGreaterEqual(self.full, 300)

    def test_on_the_ring_each_piece_leaves_the_seeder_about_once(self):
        claims = _claims(self.views, partial=True)
        # Not one piece without an agent fetching it from the seeder.
        self.assertEqual(N, len(claims))
        copies = sum(len(c) for c in claims.values()) / N
        self.assertLessEqual(copies, 1.1)

    def test_rendezvous_among_neighbours_would_fetch_pieces_many_times(self):
        # Why the ring: ranked among the agents it sees, every agent owns
        # what it ranks best in its neighbourhood.
        claims = _claims(self.views, partial=False)
        copies = sum(len(c) for c in claims.values()) / N
        self.assertGreater(copies, 2)

    def test_on_the_ring_runner_up_pieces_are_those_it_ranks_second(self):
        whole = ring.Ring(self.views)
        for me in sorted(self.views)[:5]:
            plan = pieces.PiecePlan(N, backup=N)
            plan.partial = True
            change = dict(plan.update(0.0, me, sorted(self.views[me]),
                                      [False] * N, [0] * N))
            ranks = [whole.rank(ring.piece_point(p), me, 3)
                     for p in range(N)]
            self.assertEqual({p for p in range(N) if ranks[p] == 0},
                             {p for p, v in change.items()
                              if v == pieces.OWN})
            self.assertEqual({p for p in range(N) if ranks[p] == 1},
                             {p for p, v in change.items()
                              if v == pieces.BACKUP})


def _waiting_on_others():
    """A plan whose agent has its own pieces and waits on the others'."""
    plan, have, avail, _prios = _plan()
    _fetch_everything_ranked(plan, have)
    plan.update(0.0, ME, OTHERS, have, avail)
    assert not plan.need_seeder
    return plan, have, avail, [i for i in range(N) if not have[i]]


class TestGraceWithBytes(base.BaseTestCase):

    def test_bytes_arriving_keep_the_plan(self):
        # 64 owners share the seeder's link: a piece can take seconds to
        # come whole while its bytes flow.
        plan, have, avail, _missing = _waiting_on_others()
        for second in range(1, 10):
            plan.update(float(second), ME, OTHERS, have, avail,
                        received=second * 1000)
        self.assertTrue(plan.active)

    def test_nothing_anywhere_yet_is_no_stall(self):
        # A large swarm: this agent owns no piece, and its neighbours have
        # none yet.
        plan = pieces.PiecePlan(1, grace=2.0, backup=0)
        have, avail = [False], [0]
        plan.update(0.0, ME, OTHERS, have, avail)
        self.assertFalse(plan.need_seeder)
        for second in range(1, 10):
            plan.update(float(second), ME, OTHERS, have, avail)
        self.assertTrue(plan.active)
        # Once a neighbour has the piece, nothing arriving is a stall.
        avail[0] = 1
        plan.update(10.0, ME, OTHERS, have, avail)
        self.assertEqual([], plan.update(12.5, ME, OTHERS, have, avail))
        self.assertFalse(plan.active)

    def test_a_slow_link_among_many_agents_waits_rounds(self):
        # 15 agents at 1 Mbit/s: a block each from the seeder's owners
        # takes about 2 s a round; the grace is three of them.
        plan, have, avail, missing = _waiting_on_others()
        avail[missing[0]] = 1
        plan.update(0.0, ME, OTHERS, have, avail, rate=125000)
        self.assertIsNone(plan.update(5.5, ME, OTHERS, have, avail,
                                      rate=0))
        self.assertTrue(plan.active)
        self.assertEqual([], plan.update(6.0, ME, OTHERS, have, avail))
        self.assertFalse(plan.active)
        # A fast link keeps the grace given.
        plan, have, avail, missing = _waiting_on_others()
        avail[missing[0]] = 1
        plan.update(0.0, ME, OTHERS, have, avail, rate=3e6)
        self.assertEqual([], plan.update(2.0, ME, OTHERS, have, avail))

    def test_waiting_on_the_seeder_for_its_own_pieces_is_no_stall(self):
        # 64 agents share the seeder's link: this agent's requests there
        # wait their turn for seconds while its neighbours already have
        # pieces; or the seeder is gone and no web seed is connected yet.
        # Either way the wait is not the owners' fault: the plan stays.
        plan, have, avail, _prios = _plan()
        avail[5] = 1
        plan.update(1.0, ME, OTHERS, have, avail, received=0)
        self.assertTrue(plan.need_seeder)
        for second in range(2, 12):
            self.assertIsNone(plan.update(float(second), ME, OTHERS, have,
                                          avail, received=0))
        self.assertTrue(plan.active)
        # Its own pieces are in: waiting now is waiting on the others.
        _fetch_everything_ranked(plan, have)
        have[5] = False
        plan.update(12.0, ME, OTHERS, have, avail, received=0)
        self.assertFalse(plan.need_seeder)
        self.assertIsNone(plan.update(13.0, ME, OTHERS, have, avail,
                                      received=0))
        self.assertEqual([], plan.update(14.5, ME, OTHERS, have, avail,
                                         received=0))
        self.assertFalse(plan.active)

    def test_no_bytes_for_the_grace_drops_it(self):
        plan, have, avail, missing = _waiting_on_others()
        avail[missing[0]] = 1    # something to fetch, which does not come
        plan.update(1.0, ME, OTHERS, have, avail, received=1000)
        self.assertEqual([], plan.update(3.5, ME, OTHERS, have, avail,
                                         received=1000))
        self.assertFalse(plan.active)


class TestHash(base.BaseTestCase):

    def test_ranks_do_not_depend_on_the_python_hash_seed(self):
        # Every agent must compute the same ranks: nothing may come from
        # Python's per-process string hashing.
        code = ('from ipa_extension import pieces; '
                'print([pieces.weight(p, pieces.member_key(a)) '
                'for p in range(50) for a in ("198.18.0.3", "fd00::5")])')
        outputs = set()
        for seed in ('1', '2'):
            env = dict(os.environ, PYTHONHASHSEED=seed)
            outputs.add(subprocess.check_output([sys.executable, '-c', code],
                                                env=env))
        self.assertEqual(1, len(outputs))
        self.assertNotEqual(pieces.member_key('198.18.0.3'),
                            pieces.member_key('198.18.0.4'))
