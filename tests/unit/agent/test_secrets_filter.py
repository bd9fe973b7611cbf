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

"""IPA's own request log, with ironic-bt loaded, holds no agent token."""

import logging

from ironic_python_agent.api import request_log

from ipa_extension import hardware_manager  # noqa: F401 (installs it)
from ipa_extension import secrets_filter

TOKEN = 'hZ3v9Qe_SecretAgentToken-4242'


def _app(environ, start_response):
    start_response('200 OK', [('Content-Type', 'application/json')])
    return [b'[]']


def _request(query):
    environ = {'REQUEST_METHOD': 'GET', 'PATH_INFO': '/v1/commands/',
               'QUERY_STRING': query, 'REMOTE_ADDR': '198.18.0.1'}
    return request_log.RequestLogMiddleware(_app)(environ,
                                                  lambda *args: None)


def test_request_log_masks_the_agent_token(caplog):
    # The conductor's poll of the agent's commands, as IPA 13 logs it.
    with caplog.at_level(logging.INFO, logger=secrets_filter.REQUEST_LOGGER):
        assert _request('agent_token=%s' % TOKEN) == [b'[]']
    lines = [r.getMessage() for r in caplog.records
             if r.name == secrets_filter.REQUEST_LOGGER]
    assert len(lines) == 1
    assert TOKEN not in lines[0]
    assert 'GET /v1/commands/?agent_token=*** - 200' in lines[0]


def test_request_without_secrets_is_logged_as_it_was(caplog):
    with caplog.at_level(logging.INFO, logger=secrets_filter.REQUEST_LOGGER):
        _request('wait=true')
    lines = [r.getMessage() for r in caplog.records
             if r.name == secrets_filter.REQUEST_LOGGER]
    assert len(lines) == 1
    assert lines[0].startswith('198.18.0.1 - GET /v1/commands/?wait=true '
                               '- 200 (')


def test_lookup_reply_masks_the_agent_token(caplog):
    # What IPA 13 logs at DEBUG once the conductor answered its lookup.
    from oslo_log import log
    reply = {'node': {'uuid': '1be26c0b'},
             'config': {'heartbeat_timeout': 300, 'agent_token': TOKEN}}
    with caplog.at_level(logging.DEBUG, logger=secrets_filter.AGENT_LOGGER):
        log.getLogger(secrets_filter.AGENT_LOGGER).debug(
            'Received lookup results: %s', reply)
    lines = [r.getMessage() for r in caplog.records
             if r.name == secrets_filter.AGENT_LOGGER]
    assert len(lines) == 1
    assert TOKEN not in lines[0]
    assert "'agent_token': '***'" in lines[0]


def test_installed_once():
    secrets_filter.install()
    secrets_filter.install()
    for name in (secrets_filter.REQUEST_LOGGER, secrets_filter.AGENT_LOGGER):
        assert sum(isinstance(f, secrets_filter.MaskSecrets)
                   for f in logging.getLogger(name).filters) == 1
