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

"""The local cloud enables bittorrent, or says why it cannot."""

from unittest import mock

import pytest

from tests.lab import cloud


def test_auto_enables_bittorrent_and_direct():
    # This environment has ironic-bt installed next to ironic.
    assert cloud._pick_interfaces('auto') == (['direct', 'bittorrent'], None)


def test_auto_fails_when_bittorrent_cannot_load():
    # A cloud that fell back to direct would pass a demo without ever
    # running the product.
    with mock.patch.object(cloud, 'bittorrent_loadable', autospec=True,
                           return_value=(False, 'ImportError: no libtorrent')):
        with pytest.raises(cloud.CloudError) as e:
            cloud._pick_interfaces('auto')
    assert 'bittorrent deploy interface cannot load' in str(e.value)
    assert 'ImportError: no libtorrent' in str(e.value)
    assert '--interfaces direct' in str(e.value)


def test_direct_only_is_a_choice_with_a_note():
    enabled, note = cloud._pick_interfaces('direct')
    assert enabled == ['direct']
    assert 'bittorrent is not among the enabled deploy interfaces' in note
