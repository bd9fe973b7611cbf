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

"""When the writer falls back to web seeds, and what it says about sources."""

from ipa_extension import sources

URL = 'http://198.18.0.1:8080/bittorrent/image.img'


def test_healthy_swarm_never_uses_web_seeds():
    fallback = sources.Fallback([URL], delay=5)
    for t in range(100):
        # The seeder connected, or deliberately left (not needed).
        assert not fallback.update(t, seeder_connected=t % 2 == 0,
                                   needed=t % 2 == 0)
    assert not fallback.engaged


def test_web_seeds_after_the_delay_and_until_the_seeder_is_back():
    fallback = sources.Fallback([URL], delay=5)
    assert not fallback.update(0, seeder_connected=False, needed=True)
    assert not fallback.update(4.9, seeder_connected=False, needed=True)
    assert fallback.update(5, seeder_connected=False, needed=True)
    assert fallback.engaged
    # Nothing left that only a seed has: the URL is dropped, the fallback
    # stays engaged, and comes back at once when needed again.
    assert not fallback.update(6, seeder_connected=False, needed=False)
    assert fallback.engaged
    assert fallback.update(6.1, seeder_connected=False, needed=True)
    # The seeder is back: no more HTTP, and a new absence waits again.
    assert not fallback.update(7, seeder_connected=True, needed=True)
    assert not fallback.engaged
    assert not fallback.update(8, seeder_connected=False, needed=True)


def test_absence_counts_only_while_the_seeder_is_needed():
    fallback = sources.Fallback([URL], delay=5)
    # Disconnected on purpose (nothing to fetch from it) for a long time.
    assert not fallback.update(0, seeder_connected=False, needed=False)
    assert not fallback.update(60, seeder_connected=False, needed=False)
    assert not fallback.update(61, seeder_connected=False, needed=True)
    assert fallback.update(66, seeder_connected=False, needed=True)


def test_no_url_no_fallback():
    fallback = sources.Fallback([], delay=0)
    assert not fallback.update(100, seeder_connected=False, needed=True)


def test_describe_names_every_source_without_secrets():
    src = sources.Sources(
        ['http://198.18.0.1:6969/announce?node=abc'], [('198.18.0.1', 6881)],
        ['https://user:pw@swift.example:443/v1/o?temp_url_sig=s3cr3t'])
    src.tracker('http://198.18.0.1:6969/announce?node=abc',
                'Connection refused')
    src.seeder('198.18.0.1', 6881, 'Connection timed out')
    src.web_seed('https://user:pw@swift.example:443/v1/o?temp_url_sig=s3cr3t',
                 'HTTP 404')
    # Events about peers that are not sources are ignored.
    src.seeder('198.18.0.7', 6881, 'connected')
    text = src.describe()
    assert text == (
        'tracker http://198.18.0.1:6969/announce?...: Connection refused; '
        'seeder 198.18.0.1:6881: Connection timed out; '
        'web seed https://swift.example:443/...?...: HTTP 404')
    assert 's3cr3t' not in text and 'pw' not in text


def test_web_seed_paths_stay_out_of_logs():
    # In SSL swarms the conductor's web seed is an unguessable path.
    secret = 'http://198.18.0.1:8080/bittorrent/5f0c2a.img'
    src = sources.Sources([], [], [secret])
    src.web_seed(secret, 'HTTP 404')
    assert src.describe() == 'web seed http://198.18.0.1:8080/...: HTTP 404'


def test_describe_brackets_ipv6_seeders():
    state = sources.Sources([], [('fd00::1', 6881), ('198.18.0.1', 6881)],
                            [])
    state.seeder('fd00::1', 6881, 'refused')
    assert state.describe() == ('seeder [fd00::1]:6881: refused; '
                                'seeder 198.18.0.1:6881: never connected')
