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

"""A piece-level simulator of an ironic-bt swarm, for thousands of nodes.

The lab runs real agents up to the few dozen this machine holds; the
simulator predicts what 1,000 or 10,000 would do. It runs the product's own
decisions and models only the wire:

* **the tracker** is the product's :class:`~ironic_bt.tracker.protocol.
  SwarmTable`: every node announces to it when it starts and every
  ``interval`` seconds after, asking for :data:`~ipa_extension.pieces.
  HANDOUT` peers, and connects to what it is handed (connections go both
  ways);
* **the piece plan** is the product's :class:`~ipa_extension.pieces.
  PiecePlan`, one per node, updated every ``poll`` seconds (the writer's
  :attr:`~ipa_extension.writer.Tuning.poll_interval`) with what the node
  has and what its neighbours have; its priorities decide what a node
  requests, its ``need_seeder`` whether it stays connected to the seeder,
  a full handout makes it ``partial``, and its grace drops it;
* **the wire**: every host (the seeder too) has one link of ``rate``
  bytes/s each way (a quarter of it for a slow node), carrying payload at
  :data:`PAYLOAD` of the line rate (Ethernet, IP and TCP headers of full
  frames). Every request is a flow from a source to a node; a link is
  shared equally among its flows, and what one side cannot use goes to
  the other flows of the other side (one round of max-min filling). Time
  advances in steps of a fraction of a piece's time on the wire.

  A node asks for the pieces the plan ranks highest and, among those, the
  rarest among its neighbours (libtorrent's picker), from the least busy
  neighbour that has it, at most ``per_peer`` requests per connection. A
  piece can be passed on once it is whole (hash-checked pieces).
* **churn**: a node can die at a given time (its connections drop, its
  pieces are gone), or start late.

What it does not model: TCP's ramp-up and losses, CPU, the disk, the
read-back (a node is done when it has every piece).

``python -m tests.lab.swarmsim --nodes 1000 --pieces 256`` prints the
finish-time distribution and the seeder's upload; ``--validate
results.json`` replays a lab run (``tests.lab.bench``) and compares. See
doc/source/performance.rst, "Scale".
"""

import argparse
import dataclasses
import heapq
import json
import math
import random
import sys
import time

import numpy as np

from ipa_extension import pieces as plan_mod
from ironic_bt import seeder as seeder_mod
from ironic_bt.tracker import protocol
from ironic_bt.tracker import swarm_table
from tests.lab import net

#: Payload carried per byte on the wire: 1448 bytes of TCP payload (with
#: timestamps) in a 1514-byte Ethernet frame, which is what tbf charges.
PAYLOAD = 1448 / 1514

_SEEDER_IP = '198.19.255.254'
_INFO_HASH = bytes(range(20))


def node_ip(i):
    return '198.18.%d.%d' % (i // 250, 2 + i % 250)


@dataclasses.dataclass
class Config:
    nodes: int
    pieces: int = 256
    piece_size: int = 16384
    #: line rate of every link, bits/s.
    rate_bps: float = 25e6
    #: node index -> fraction of the line rate of its link.
    slow: dict = dataclasses.field(default_factory=dict)
    #: node index -> second at which it dies.
    deaths: dict = dataclasses.field(default_factory=dict)
    #: seconds over which nodes start (uniformly); 0: all at once.
    start_spread: float = 0.0
    #: the tracker's announce interval.
    interval: float = 5.0
    #: the writer's poll interval (the plan's cadence).
    poll: float = 0.1
    #: peers asked of the tracker.
    handout: int = plan_mod.HANDOUT
    #: requests in flight per connection between agents, at least (more
    #: when the round trip needs more to keep the link busy, as
    #: libtorrent's request queue grows with the rate); to the seeder,
    #: what the seeder lets each peer queue (``seeder.request_queue``).
    per_peer: int = 4
    #: requests in flight per node, over all its connections.
    inflight: int = 32
    #: peers an agent uploads to at once (libtorrent's
    #: ``unchoke_slots_limit``); 0: all (the product's setting).
    unchoke: int = 0
    #: nodes the seeder uploads to at once (its ``unchoke_slots_limit``);
    #: 0: all that ask. A node keeps its slot while it has requests queued
    #: at the seeder; the slot passes on ``seeder_handoff`` seconds after.
    seeder_slots: int = 0
    seeder_handoff: float = 0.0
    #: the plan's ``backup`` (runner-up pieces); None: the product's.
    backup: int = None
    #: one-way delay of a message, seconds (a request reaching the
    #: source, a "have" reaching the neighbours): the queues of the shaped
    #: links under load (ping took 97 ms across a busy 5 Mbit/s lab link).
    latency: float = 0.0
    #: time step, as a fraction of a piece's time on a full-rate link.
    step: float = 0.5
    seed: int = 1
    #: give up after this many times the wire bound.
    limit: float = 20.0


@dataclasses.dataclass
class Result:
    config: Config
    finish: list          # seconds, per node (None: never)
    seeder_bytes: int
    image_bytes: int
    wire_bound: float
    degree: list
    partial_nodes: int
    plans_dropped: int
    wall_seconds: float
    #: the most nodes the seeder sent to in one step.
    seeder_served_max: int = 0

    def summary(self):
        done = sorted(t for t in self.finish if t is not None)
        bound = self.wire_bound

        def q(frac):
            return done[min(len(done) - 1, int(frac * len(done)))]

        degrees = sorted(self.degree)
        return {
            'nodes': self.config.nodes,
            'pieces': self.config.pieces,
            'done': len(done),
            'wire_bound_s': round(bound, 3),
            'p50_s': round(q(0.5), 3) if done else None,
            'p99_s': round(q(0.99), 3) if done else None,
            'max_s': round(done[-1], 3) if done else None,
            'p50_over_bound': round(q(0.5) / bound, 3) if done else None,
            'p99_over_bound': round(q(0.99) / bound, 3) if done else None,
            'max_over_bound': round(done[-1] / bound, 3) if done else None,
            'seeder_copies': round(self.seeder_bytes / self.image_bytes, 3),
            'degree_median': degrees[len(degrees) // 2],
            'degree_max': degrees[-1],
            'partial_nodes': self.partial_nodes,
            'plans_dropped': self.plans_dropped,
            'wall_seconds': round(self.wall_seconds, 1),
        }


class Simulation:

    def __init__(self, config):
        self.c = c = config
        n, p = c.nodes, c.pieces
        self.n, self.p = n, p
        self.rng = random.Random(c.seed)
        self.now = 0.0
        line = c.rate_bps / 8 * PAYLOAD
        self.cap = np.full(n + 1, line)
        for i, frac in c.slow.items():
            self.cap[i] = line * frac
        self.seeder = n
        self.piece_time = c.piece_size / line
        self.peer_depth = max(c.per_peer, 2 + math.ceil(
            2 * c.latency * line / c.piece_size))
        self.seeder_depth = seeder_mod.request_queue(n)
        self.dt = c.step * self.piece_time
        self.have = np.zeros((n + 1, p), dtype=bool)
        self.have[n] = True
        # What the neighbours were told each node has ("have" messages
        # take ``latency`` to arrive).
        self.told = np.zeros((n, p), dtype=bool)
        self.events = []
        self._seq = 0
        # Per node, how many agent neighbours have each piece.
        self.avail = np.zeros((n, p), dtype=np.int32)
        self.requested = np.zeros((n, p), dtype=bool)
        self.prio = np.full((n, p), plan_mod.NORMAL, dtype=np.int8)
        gen = np.random.default_rng(c.seed)
        self.order = np.array([gen.permutation(p) for _i in range(n)])
        self.nbrs = [set() for _i in range(n)]
        self.seeder_on = np.zeros(n, dtype=bool)
        self.alive = np.zeros(n, dtype=bool)
        self.started = np.zeros(n, dtype=bool)
        self.done_at = [None] * n
        self.count = np.zeros(n, dtype=np.int64)
        self.received = np.zeros(n)
        self.start_at = [self.rng.uniform(0, c.start_spread)
                         for _i in range(n)]
        self.next_announce = np.array(self.start_at)
        self.next_poll = np.array([t + self.rng.uniform(0, c.poll)
                                   for t in self.start_at])
        self.done = np.zeros(n, dtype=bool)
        # Held until the tracker answers, as the writer does.
        plan_args = {} if c.backup is None else {'backup': c.backup}
        self.plans = [plan_mod.PiecePlan(p, held=True, **plan_args)
                      for _i in range(n)]
        self.tracker = swarm_table.SwarmTable(
            interval=int(c.interval), max_peers=max(2000, 2 * n),
            clock=lambda: self.now)
        self.tracker.publish([_INFO_HASH], 'image', size=p * c.piece_size)
        self.ip_index = {node_ip(i): i for i in range(n)}
        # Flows: id -> [source, destination, piece, bytes left]; and the
        # ids of the flows to and from each host.
        self._grow(1024)
        self.by_host = [set() for _i in range(n + 1)]
        # The peers each host is sending to.
        self.serving = [set() for _i in range(n + 1)]
        self.inflight = np.zeros(n, dtype=np.int32)
        # (source, destination) -> requests in flight.
        self.conn = {}
        self.seeder_bytes = 0
        self.dirty = set()
        # The nodes the seeder serves (seeder_slots), and when each slot
        # that fell idle can pass on.
        self.unchoked = set()
        self.slot_free_at = []
        self.seeder_served_max = 0

    def _grow(self, size):
        """Room for ``size`` flows in the flow arrays."""
        old = len(getattr(self, 'f_used', ()))
        for name, dtype in (('f_src', np.int64), ('f_dst', np.int64),
                            ('f_piece', np.int64), ('f_left', float),
                            ('f_start', float), ('f_used', bool)):
            array = np.zeros(size, dtype=dtype)
            if old:
                array[:old] = getattr(self, name)
            setattr(self, name, array)
        self.free_ids = list(range(size - 1, old - 1, -1)) + (
            self.free_ids if old else [])

    # -- the tracker and connections ----------------------------------------

    def _announce(self, i):
        c = self.c
        req = protocol.AnnounceRequest(
            info_hash=_INFO_HASH, peer_id=b'-IB0100-' + b'%012d' % i,
            ip=node_ip(i), port=6881, uploaded=0, downloaded=0,
            left=0 if self.done_at[i] is not None else 1,
            numwant=c.handout)
        _complete, _incomplete, handed = self.tracker.record(req)
        plan = self.plans[i]
        if plan.held:
            plan.release()
        if len(handed) >= c.handout:
            plan.partial = True
        for peer in handed:
            j = self.ip_index.get(peer.ip)
            if j is not None and self.alive[j]:
                self._connect(i, j)

    def _connect(self, i, j):
        if j in self.nbrs[i] or i == j:
            return
        self.nbrs[i].add(j)
        self.nbrs[j].add(i)
        self.avail[i] += self.told[j]
        self.avail[j] += self.told[i]
        self.dirty.add(i)
        self.dirty.add(j)

    def _start(self, i):
        self.started[i] = self.alive[i] = True
        # The seeder waits for the plan's first look (see PiecePlan.held).
        self.seeder_on[i] = False
        self.dirty.add(i)
        self._announce(i)

    def _die(self, i):
        self.alive[i] = False
        for j in self.nbrs[i]:
            self.nbrs[j].discard(i)
            self.avail[j] -= self.told[i]
            self.dirty.add(j)
        self.nbrs[i] = set()
        self._cancel(i)
        self.tracker.record(protocol.AnnounceRequest(
            info_hash=_INFO_HASH, peer_id=b'-IB0100-' + b'%012d' % i,
            ip=node_ip(i), port=6881, uploaded=0, downloaded=0, left=1,
            event='stopped'))

    def _cancel(self, host, other=None):
        """Drop the requests to and from ``host`` (with ``other`` only)."""
        for fid in list(self.by_host[host]):
            s, d, piece = (int(self.f_src[fid]), int(self.f_dst[fid]),
                           int(self.f_piece[fid]))
            if other is not None and other not in (s, d):
                continue
            self._forget(fid)
            self.requested[d, piece] = False
            self.dirty.add(d)

    def _forget(self, fid):
        s, d = int(self.f_src[fid]), int(self.f_dst[fid])
        self.f_used[fid] = False
        self.free_ids.append(fid)
        self.by_host[s].discard(fid)
        self.by_host[d].discard(fid)
        self.inflight[d] -= 1
        self.conn[(s, d)] -= 1
        if not self.conn[(s, d)]:
            self.serving[s].discard(d)

    # -- the product's plan ----------------------------------------------

    def _poll(self, i):
        plan = self.plans[i]
        if not plan.active or plan.held or self.done_at[i] is not None:
            return
        agents = [node_ip(j) for j in self.nbrs[i]]
        change = plan.update(self.now, node_ip(i) if agents else None,
                             agents, self.have[i].tolist(),
                             self.avail[i].tolist(),
                             received=int(self.received[i]),
                             rate=self.cap[i])
        if change == []:
            self.prio[i] = plan_mod.NORMAL
            self.dirty.add(i)
        elif change:
            idx, values = zip(*change)
            self.prio[i, list(idx)] = values
            self.dirty.add(i)
        if plan.need_seeder != self.seeder_on[i]:
            self.seeder_on[i] = plan.need_seeder
            if not plan.need_seeder:
                self._cancel(i, self.seeder)
            self.dirty.add(i)

    # -- requests -----------------------------------------------------------

    def _request(self, i, source, piece):
        if not self.free_ids:
            self._grow(2 * len(self.f_used))
        fid = self.free_ids.pop()
        self.f_src[fid] = source
        self.f_dst[fid] = i
        self.f_piece[fid] = piece
        self.f_left[fid] = self.c.piece_size
        self.f_start[fid] = self.now + self.c.latency
        self.f_used[fid] = True
        self.by_host[source].add(fid)
        self.by_host[i].add(fid)
        self.requested[i, piece] = True
        self.inflight[i] += 1
        self.conn[(source, i)] = self.conn.get((source, i), 0) + 1
        self.serving[source].add(i)

    def _fill(self, i):
        """Request what node ``i`` can get, as libtorrent would."""
        per = self.peer_depth
        wanted = ~(self.have[i] | self.requested[i]) & (self.prio[i] > 0)
        if not wanted.any():
            return
        # Priority first, then the rarest among the neighbours, then in
        # an order of its own (libtorrent shuffles the pieces of a
        # torrent once, so peers pick different ones among equals).
        score = ((self.prio[i].astype(np.int64) * 1_000_000
                  - self.avail[i]) * self.p + self.order[i])
        if self.seeder_on[i]:
            free = self.seeder_depth - self.conn.get((self.seeder, i), 0)
            if free > 0:
                cand = np.flatnonzero(wanted)
                best = cand[np.argsort(-score[cand], kind='stable')[:free]]
                for piece in best:
                    self._request(i, self.seeder, int(piece))
                    wanted[piece] = False
        cand = np.flatnonzero(wanted & (self.avail[i] > 0))
        if not len(cand):
            return
        room = self.c.inflight - self.inflight[i]
        if room <= 0:
            return
        order = cand[np.argsort(-score[cand], kind='stable')]
        free = {j: per - self.conn.get((j, i), 0) for j in self.nbrs[i]}
        unchoke = self.c.unchoke
        free = {j: f for j, f in free.items()
                if f > 0 and (not unchoke or i in self.serving[j]
                              or len(self.serving[j]) < unchoke)}
        told = self.told
        for piece in order.tolist():
            if not free or room <= 0:
                break
            sources = np.fromiter(free, dtype=np.int64, count=len(free))
            holders = sources[told[sources, piece]]
            if not len(holders):
                continue
            # The least busy of them (ties at random).
            busy = [self.conn.get((h, i), 0) for h in holders.tolist()]
            least = min(busy)
            j = self.rng.choice([h for h, b in zip(holders.tolist(), busy)
                                 if b == least])
            self._request(i, j, piece)
            room -= 1
            free[j] -= 1
            if not free[j]:
                del free[j]

    # -- the wire -----------------------------------------------------------

    def _seeder_choke(self):
        """Which of the nodes asking the seeder it serves now."""
        k = self.c.seeder_slots
        seeder = self.seeder
        for d in list(self.unchoked):
            if not self.conn.get((seeder, d)):
                self.unchoked.discard(d)
                self.slot_free_at.append(self.now + self.c.seeder_handoff)
        self.slot_free_at = [t for t in self.slot_free_at if t > self.now]
        room = k - len(self.unchoked) - len(self.slot_free_at)
        if room <= 0:
            return
        first = {}
        for fid in self.by_host[seeder]:
            d = int(self.f_dst[fid])
            if d not in self.unchoked:
                first[d] = min(first.get(d, math.inf), self.f_start[fid])
        for d in sorted(first, key=first.get)[:room]:
            self.unchoked.add(d)

    def _transfer(self):
        now = self.now
        used = self.f_used & (self.f_start <= now)
        if self.c.seeder_slots:
            self._seeder_choke()
            choked = used & (self.f_src == self.seeder)
            choked[choked] = ~np.isin(self.f_dst[choked],
                                      list(self.unchoked))
            used &= ~choked
        idx = np.flatnonzero(used)
        if not len(idx):
            return
        src = self.f_src[idx]
        dst = self.f_dst[idx]
        size = self.n + 1
        self.seeder_served_max = max(
            self.seeder_served_max,
            len(np.unique(dst[src == self.seeder])))
        n_up = np.bincount(src, minlength=size)
        n_dn = np.bincount(dst, minlength=size)
        cap = self.cap
        up_share = cap[src] / n_up[src]
        dn_share = cap[dst] / n_dn[dst]
        rate = np.minimum(up_share, dn_share)
        # One round of max-min filling: what a link leaves unused because
        # some of its flows are held back at their other end goes to its
        # other flows, as far as their other end lets them.
        left_up = cap - np.bincount(src, weights=rate, minlength=size)
        left_dn = cap - np.bincount(dst, weights=rate, minlength=size)
        at_src = up_share <= dn_share
        k_src = np.bincount(src[at_src], minlength=size)
        k_dst = np.bincount(dst[~at_src], minlength=size)
        extra = np.where(
            at_src,
            np.minimum(left_up[src] / np.maximum(k_src[src], 1),
                       left_dn[dst] / n_dn[dst]),
            np.minimum(left_dn[dst] / np.maximum(k_dst[dst], 1),
                       left_up[src] / n_up[src]))
        rate += np.maximum(extra, 0)
        moved = rate * self.dt
        self.received += np.bincount(dst, weights=moved,
                                     minlength=size)[:self.n]
        self.f_left[idx] -= moved
        for fid in idx[self.f_left[idx] <= 0].tolist():
            source, i, piece = (int(self.f_src[fid]), int(self.f_dst[fid]),
                                int(self.f_piece[fid]))
            self._forget(fid)
            self._arrive(source, i, piece)

    def _arrive(self, source, i, piece):
        self.requested[i, piece] = False
        if source == self.seeder:
            self.seeder_bytes += self.c.piece_size
        self.dirty.add(i)
        if self.have[i, piece]:
            return
        self.have[i, piece] = True
        self.count[i] += 1
        self._later(self.c.latency, self._tell, i, piece)
        if self.count[i] == self.p and self.done_at[i] is None:
            self.done_at[i] = self.now
            self.done[i] = True
            self.seeder_on[i] = False

    def _tell(self, i, piece):
        """Node ``i``'s "have" reaches its neighbours."""
        if not self.alive[i]:
            return
        self.told[i, piece] = True
        nbrs = self.nbrs[i]
        if nbrs:
            idx = np.fromiter(nbrs, dtype=np.int64, count=len(nbrs))
            self.avail[idx, piece] += 1
            # Those with nothing to do ask at once; the others when a
            # request of theirs ends.
            self.dirty.update(idx[self.inflight[idx] == 0].tolist())

    def _later(self, delay, fn, *args):
        self._seq += 1
        heapq.heappush(self.events, (self.now + delay, self._seq, fn, args))

    # -- the loop -----------------------------------------------------------

    def run(self):
        c = self.c
        wall = time.monotonic()
        bound = c.pieces * c.piece_size * 8 / c.rate_bps
        deaths = sorted((t, i) for i, t in c.deaths.items())
        order = sorted(range(self.n), key=lambda i: self.start_at[i])
        pending = 0
        while self.now < c.limit * bound + c.start_spread:
            self.now += self.dt
            now = self.now
            while pending < self.n and self.start_at[order[pending]] <= now:
                self._start(order[pending])
                pending += 1
            while deaths and deaths[0][0] <= now:
                self._die(deaths.pop(0)[1])
            while self.events and self.events[0][0] <= now:
                _t, _s, fn, args = heapq.heappop(self.events)
                fn(*args)
            for i in np.flatnonzero(self.alive
                                    & (self.next_announce <= now)).tolist():
                self.next_announce[i] = now + c.interval
                self._announce(i)
            for i in np.flatnonzero(self.alive
                                    & (self.next_poll <= now)).tolist():
                self.next_poll[i] = now + c.poll
                self._poll(i)
            dirty, self.dirty = self.dirty, set()
            for i in dirty:
                if self.alive[i] and self.done_at[i] is None:
                    self._fill(i)
            self._transfer()
            if pending == self.n and not (self.alive & ~self.done).any():
                break
        return Result(
            config=c, finish=list(self.done_at),
            seeder_bytes=self.seeder_bytes,
            seeder_served_max=self.seeder_served_max,
            image_bytes=c.pieces * c.piece_size, wire_bound=bound,
            degree=[len(s) for s in self.nbrs],
            partial_nodes=sum(p.partial for p in self.plans),
            plans_dropped=sum(not p.active for p in self.plans),
            wall_seconds=time.monotonic() - wall)


def simulate(config):
    return Simulation(config).run()


def _lab_runs(path):
    """The bittorrent runs of a lab benchmark's results.json.

    (nodes, image size, piece size, rate, per-node seconds, seeder bytes).
    """
    with open(path) as f:
        report = json.load(f)
    cfg = report['config']
    piece = report['torrent'].get('piece_size') or 16384
    for run in report['runs']:
        bt = run.get('bittorrent')
        # Every node verified the image (a process that then failed to
        # exit still counts: its times are measured).
        if not bt or not all(n.get('seconds') for n in bt['nodes']):
            continue
        yield (run['nodes'], cfg['image_size'], piece,
               cfg['rate_mbit'] * 1e6,
               [node['seconds'] for node in bt['nodes']],
               bt['seeder_wire_tx_bytes'])


#: The one-way delay of the lab's busy links: the longest a packet waits in
#: the queue of a shaped link (tests.lab.net; ping took 30-124 ms, 83 on
#: average, across a busy 1 Mbit/s lab link, which crosses two of them).
LAB_LATENCY = net.TBF_LATENCY_MS / 1000


def validate(path, out=sys.stdout):
    """Simulate the bittorrent runs of a lab benchmark; compare."""
    rows = []
    for nodes, size, piece, rate, seconds, seeder in _lab_runs(path):
        result = simulate(Config(nodes=nodes, pieces=size // piece,
                                 piece_size=piece, rate_bps=rate,
                                 latency=LAB_LATENCY))
        s = result.summary()
        lab = sorted(seconds)
        row = {
            'nodes': nodes,
            'lab_p50_s': lab[len(lab) // 2], 'sim_p50_s': s['p50_s'],
            'lab_max_s': lab[-1], 'sim_max_s': s['max_s'],
            # The lab counts the seeder's bytes on the wire, headers
            # included.
            'lab_seeder_copies': round(seeder * PAYLOAD / size, 3),
            'sim_seeder_copies': s['seeder_copies'],
        }
        row['max_error'] = round(s['max_s'] / lab[-1] - 1, 3)
        row['p50_error'] = round(s['p50_s'] / row['lab_p50_s'] - 1, 3)
        rows.append(row)
        print(json.dumps(row), file=out, flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m tests.lab.swarmsim',
                                description=__doc__.splitlines()[0])
    p.add_argument('--nodes', type=lambda v: [int(x) for x in v.split(',')],
                   default=[1000])
    p.add_argument('--pieces', type=int, default=256)
    p.add_argument('--piece-size', type=int, default=16384)
    p.add_argument('--rate-mbit', type=float, default=25)
    p.add_argument('--slow', type=float, default=0.0,
                   help='fraction of nodes on a link at a quarter rate')
    p.add_argument('--die', type=float, default=0.0,
                   help='fraction of nodes that die at half the wire bound')
    p.add_argument('--start-spread', type=float, default=0.0)
    p.add_argument('--handout', type=int, default=plan_mod.HANDOUT)
    p.add_argument('--latency', type=float, default=0.0001,
                   help='one-way delay of a message, seconds (default: '
                        '0.1 ms, a data-centre network)')
    p.add_argument('--seeder-slots', type=int, default=0,
                   help='nodes the seeder sends to at once (default: all)')
    p.add_argument('--seeder-handoff', type=float, default=0.0,
                   help='seconds a freed seeder slot takes to pass on')
    p.add_argument('--unchoke', type=int, default=0,
                   help='peers each agent uploads to at once (default: all)')
    p.add_argument('--no-runner-ups', action='store_true',
                   help='owners only: no runner-up pieces from the seeder')
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--validate', metavar='RESULTS_JSON',
                   help='replay the bittorrent runs of a lab benchmark')
    p.add_argument('--output', metavar='JSON')
    args = p.parse_args(argv)
    if args.validate:
        rows = validate(args.validate)
        if args.output:
            with open(args.output, 'w') as f:
                json.dump(rows, f, indent=1)
        return 0
    results = []
    for n in args.nodes:
        rng = random.Random(args.seed)
        slow = {i: 0.25 for i in rng.sample(range(n), int(args.slow * n))}
        bound = args.pieces * args.piece_size * 8 / (args.rate_mbit * 1e6)
        die = {i: bound / 2
               for i in rng.sample(range(n), int(args.die * n))}
        config = Config(nodes=n, pieces=args.pieces,
                        piece_size=args.piece_size,
                        rate_bps=args.rate_mbit * 1e6, slow=slow, deaths=die,
                        start_spread=args.start_spread, latency=args.latency,
                        handout=args.handout, seed=args.seed,
                        seeder_slots=args.seeder_slots,
                        seeder_handoff=args.seeder_handoff,
                        unchoke=args.unchoke,
                        backup=0 if args.no_runner_ups else None)
        result = simulate(config)
        s = result.summary()
        if slow:
            fast = [t for i, t in enumerate(result.finish)
                    if i not in slow and t is not None]
            s['fast_max_over_bound'] = round(max(fast) / bound, 3)
            s['slow_max_over_bound'] = round(
                max(result.finish[i] for i in slow) / bound, 3)
        s['finish'] = result.finish
        results.append(s)
        print(json.dumps({k: v for k, v in s.items() if k != 'finish'}),
              flush=True)
    if args.output:
        with open(args.output, 'w') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
