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

"""Hardware types that accept the ``bittorrent`` deploy interface.

A hardware type accepts only the deploy interface classes it lists, so the
stock ``ipmi`` and ``redfish`` types refuse ours. These are the same types
with ``bittorrent`` listed first, which makes it their default deploy
interface whenever it is enabled.
"""

from ironic.drivers import ipmi
from ironic.drivers import redfish
from oslo_config import cfg

from ironic_bt import conf
from ironic_bt import deploy

CONF = cfg.CONF


class BitTorrentIPMIHardware(ipmi.IPMIHardware):
    """IPMI hardware type deploying with BitTorrent by default."""

    @property
    def supported_deploy_interfaces(self):
        """List of supported deploy interfaces."""
        return [deploy.BitTorrentDeploy] + super().supported_deploy_interfaces


class BitTorrentRedfishHardware(redfish.RedfishHardware):
    """Redfish hardware type deploying with BitTorrent by default."""

    def __init__(self):
        super().__init__()
        # ironic reads [<hardware type>]verify_ca: ours follows [redfish]
        # unless set (see ironic_bt.conf.REDFISH_GROUP).
        CONF.set_default('verify_ca', CONF.redfish.verify_ca,
                         group=conf.REDFISH_GROUP.name)

    @property
    def supported_deploy_interfaces(self):
        """List of supported deploy interfaces."""
        return [deploy.BitTorrentDeploy] + super().supported_deploy_interfaces
