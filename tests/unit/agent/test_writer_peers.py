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

"""The writer refuses a peer it cannot dial, naming it."""

import pytest

from ipa_extension import errors
from ipa_extension import writer


@pytest.mark.parametrize('peer', ['198.18.0.1', '198.18.0.1:x',
                                  '198.18.0.1:0', ':6881', '[::1]:70000'])
def test_bad_peer_is_refused_naming_it(peer):
    with pytest.raises(errors.DownloadError) as e:
        writer._parse_peer(peer)
    assert 'Peer "%s" is not HOST:PORT.' % peer in str(e.value)


def test_peer_forms():
    assert writer._parse_peer('198.18.0.1:6881') == ('198.18.0.1', 6881)
    assert writer._parse_peer('[fd00::1]:6881') == ('fd00::1', 6881)
