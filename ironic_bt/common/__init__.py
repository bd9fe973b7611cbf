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

"""What the conductor side and the agent side share.

The torrent format (:mod:`.torrent`), the libtorrent session settings both
sides join swarms with (:mod:`.swarm`), the swarm authority's certificates
and sealing (:mod:`.certs`), the tracker's announce and publication keys
(:mod:`.publication`) and the translation markers (:mod:`.i18n`). Nothing
here imports ironic or ironic-python-agent, and ``tox -e pep8`` holds both
sides to importing only this package of each other (see ``.importlinter``).
"""
