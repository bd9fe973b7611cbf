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

"""The agent's ``bittorrent`` command extension.

``bittorrent.swarm_key`` makes a private key on the node and returns its
public key, for the conductor to certify (see :mod:`ipa_extension.keys`).
"""

from ironic_python_agent.extensions import base

from ipa_extension import keys


class BitTorrentExtension(base.BaseAgentExtension):

    @base.sync_command('swarm_key')
    def swarm_key(self):
        """Make a key for an SSL swarm; the private half stays here.

        :returns: ``{'public_key': PEM}``.
        """
        return {'public_key': keys.new_public_key()}
