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

"""Keep the agent token out of ironic-python-agent's request log.

IPA 13 logs every API request at INFO with its query string, and the
conductor's commands carry the node's agent token there
(``GET /v1/commands/?agent_token=...``). The token is what lets a caller
command the agent, and the agent's log leaves the node: the conductor
collects it (``[agent]deploy_logs_collect``), and it goes to the console
and the journal. The agent side of ironic-bt runs in IPA's process, so
when IPA loads it, it masks secrets in that logger's records with
oslo.utils' ``mask_password``, the masking ironic and IPA use elsewhere.
"""

import logging

from oslo_utils import strutils

#: The logger IPA's request log middleware writes to.
REQUEST_LOGGER = 'ironic_python_agent.api'


class MaskSecrets(logging.Filter):
    """Masks passwords and tokens (``agent_token=***``) in each record."""

    def filter(self, record):
        message = record.getMessage()
        masked = strutils.mask_password(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install(name=REQUEST_LOGGER):
    """Add the filter to the logger ``name``, once."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, MaskSecrets) for f in logger.filters):
        logger.addFilter(MaskSecrets())
