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

"""Where a write gets its bytes, and what happened to each source.

A write is given three kinds of sources: trackers (which hand out the other
agents), the conductor's seeder, and web seeds (BEP 19: an HTTP URL of the
same raw bytes). :class:`Sources` remembers what happened to each, so that
a write that cannot reach any of them fails with a message that names them
all. :class:`Fallback` decides when the web seeds are used: only after the
seeder has been out of reach for ``delay`` seconds while this agent needs
pieces that no connected peer has, and never while the seeder is there, so
that a healthy swarm is never turned into unicast.

This module is pure logic, so it is tested without libtorrent.
"""

from urllib import parse

from oslo_utils import netutils

from ironic_bt.common.i18n import _


def redact(url, path=True):
    """A URL fit for logs.

    No query (temporary URLs carry signatures) and no user information.

    :param path: keep the path; False for URLs whose path is a secret
        (the conductor's web seed in SSL swarms is an unguessable name).
    """
    parts = parse.urlsplit(url)
    host = netutils.escape_ipv6(parts.hostname or '')
    if parts.port:
        host = '%s:%d' % (host, parts.port)
    return parse.urlunsplit((parts.scheme, host,
                             parts.path if path else '/...',
                             '...' if parts.query else '', ''))


class Sources:
    """The last thing that happened to each source, for error messages."""

    def __init__(self, trackers, peers, web_seeds):
        self._state = {}
        for url in trackers:
            self._state[('tracker', redact(url))] = _('never answered')
        for host, port in peers:
            self._state[('seeder', _peer(host, port))] = _('never connected')
        for url in web_seeds:
            self._state[('web seed', redact(url, path=False))] = _(
                'not used: the seeder was reachable')

    def tracker(self, url, what):
        self._set('tracker', redact(url), what)

    def seeder(self, host, port, what):
        self._set('seeder', _peer(host, port), what)

    def web_seed(self, url, what):
        self._set('web seed', redact(url, path=False), what)

    def web_seeds_state(self, what):
        for (kind, name) in list(self._state):
            if kind == 'web seed':
                self._state[(kind, name)] = what

    def _set(self, kind, name, what):
        key = (kind, name)
        if key in self._state:
            self._state[key] = what

    def describe(self):
        """One clause per source: ``tracker URL: what happened``."""
        if not self._state:
            return _('no source was given')
        return '; '.join('%s %s: %s' % (kind, name, what)
                         for (kind, name), what in self._state.items())


def _peer(host, port):
    return '%s:%d' % (netutils.escape_ipv6(host), port)


class Fallback:
    """When to fetch from the web seeds.

    :param urls: the web seed URLs; none disables the fallback.
    :param delay: seconds the seeder must have been out of reach, while it
        was needed, before the web seeds are used.
    """

    def __init__(self, urls, delay):
        self.urls = list(urls)
        self.delay = delay
        self.in_use = False
        #: whether the seeder has been gone long enough that the web seeds
        #: stand in for it (until it is back), needed right now or not.
        self.engaged = False
        self._gone_since = None

    def update(self, now, seeder_connected, needed):
        """Whether the web seeds should be in use now.

        :param now: a monotonic time in seconds.
        :param seeder_connected: whether a connection to the seeder is up.
        :param needed: whether this agent needs pieces that no connected
            agent has (the piece plan's ``need_seeder``).
        """
        if not self.urls or seeder_connected:
            self._gone_since = None
            self.engaged = False
        elif needed and self._gone_since is None:
            self._gone_since = now
        if self._gone_since is not None and needed:
            self.engaged = self.engaged or (
                now - self._gone_since >= self.delay)
        # With nothing to fetch that only a seed has, leave the web seeds
        # to the agents that need them.
        self.in_use = self.engaged and needed
        return self.in_use
