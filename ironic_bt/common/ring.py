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

"""Who owns a piece, computed alike by every agent and by the tracker.

Two rankings of a swarm's members (agents, named by their address) for
every piece, both pure functions of the addresses, so that agents agree
without talking:

* **rendezvous** (highest random weight): the member with the highest
  ``weight(piece, member_key(address))`` owns the piece. Shares are even,
  but an agent must see every member to know whether it owns a piece: it
  is used while an agent is connected to the whole swarm.
* **the ring** (consistent hashing): every member has :data:`VNODES`
  points on a 64-bit ring, every piece one point, and a piece is owned by
  the first member clockwise from it, then ranked by the next distinct
  members. An agent owns the pieces between its points and their
  predecessors, so it needs to see only the members just before its own
  points: the tracker hands those out first (:meth:`Ring.predecessors`),
  then members at pseudo-random points of its own (:meth:`Ring.fingers`):
  the same at every announce, so that an agent's connections stay bounded
  while the swarm grows, and a random graph, through which pieces spread
  in a few hops. A member it does not see
  can only make it claim more, never less: every piece keeps its owner,
  and a missed neighbour costs a second copy from the seeder, not a stall.

Changing any constant here changes who fetches what: agents of two
versions would fetch pieces twice (``tests/unit/common/test_contracts.py``
pins them).
"""

import bisect
import zlib

_M64 = (1 << 64) - 1

#: Points of each member on the ring: the share of a member is the sum of
#: VNODES arcs, so shares vary by about 1/sqrt(VNODES) (a quarter for 16).
VNODES = 16

#: Predecessors handed out for each point of a member (see
#: :meth:`Ring.predecessors`): knowing the first is knowing which pieces it
#: owns; the second, which it is the runner-up for (the pieces it helps
#: the owners with once its own are in, see
#: :class:`ipa_extension.pieces.PiecePlan`).
PREDECESSORS = 2


def member_key(address):
    """A stable 64-bit key for a member's address (same on every agent)."""
    return zlib.crc32(address.encode('utf-8')) * 0x9E3779B97F4A7C15 & _M64


def weight(piece, key):
    """The rank of ``piece`` for the member with ``key`` (splitmix64)."""
    x = (piece * 0xBF58476D1CE4E5B9 + key) & _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


#: The key of the pieces' own points on the ring.
_PIECE_KEY = member_key('ironic-bt piece')
#: The key of the points where an agent's fingers are (see Ring.fingers).
_FINGER_KEY = member_key('ironic-bt finger')


def points(address):
    """The member's points on the ring."""
    key = member_key(address)
    return [weight(v, key) for v in range(VNODES)]


def piece_point(piece):
    """The piece's point on the ring."""
    return weight(piece, _PIECE_KEY)


class Ring:
    """Members on the ring: add, remove, and rank them for a point.

    Adding or removing a member costs O(VNODES x members) at worst (a list
    insertion); ranking a point O(log members).
    """

    def __init__(self, members=()):
        self._points = []     # sorted (point, address)
        self._members = set()
        for address in members:
            self.add(address)

    def __len__(self):
        return len(self._members)

    def __contains__(self, address):
        return address in self._members

    def add(self, address):
        if address in self._members:
            return
        self._members.add(address)
        for point in points(address):
            bisect.insort(self._points, (point, address))

    def remove(self, address):
        if address not in self._members:
            return
        self._members.discard(address)
        for point in points(address):
            i = bisect.bisect_left(self._points, (point, address))
            del self._points[i]

    def successors(self, point, count):
        """The first ``count`` distinct members clockwise from ``point``.

        The first is the owner of a piece at ``point``.
        """
        found = []
        ring = self._points
        n = len(ring)
        if not n:
            return found
        count = min(count, len(self._members))
        i = bisect.bisect_left(ring, (point, ''))
        for step in range(n):
            address = ring[(i + step) % n][1]
            if address not in found:
                found.append(address)
                if len(found) == count:
                    break
        return found

    def rank(self, point, address, depth):
        """``address``'s rank for a piece at ``point``.

        0 if it owns it, ``depth`` if it is not among the first ``depth``
        members.
        """
        ahead = self.successors(point, depth)
        return ahead.index(address) if address in ahead else depth

    def fingers(self, address, count, exclude=()):
        """``count`` other members, at points derived from ``address``.

        As good as random, and the same at every announce while the
        members stay the same. An agent dials what it is handed: random
        peers at every announce would grow its connections with every
        announce; these stay put, so an agent keeps about twice a handout
        of connections however large the swarm (its own fingers, and the
        agents whose fingers it is).
        """
        key = member_key(address) ^ _FINGER_KEY
        found = []
        skip = set(exclude)
        skip.add(address)
        count = min(count, len(self._members) - len(skip & self._members))
        ring = self._points
        n = len(ring)
        j = 0
        while len(found) < count and j < 8 * count + VNODES:
            i = bisect.bisect_left(ring, (weight(j, key), ''))
            other = ring[i % n][1]
            if other not in skip:
                skip.add(other)
                found.append(other)
            j += 1
        return found

    def predecessors(self, address, count=PREDECESSORS):
        """The distinct members just before ``address``'s points.

        For each of its points, the ``count`` members found first going
        counter-clockwise (not ``address`` itself), nearest first: what
        ``address`` must see to rank itself right for the pieces before
        that point.
        """
        ring = self._points
        n = len(ring)
        found = []
        for point in points(address):
            i = bisect.bisect_left(ring, (point, address))
            seen = []
            for step in range(1, n):
                other = ring[(i - step) % n][1]
                if other != address and other not in seen:
                    seen.append(other)
                    if len(seen) == count:
                        break
            found.extend(a for a in seen if a not in found)
        return found
