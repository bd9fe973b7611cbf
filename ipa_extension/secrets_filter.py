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

"""Keep the agent token out of ironic-python-agent's log.

IPA 13 writes the node's agent token to its log twice:

* every API request at INFO, with its query string, and the conductor's
  commands carry the token there (``GET /v1/commands/?agent_token=...``);
* the lookup reply at DEBUG (``Received lookup results: {... 'config':
  {'agent_token': ...}}``).

The token is what lets a caller command the agent, and the agent's log
leaves the node: the conductor collects it (``[agent]deploy_logs_collect``),
and it goes to the console and the journal. The agent side of ironic-bt
runs in IPA's process and is loaded before the lookup, so it masks secrets
in those loggers' records with oslo.utils' ``mask_password``, the masking
ironic and IPA use elsewhere.
"""

import logging

from oslo_utils import strutils

#: The logger IPA's request log middleware writes to.
REQUEST_LOGGER = 'ironic_python_agent.api'
#: The logger of IPA's lookup (and heartbeat) loop.
AGENT_LOGGER = 'ironic_python_agent.agent'


class MaskSecrets(logging.Filter):
    """Masks passwords and tokens (``agent_token=***``) in each record."""

    def filter(self, record):
        message = record.getMessage()
        masked = strutils.mask_password(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install(names=(REQUEST_LOGGER, AGENT_LOGGER)):
    """Add the filter to each logger of ``names``, once."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskSecrets) for f in logger.filters):
            logger.addFilter(MaskSecrets())
