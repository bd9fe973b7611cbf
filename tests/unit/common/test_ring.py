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

"""The ring that owns pieces in swarms too large to see whole.

The agents' side (a plan fed by the real tracker's handouts) is in
``tests/unit/agent/test_pieces.py``.
"""

import collections
import random

from ironic_bt.common import ring

MEMBERS = ['198.18.%d.%d' % (i // 200, 2 + i % 200) for i in range(300)]


def test_every_point_has_one_owner_and_shares_stay_within_bounds():
    r = ring.Ring(MEMBERS[:64])
    owners = collections.Counter(
        r.successors(ring.piece_point(p), 1)[0] for p in range(64 * 256))
    assert set(owners) == set(MEMBERS[:64])
    # VNODES points each: no member owns more than twice its share.
    assert max(owners.values()) < 2 * 256
    assert sum(owners.values()) == 64 * 256


def test_a_member_leaving_moves_only_its_own_pieces():
    r = ring.Ring(MEMBERS[:16])
    before = [r.successors(ring.piece_point(p), 1)[0] for p in range(4096)]
    r.remove(MEMBERS[3])
    after = [r.successors(ring.piece_point(p), 1)[0] for p in range(4096)]
    moved = [p for p in range(4096) if before[p] != after[p]]
    assert moved
    assert all(before[p] == MEMBERS[3] for p in moved)
    r.add(MEMBERS[3])
    assert before == [r.successors(ring.piece_point(p), 1)[0]
                      for p in range(4096)]


def test_knowing_its_predecessors_is_knowing_what_it_owns():
    whole = ring.Ring(MEMBERS)
    for me in random.Random(7).sample(MEMBERS, 20):
        view = ring.Ring([me] + whole.predecessors(me))
        for p in range(2048):
            point = ring.piece_point(p)
            owns = whole.successors(point, 1) == [me]
            assert (view.rank(point, me, 3) == 0) == owns, (me, p)


def test_a_missing_neighbour_widens_a_claim_and_never_orphans_a_piece():
    whole = ring.Ring(MEMBERS[:100])
    me = MEMBERS[10]
    preds = whole.predecessors(me)
    view = ring.Ring([me] + preds[1:])
    claimed = {p for p in range(4096)
               if view.rank(ring.piece_point(p), me, 3) == 0}
    owned = {p for p in range(4096)
             if whole.successors(ring.piece_point(p), 1) == [me]}
    assert owned < claimed


def test_predecessors_are_bounded_and_exclude_the_member():
    r = ring.Ring(MEMBERS)
    for me in MEMBERS[:10]:
        preds = r.predecessors(me)
        assert me not in preds
        assert 1 <= len(preds) <= ring.VNODES * ring.PREDECESSORS
    assert ring.Ring([MEMBERS[0]]).predecessors(MEMBERS[0]) == []
