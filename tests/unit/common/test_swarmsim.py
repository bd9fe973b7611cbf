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

"""The swarm simulator: the product's plan over a modelled wire."""

from tests.lab import swarmsim


def test_a_small_swarm_finishes_near_the_bound_with_one_copy():
    result = swarmsim.simulate(swarmsim.Config(
        nodes=8, pieces=128, rate_bps=25e6, latency=0.001))
    summary = result.summary()
    assert summary['done'] == 8
    # Nobody beats the wire, and the plan keeps the seeder near one copy.
    assert result.wire_bound / swarmsim.PAYLOAD <= min(result.finish)
    assert summary['max_over_bound'] < 1.5
    assert 1.0 <= summary['seeder_copies'] <= 1.3
    assert summary['partial_nodes'] == 0


def test_a_swarm_larger_than_a_handout_ranks_on_the_ring():
    result = swarmsim.simulate(swarmsim.Config(
        nodes=30, pieces=64, rate_bps=25e6, latency=0.001, handout=10))
    summary = result.summary()
    assert summary['done'] == 30
    assert summary['partial_nodes'] == 30
    # Connections stay bounded: about two handouts, not the swarm.
    assert summary['degree_max'] < 29
    assert summary['seeder_copies'] >= 1.0


def test_a_node_that_dies_does_not_stop_the_others():
    result = swarmsim.simulate(swarmsim.Config(
        nodes=6, pieces=64, rate_bps=25e6, latency=0.001,
        deaths={2: 0.1}))
    finished = [t for i, t in enumerate(result.finish) if i != 2]
    assert all(t is not None for t in finished)
    assert result.finish[2] is None


def test_seeder_slots_bound_the_nodes_the_seeder_sends_to():
    # The product's seeder sends to every owner at once (each gets its
    # share of the link, and no piece is whole until all are nearly):
    # the simulator models a seeder that sends to a few at a time.
    config = dict(nodes=40, pieces=64, rate_bps=25e6, latency=0.001)
    everyone = swarmsim.simulate(swarmsim.Config(**config))
    two = swarmsim.simulate(swarmsim.Config(seeder_slots=2, **config))
    assert everyone.seeder_served_max > 2
    assert two.seeder_served_max == 2
    assert all(t is not None for t in two.finish)
