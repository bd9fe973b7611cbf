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

"""Share the seeder's upload among the agents: each piece leaves it once.

With plain rarest-first every agent asks the conductor's seeder for the
pieces nobody else has yet. An agent cannot see what the others have
*requested*, only what they *have*, so requests queued at the seeder
collide; and an agent whose rare pieces are all requested fills its
connection to the seeder with pieces other agents could give it. For 16
nodes the seeder's link -- the one link every byte has to cross once --
carried 1.3 to 1.6 times the image.

The agents agree on who fetches what instead, without talking about it:
every agent ranks the agents it is connected to (itself included) for every
piece by a hash of (piece, member address), and the highest rank owns the
piece (rendezvous hashing: a member joining or leaving moves only its own
share). For the pieces it is missing, an agent

* asks first for those it owns that no other agent has (priority 7): they
  can only come from the seeder;
* takes those some other agent has (priority 4), from whoever has it;
* leaves alone (priority 0) those it does not own that only the seeder has:
  their owner is fetching them and will have them a moment later.

Owners do not all get the same share of the seeder's link (TCP flows are
not equally fast), and libtorrent fills every free request slot on the
connection to the seeder with whatever piece is rarest, even one another
agent could give. So when fewer than ``backup`` of its own pieces are left,
an agent also asks the seeder (priority 6) for the pieces it ranks second
for, then third: it helps the owners that are behind, and its requests keep
going to pieces nobody has yet. Once nothing it ranks is left to fetch, the
agent does not need the seeder any more and leaves its upload to the agents
that do (the caller disconnects from it).

Views of the swarm can differ (an agent just joined, a connection is
missing) and an owner can die, so the plan never blocks a download: when
nothing arrived for ``grace`` seconds, it is dropped for good and the agent
fetches everything missing from anyone, the seeder included. Pieces of a
member that disconnects are re-owned by the others at once.

A swarm larger than the tracker's peer list (:data:`HANDOUT` peers) is
not one an agent can see whole: each agent is connected to its handout and
to the agents that got it in theirs, a bounded number. Rendezvous hashing
among the agents one sees would make every agent the owner of the pieces
it ranks best among its neighbours, and the seeder would send each piece
once per neighbourhood. So once a tracker answers with a full peer list
(``partial``), an agent ranks on the ring instead
(:mod:`ironic_bt.common.ring`): a piece belongs to the first member
clockwise from it, which an agent can tell from the members just before
its own points, and the tracker puts those first in every handout. No
piece is left without an owner when a neighbour is missing: the agent
then claims a wider arc, and the piece is fetched twice. The runner-up
pieces (``backup``) are those it ranks second for, which it can tell
from the second predecessors the tracker hands out too.

This module is pure logic, so it is tested without libtorrent.
"""

import array

from ironic_bt.common import ring as ring_

OWN = 7
BACKUP = 6
NORMAL = 4
WAIT = 0

#: Peers a tracker hands out per announce, and so the peers an agent asks
#: for (libtorrent's ``num_want``): a reply that full means the swarm is
#: larger than what the agent sees (the built-in tracker's default is the
#: same, :data:`ironic_bt.tracker.protocol.DEFAULT_NUMWANT`).
HANDOUT = 50

member_key = ring_.member_key
weight = ring_.weight


#: Rounds of blocks a waiting agent allows the agents it waits on.
ROUNDS = 3
#: The size of a request (libtorrent's block).
BLOCK = 16384


def rounds(agents, rate):
    """Seconds for :data:`ROUNDS` rounds of a block to each of ``agents``.

    An agent's upload, about as fast as its peers' download, serves the
    requests of its peers in turn, a block each: at ``rate`` bytes/s among
    ``agents`` peers it comes back to a given peer once a round.
    """
    return ROUNDS * agents * BLOCK / rate


class PiecePlan:
    """Piece priorities for one agent, updated from what it sees.

    :param num_pieces: pieces in the torrent.
    :param grace: seconds without a new piece or byte after which the plan is
        dropped and everything missing is fetched from anyone. It runs
        only once the agent needs no seed any more (its own pieces are in)
        and waits on pieces other agents own: before that it is waiting
        its turn at the seeder, or for the seeder to be reachable, not on
        the plan, and dropping the plan would only queue more requests
        there. With 64 agents at 1 Mbit/s the seeder's link gives each
        owner a block every 8 s or so, and the agents' own loops fall
        seconds behind on two cores: half the agents took that wait for a
        stall and dropped the plan, and the seeder sent 1.9 copies of the
        image.
    :param backup: when fewer than this many of its own pieces are left to
        fetch from the seeder, an agent also fetches pieces it ranks second
        (then third) for, so that its requests to the seeder keep going to
        pieces nobody has yet.
    """

    #: ranks kept per piece: owner, then two runners-up.
    DEPTH = 3

    def __init__(self, num_pieces, grace=2.0, backup=16, held=False):
        self.num_pieces = num_pieces
        self.grace = grace
        self.backup = backup
        self.active = True
        #: whether the agent waits for the tracker's first answer before
        #: using the seeder (no priorities meanwhile; see :meth:`release`).
        #: Before it knows the swarm, an agent can only
        #: ask the seeder for whatever piece; with N agents that is N times
        #: the requests the seeder lets each queue, mostly duplicates (200
        #: nodes, 256 pieces, two requests each: 1.5 copies of the image,
        #: in the simulator).
        self.held = held
        #: whether this agent still needs the seeder.
        self.need_seeder = True
        #: whether the pieces only a seed has come over HTTP from web seeds
        #: (the seeder is gone). Then an agent fetches only the pieces it
        #: owns: no runner-up pieces (see ``backup``), since a piece
        #: fetched twice costs a whole response and the seed's link is all
        #: there is; and the pieces other agents have wait until its own
        #: are in, since libtorrent lets a web seed take the free blocks of
        #: any piece being downloaded (once more pieces are partial than
        #: 1.5 per peer), which fetched 6-22 % of the missing bytes twice.
        self.over_http = False
        #: whether other conductors' seeders serve the swarm too. Then no
        #: runner-up pieces either: the owner of a piece may be another
        #: conductor's node, fetching it from its own seeder at the same
        #: moment, so a runner-up's copy from ours is a second one (two
        #: conductors, six nodes: the seeders sent 1.39 copies without
        #: runner-ups against 1.53-1.60 with them, same request queue).
        self.shared = False
        #: whether this agent sees only part of the swarm (a tracker
        #: handed out a sample of it): rank on the ring, no runner-ups.
        #: Once set, it stays: ownership must not flap as views change.
        self.partial = False
        self._ring = None     # the ring the ranks were computed on
        self._weight_cache = {}  # address -> per-piece weights
        self._me = None
        self._members = set()
        self._top = None      # per piece: [(weight, address)], best first
        self._rank = None     # per piece: our rank, DEPTH if below
        self._level = 0
        self._prios = None
        self._missing = None
        self._received = 0
        self._peak_rate = 0
        self.waited = grace
        self._progress_at = None

    def _weights(self, address):
        """Every piece's weight for ``address``, computed once per member.

        Members come and go all the time in a large swarm (an agent that
        leaves our requests waiting 1.5 s is out until it sends again), and
        hashing every piece for every member at each change took a third
        of an agent's CPU with 32 agents.
        """
        weights = self._weight_cache.get(address)
        if weights is None:
            key = member_key(address)
            weights = array.array('Q', (weight(piece, key)
                                        for piece in range(self.num_pieces)))
            self._weight_cache[address] = weights
        return weights

    def _assign(self, members, me):
        """Rank ``members`` (a set of addresses) for every piece."""
        if self.partial:
            self._assign_on_ring(members, me)
            return
        depth = self.DEPTH
        if self._top is None or self._ring is not None:
            self._top = [[] for _i in range(self.num_pieces)]
            added, left = members, set()
        else:
            added, left = members - self._members, self._members - members
        top = self._top
        if left:
            # Rank again only the pieces a member that left was ranked for.
            # (Those that came are ranked below, like for every piece.)
            stay = [(self._weights(a), a)
                    for a in sorted(members & self._members)]
            for piece, ranks in enumerate(top):
                if any(a in left for _w, a in ranks):
                    ranks[:] = sorted(((w[piece], a) for w, a in stay),
                                      reverse=True)[:depth]
        for address in sorted(added):
            weights = self._weights(address)
            for piece, ranks in enumerate(top):
                w = weights[piece]
                if len(ranks) < depth or w > ranks[-1][0]:
                    ranks.append((w, address))
                    ranks.sort(reverse=True)
                    del ranks[depth:]
        self._rank = [next((i for i, (_w, a) in enumerate(ranks) if a == me),
                           depth) for ranks in top]
        self._ring = None
        self._me = me
        self._members = set(members)

    def _assign_on_ring(self, members, me):
        ring = ring_.Ring(members)
        depth = self.DEPTH
        self._top = None
        self._ring = ring
        known = ring_.PREDECESSORS
        ranks = [ring.rank(ring_.piece_point(piece), me, known)
                 for piece in range(self.num_pieces)]
        # Past the predecessors it was handed, an agent cannot tell its
        # rank: below the ones it keeps.
        self._rank = [r if r < known else depth for r in ranks]
        self._me = me
        self._members = set(members)

    def owner(self, piece):
        if self._ring is not None:
            return self._ring.successors(ring_.piece_point(piece), 1)[0]
        return self._top[piece][0][1] if self._top else None

    def rank(self, piece):
        """Our rank for ``piece``: 0 if we own it."""
        return self._rank[piece] if self._rank else None

    def update(self, now, me, agents, have, availability, received=None,
               rate=None):
        """New priorities, or None when they have not changed.

        :param now: a monotonic time in seconds.
        :param me: this agent's address as its peers see it, or None when
            not known yet (no connection).
        :param agents: addresses of the connected agents (not the seeder).
        :param have: per piece, whether this agent has it.
        :param availability: per piece, how many connected peers other than
            the seeder have it.
        :param received: payload bytes received so far, if known. Bytes
            arriving are progress too: in a large swarm the seeder's link
            is shared by many owners, and a piece from it can take longer
            than ``grace`` without anything being wrong (64 agents at
            5 Mbit/s: about 3 s for the first).
        :param rate: this agent's download rate (bytes/s), if known. On a
            slow link among many agents, the last pieces of an owner come
            from the seeder a block per round of its owners (64 agents at
            1 Mbit/s: 8 s a round), and the agents waiting for them see
            nothing arrive meanwhile. So the grace is at least
            :func:`rounds` at the fastest rate seen (never under
            ``grace``).
        :returns: a list of (piece, priority) for the pieces whose priority
            changed, [] when every piece must go back to the normal
            priority, or None for no change.
        """
        if not self.active or self.held:
            return None
        self._peak_rate = max(self._peak_rate, rate or 0)
        grace = self.grace
        if self._peak_rate:
            grace = max(grace, rounds(len(agents), self._peak_rate))
        #: the grace of the last update (see ``rate``).
        self.waited = grace
        missing = sum(1 for h in have if not h)
        if (self._missing is None or missing < self._missing
                or (received or 0) > self._received or self.need_seeder
                or missing == len(have) and not any(availability)):
            # Something arrived; or we still wait on a seed (see
            # ``grace``); or nothing is there to arrive yet: in a swarm
            # larger than the image has pieces most agents own none, and
            # wait for the first pieces to come to their neighbours.
            self._missing, self._progress_at = missing, now
            self._received = received or 0
        elif now - self._progress_at >= grace:
            # Nothing arrived for a while: an owner may be gone, or views
            # differ. Fetch the rest from anyone.
            return self._stop()
        if me is None or not agents:
            # Alone with the seeder (for now): everything is ours.
            self.need_seeder = True
            return self._normal()
        members = set(agents)
        members.add(me)
        if (members != self._members or me != self._me
                or self.partial != (self._ring is not None)):
            self._assign(members, me)
        rank = self._rank
        # Pieces only the seeder has, by our rank for them.
        counts = [0] * (self.DEPTH + 1)
        for piece in range(self.num_pieces):
            if not (have[piece] or availability[piece]):
                counts[rank[piece]] += 1
        backups = not (self.over_http or self.shared)
        # On the ring, the ranks an agent knows: those of the predecessors
        # the tracker hands out.
        depth = ring_.PREDECESSORS if self.partial else self.DEPTH
        level = self._level if backups else 0
        while (backups and level + 1 < depth
               and sum(counts[:level + 1]) < self.backup):
            # Our own pieces run out: rather than leave our requests to the
            # seeder idle (libtorrent would fill them with pieces other
            # agents can give us), help the owners that have more left.
            level += 1
        self._level = level
        self.need_seeder = sum(counts[:level + 1]) > 0
        # Pieces peers have, once ours are in (see over_http).
        later = WAIT if self.over_http and counts[0] else NORMAL
        prios = []
        for piece in range(self.num_pieces):
            if have[piece]:
                prios.append(NORMAL)
            elif availability[piece]:
                prios.append(later)
            elif rank[piece] == 0:
                prios.append(OWN)
            elif rank[piece] <= level:
                prios.append(BACKUP)
            else:
                prios.append(WAIT)
        old = self._prios
        self._prios = prios
        if old is None:
            return list(enumerate(prios))
        changed = [(i, p) for i, (p, q) in enumerate(zip(prios, old))
                   if p != q]
        return changed or None

    def release(self):
        """The tracker answered (or never will): plan from now on."""
        self.held = False

    def _normal(self):
        had_plan = self._prios is not None
        self._prios = None
        return [] if had_plan else None

    def _stop(self):
        self.active = False
        self.need_seeder = True
        return self._normal()
