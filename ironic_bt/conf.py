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

"""The option groups of the conductor side.

``[bittorrent]``: the deploy interface. ``[bittorrent-redfish]``: what
ironic looks up by the name of the ``bittorrent-redfish`` hardware type.
"""

from oslo_config import cfg

from ironic_bt.common.i18n import _

GROUP = cfg.OptGroup(
    'bittorrent',
    title=_('BitTorrent deploy interface options'),
    help=_('Options for the "bittorrent" deploy interface of ironic-bt: '
           'the seeder and the tracker that run in the conductor, and the '
           'settings handed to the agents.'))

opts = [
    cfg.StrOpt('data_dir',
               default='$state_path/bittorrent',
               help=_('Directory where the seeder keeps its hard links to '
                      'the raw images it publishes, and the cached '
                      '.torrent files. It must be on the same file system '
                      'as the image cache ([pxe]instance_master_path and '
                      '[pxe]images_path) so that a hard link can be made.')),
    cfg.IPOpt('seeder_listen_host',
              default='0.0.0.0',
              help=_('Address the conductor\'s seeder listens on for '
                     'peer connections.')),
    cfg.PortOpt('seeder_port',
                default=6881,
                help=_('TCP port the conductor\'s seeder listens on.')),
    cfg.HostAddressOpt('advertise_host',
                       default='$my_ip',
                       help=_('Address (or host name) of this conductor as '
                              'the agents reach it on the provisioning '
                              'network: used in the tracker URL and the '
                              'seeder address handed to the agents.')),
    cfg.URIOpt('tracker_url',
               schemes=['http', 'https', 'udp'],
               help=_('Announce URL of an external BitTorrent tracker (for '
                      'example opentracker), for sites with many '
                      'conductors. When unset, each conductor runs a '
                      'built-in tracker that serves only the images it '
                      'published.')),
    cfg.StrOpt('tracker_secret',
               secret=True,
               help=_('Secret shared by the conductors of a site that use '
                      'one tracker, so that the nodes deploying an image '
                      'form one swarm whichever conductor deploys them. Set '
                      'the same value on every conductor. A conductor whose '
                      'tracker_url names another conductor\'s built-in '
                      'tracker publishes its images there by announcing its '
                      'seeder with a key signed with this secret; the '
                      'built-in tracker serves such an image while that '
                      'seeder keeps announcing it. Unset (the default): '
                      'the built-in tracker serves only the images of its '
                      'own conductor. Not needed with an external tracker '
                      'such as opentracker.')),
    cfg.IPOpt('tracker_listen_host',
              default='0.0.0.0',
              help=_('Address the built-in tracker listens on.')),
    cfg.PortOpt('tracker_port',
                default=6969,
                help=_('TCP port of the built-in tracker.')),
    cfg.PortOpt('tracker_udp_port',
                help=_('UDP port of the built-in tracker\'s BEP 15 endpoint, '
                       'on tracker_listen_host. When set, agents announce '
                       'over UDP first, an order of magnitude cheaper for '
                       'the conductor than HTTP, and fall back to HTTP if '
                       'UDP does not answer. Unset (the default): HTTP '
                       'only. Open the port in the firewall when setting '
                       'it.')),
    cfg.StrOpt('status_token',
               secret=True,
               help=_('Token that opens the built-in tracker\'s /status '
                      '(every node\'s address and progress) to other hosts, '
                      'sent in an X-Status-Token header; "ironic-bt status" '
                      'sends $IRONIC_BT_STATUS_TOKEN. Unset (the default): '
                      'only the conductor\'s own host may read it; others '
                      'get 403 and "ironic-bt status" falls back to the '
                      'scrape counts.')),
    cfg.IntOpt('announce_interval',
               default=10, min=1,
               help=_('Seconds between announces that the built-in tracker '
                      'asks peers for. Short intervals let nodes find each '
                      'other quickly and keep the progress shown by '
                      '"ironic-bt status" fresh.')),
    cfg.IntOpt('max_swarms',
               default=256, min=1,
               help=_('Most torrents the built-in tracker keeps peers for.')),
    cfg.IntOpt('max_peers_per_swarm',
               default=2000, min=1,
               help=_('Most peers the built-in tracker keeps for one '
                      'torrent; the least recently seen peer is dropped '
                      'first.')),
    cfg.IntOpt('upload_rate_limit',
               default=0, min=0,
               help=_('Upload rate limit of the conductor\'s seeder, in '
                      'bytes per second. 0 means unlimited.')),
    cfg.IntOpt('publication_check_interval',
               default=60, min=0,
               help=_('Seconds between checks that unpublish images which '
                      'no deploy on this conductor needs any more. Images '
                      'are unpublished as soon as each deploy finishes, '
                      'fails or is torn down; the check catches the paths '
                      'where ironic does not clean up a deploy, such as a '
                      'node left in "deploy failed" or deleted in '
                      'maintenance mode. 0 disables the check.')),
    cfg.PortOpt('agent_listen_port',
                default=6881,
                min=1,
                help=_('TCP port the agents listen on for peer '
                       'connections.')),
    cfg.IntOpt('linger_timeout',
               default=300, min=0,
               help=_('Most seconds an agent keeps seeding after it has '
                      'verified its disk, while other peers in the swarm are '
                      'still incomplete. Seeding always stops before the '
                      'configuration drive or a boot loader is written.')),
    cfg.IntOpt('progress_interval',
               default=10, min=1,
               help=_('Seconds between the progress lines (percent, rate, '
                      'peers) that the agent logs while downloading.')),
    cfg.IntOpt('progress_record_interval',
               default=15, min=0,
               help=_('Seconds between updates of the download progress of '
                      'each deploying node in its driver_internal_info '
                      '("bittorrent_progress": percent, bytes left, '
                      'downloaded and uploaded, as the node last announced '
                      'them to the built-in tracker). 0 disables it.')),
    cfg.FloatOpt('finish_check_interval',
                 default=1.0, min=0,
                 help=_('Seconds between checks of the agents that told the '
                        'built-in tracker they stopped: the conductor asks '
                        'each such agent for the result of its step and '
                        'moves the deploy on at once, instead of waiting '
                        'for the agent\'s next heartbeat (which '
                        'ironic-python-agent sends up to 5 s after a step '
                        'ends). Cheap: only nodes whose download just '
                        'ended are checked, for at most '
                        'finish_check_window seconds. 0 disables it; the '
                        'heartbeat then moves every deploy on.')),
    cfg.IntOpt('finish_check_window',
               default=30, min=1,
               help=_('Seconds after an agent\'s "stopped" announce during '
                      'which the conductor keeps checking its step (see '
                      'finish_check_interval).')),
    cfg.ListOpt('web_seed_sources',
                default=['conductor'],
                item_type=cfg.types.String(choices=[
                    ('conductor', _('the conductor\'s own copy of the raw '
                                    'image, linked into [deploy]http_root '
                                    'and served from [deploy]http_url')),
                    ('image_source', _('the node\'s image_source, when it '
                                       'is an HTTP(S) URL of a raw '
                                       'image')),
                ]),
                help=_('HTTP sources of the image that the agents may use '
                       'as BEP 19 web seeds when the conductor\'s seeder is '
                       'out of reach (it died or restarts), for the pieces '
                       'that no peer has; each such piece comes over HTTP '
                       'about once across the swarm and then spreads peer '
                       'to peer. A healthy swarm never uses them. An empty '
                       'list turns the HTTP fallback off: the agents get no '
                       'URL at all.')),
    cfg.FloatOpt('web_seed_delay',
                 default=5.0, min=0,
                 help=_('Seconds the seeder must have been out of reach, '
                        'while an agent needs pieces that no peer has, '
                        'before that agent uses the web seeds. Short enough '
                        'that a dead seeder costs little, long enough that '
                        'a reconnect does not go to HTTP.')),
    cfg.IntOpt('unreachable_timeout',
               default=60, min=5,
               help=_('Seconds an agent waits with nothing connected to '
                      'download from (no seeder, peer or web seed) and no '
                      'progress before the deploy fails, with a message '
                      'that names every tracker, seeder and web seed and '
                      'what happened to it. The default outlasts a '
                      'conductor restart and several announce intervals.')),
    cfg.IntOpt('resume_check_interval',
               default=5, min=0,
               help=_('Seconds between checks for nodes whose agent is '
                      'downloading an image this conductor does not seed: '
                      'after a conductor restart, the seeder and the '
                      'tracker come back with the same torrent within '
                      'this time, instead of at each node\'s next '
                      'heartbeat. 0 disables the check; heartbeats still '
                      'publish again.')),
    cfg.IntOpt('agent_restart_retries',
               default=3, min=0,
               help=_('How many times the write step is started again on '
                      'a node whose agent restarted while it ran (the new '
                      'agent resumes from the pieces already on the disk). '
                      'Each retry is logged and counted in the node\'s '
                      'driver_internal_info ("bittorrent_agent_restarts"). '
                      'After that many, the deploy fails.')),
    cfg.IntOpt('stall_timeout',
               default=300, min=10,
               help=_('Seconds without a single byte downloaded after which '
                      'an agent gives up and the deploy fails.')),
    cfg.BoolOpt('ssl',
                default=True,
                help=_('Serve images as SSL torrents: the seeder and the '
                       'agents exchange image bytes only with peers that '
                       'hold a certificate of this deployment\'s authority '
                       '(ssl_authority_dir), which the conductor issues to '
                       'each node for one deploy. Set to False only where '
                       'standard BitTorrent clients must join the swarms: '
                       'anyone on the provisioning network who learns an '
                       'info-hash can then download the image.')),
    cfg.IntOpt('ssl_certificate_lifetime',
               default=6 * 3600, min=600,
               help=_('Seconds for which the certificate a node gets for an '
                      'SSL swarm is valid, from the start of its write '
                      'step (a restarted step gets a new one). Longer than '
                      'the longest write of an image (download, '
                      'verification and lingering); after it, the node '
                      'cannot open new connections to the swarm. '
                      'Heartbeats keep a deploy alive past '
                      '[conductor]deploy_callback_timeout, so that timeout '
                      'does not bound a write.')),
    cfg.StrOpt('ssl_authority_dir',
               default='$state_path/bittorrent/authority',
               help=_('Directory of the certificate authority of the SSL '
                      'swarms (ca.pem, and ca.key with mode 0600). Made on '
                      'first use. Conductors whose nodes share swarms (a '
                      'shared tracker_url) need the same two files.')),
]


#: ironic looks up a Redfish node's CA bundle in the option group named
#: after the node's hardware type (ironic.drivers.utils.get_verify_ca); with
#: no group of that name, checking a bittorrent-redfish node's power
#: credentials failed with "no such option bittorrent-redfish in group
#: [DEFAULT]". The option defaults to [redfish]verify_ca (see
#: ironic_bt.hardware.BitTorrentRedfishHardware).
REDFISH_GROUP = cfg.OptGroup(
    'bittorrent-redfish',
    title=_('bittorrent-redfish hardware type options'),
    help=_('Options ironic looks up by the name of the bittorrent-redfish '
           'hardware type.'))

redfish_opts = [
    cfg.StrOpt('verify_ca',
               help=_('The CA bundle that verifies the Redfish BMC of '
                      'bittorrent-redfish nodes whose redfish_verify_ca is '
                      'missing or True. Defaults to [redfish]verify_ca.')),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(opts, group=GROUP)
    conf.register_group(REDFISH_GROUP)
    conf.register_opts(redfish_opts, group=REDFISH_GROUP)


def list_opts():
    """Options for oslo-config-generator (``oslo.config.opts`` entry point).

    :returns: a list of (group, options) tuples.
    """
    return [(GROUP, opts), (REDFISH_GROUP, redfish_opts)]


CONF = cfg.CONF
register_opts(CONF)
