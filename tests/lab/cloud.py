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

"""A local bare-metal cloud on one machine: real Ironic, real agents.

``python -m tests.lab.cloud {up,deploy,status,down,demo}`` (or
``tools/cloud``). ``up`` builds a lab (:mod:`tests.lab.net`): a bridge
whose address is the "conductor", and one network namespace per node. It
starts one all-in-one ``ironic`` process (API and conductor, noauth,
sqlite) and an HTTP server for ``[deploy]http_root`` on the bridge
address. Each node gets a loop device as its only disk and a real
ironic-python-agent inside its namespace, which sees only that disk
through the test hardware manager (:mod:`tests.lab.ipa_test_hw`). Nodes
are enrolled as ``fake-hardware`` (fake power and boot, noop management)
and driven through the normal state machine to ``available``.

The agents are already running when a deploy starts, as after
inspection, so the conductor fast-tracks to them (``[deploy]fast_track``)
instead of "rebooting" fake-powered nodes. The harness plays the
hardware: a node that reaches ``active`` has booted its instance, so its
agent is stopped; a node deployed again gets a fresh agent.

``deploy`` deploys them with the real client (``openstack baremetal node
deploy``), shows progress, checks every disk byte for byte against the
image and prints a summary table and one JSON line of figures.
``deploy --kill-agent NODE`` is the fault case: that node's agent is
killed while it writes the image, and the conductor fails the node when
its heartbeats stop (``[conductor]deploy_callback_timeout``).

Everything lives in the state directory (``--state-dir``, else
``$IRONIC_BT_CLOUD_DIR``, else ``.cloud`` in the repository), so each
command can run as a separate invocation; ``down`` always cleans up.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

from tests.lab import cloud_conductors
from tests.lab import cloud_conf
from tests.lab import cloud_mariadb
from tests.lab import cloud_neutron
from tests.lab import cloud_nova
from tests.lab import cloud_report
from tests.lab import cloud_servers
from tests.lab import cloud_vms
from tests.lab import disks
from tests.lab import faulty
from tests.lab import images
from tests.lab import instance as lab_instance
from tests.lab import net
from tests.lab import procs

REPO = cloud_conf.REPO
DEFAULT_STATE_DIR = os.environ.get('IRONIC_BT_CLOUD_DIR',
                                   os.path.join(REPO, '.cloud'))
STATE_FILE = 'cloud.json'
MARKER = '.ironic-bt-cloud'
LAB_PREFIX = 'ibc'
BINDIR = cloud_conf.BINDIR

API_PORT = 6385
HTTP_PORT = 8080
TRACKER_PORT = 6969
SEEDER_PORT = 6881
AGENT_PORT = 9999
MIB = 1024 * 1024
# ironic-python-agent's own entry point, run after the test hardware
# manager's module has neutralised what would act on the host.
AGENT_MAIN = 'import tests.lab.ipa_test_hw as m; m.main()'

# Directories of the state dir that "down" removes; logs/ is kept for the
# post-mortem unless --purge.
_RUNTIME_DIRS = ('ironic', 'http', 'ipa', 'bittorrent', 'disks',
                 'conductors', 'opentracker', 'control', 'libvirt')

ACTIVE = 'active'
AVAILABLE = 'available'
DEPLOY_FAILED = 'deploy failed'
TERMINAL = (ACTIVE, DEPLOY_FAILED)


class CloudError(RuntimeError):
    """The cloud could not do what was asked (the message says why)."""


def _log(msg, *args):
    print('cloud: ' + (msg % args if args else msg), file=sys.stderr,
          flush=True)


def bittorrent_loadable():
    """Whether ironic can load the ``bittorrent`` deploy interface.

    Checked in a child process: an enabled interface that fails to load
    stops the conductor from starting, and importing ironic here would
    pull its global configuration into the harness.
    """
    code = ('import importlib.metadata as m, sys\n'
            'eps = [e for e in m.entry_points('
            'group="ironic.hardware.interfaces.deploy") '
            'if e.name == "bittorrent"]\n'
            'sys.exit(0 if eps and eps[0].load() else 1)\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd='/',
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0, (proc.stderr.strip().splitlines() or
                                  [''])[-1]


def _pick_interfaces(interfaces):
    """Deploy interfaces to enable, and a note if bittorrent is not."""
    if interfaces == 'auto':
        ok, why = bittorrent_loadable()
        if not ok:
            # The cloud exists to show bittorrent: a cloud that quietly
            # deployed with direct instead would pass for a working one.
            raise CloudError(
                'the bittorrent deploy interface cannot load in ironic '
                '(%s): check that ironic-bt is installed next to ironic '
                '(tox -e py3 installs both), or pass --interfaces direct '
                'for a cloud without it' % (why or 'no entry point'))
        return ['direct', 'bittorrent'], None
    enabled = [i.strip() for i in interfaces.split(',') if i.strip()]
    if not enabled:
        raise CloudError('no deploy interface to enable')
    note = None if 'bittorrent' in enabled else (
        'bittorrent is not among the enabled deploy interfaces (%s)'
        % ', '.join(enabled))
    return enabled, note


def osc_env(cloud):
    """Environment for the openstack CLI: noauth, or the cloud admin.

    With Nova in front (``up --nova``) ironic is behind Keystone, and the
    admin's token is scoped to the whole system, which ironic's policy
    wants for managing every node.
    """
    env = dict(os.environ)
    for key in list(env):
        if key.startswith('OS_'):
            del env[key]
    if cloud.state.get('nova'):
        env.update(cloud_nova.admin_auth(cloud))
        env.pop('OS_PROJECT_NAME')
        env.pop('OS_PROJECT_DOMAIN_ID')
        env['OS_SYSTEM_SCOPE'] = 'all'
    else:
        env.update(OS_AUTH_TYPE='none', OS_ENDPOINT=cloud.state['api_url'])
    return env


def _connect(cloud):
    import openstack  # slow to import; only commands that talk need it
    openstack.enable_logging(debug=False)
    if cloud.state.get('nova'):
        return cloud_nova.connect(cloud, system=True)
    return openstack.connection.Connection(
        auth_type='none', baremetal_endpoint_override=cloud.state['api_url'])


class Cloud:
    """The cloud described by a state directory."""

    def __init__(self, state_dir):
        self.state_dir = os.path.abspath(state_dir)
        self.state_path = os.path.join(self.state_dir, STATE_FILE)
        self.state = None
        self._conn = None

    # -- state ---------------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.state_dir, *parts)

    def load(self):
        try:
            with open(self.state_path) as f:
                self.state = json.load(f)
        except FileNotFoundError:
            raise CloudError('no cloud in %s (run "up" first)'
                             % self.state_dir)
        return self

    def save(self):
        tmp = self.state_path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(self.state, f, indent=1, sort_keys=True)
        os.replace(tmp, self.state_path)

    @property
    def lab(self):
        return net.Lab.load(self.state_dir)

    @property
    def conn(self):
        if self._conn is None:
            self._conn = _connect(self)
        return self._conn

    @property
    def nodes(self):
        return self.state['nodes']

    def node_json(self, uuid):
        """A node as the API returns it (all fields, latest version)."""
        resp = self.conn.baremetal.get(
            '/nodes/%s' % uuid,
            headers={'X-OpenStack-Ironic-API-Version': 'latest'})
        return resp.json() if resp.ok else {}

    def node_names(self):
        return sorted(self.nodes, key=lambda n: self.nodes[n]['index'])

    # -- up ------------------------------------------------------------------

    def up(self, nodes=3, rate_mbit=None, disk_mib=256, subnet=None,
           interfaces='auto', callback_timeout=None, heartbeat_timeout=30,
           conductors=1, tracker='builtin', nova=False, database='sqlite',
           vms=0, ipmi_vms=0):
        """Build the lab, start ironic and the agents, enrol the nodes.

        :param interfaces: ``auto`` (``direct``, plus ``bittorrent`` when
            ironic can load it) or a comma-separated list.
        :param conductors: how many conductors share the nodes (see
            :mod:`tests.lab.cloud_conductors`).
        :param tracker: ``builtin`` or ``opentracker``: the tracker the
            conductors share.
        :param nova: put Keystone, Glance, Placement and Nova in front
            (see :mod:`tests.lab.cloud_nova`).
        :param database: ironic's database, ``sqlite`` or ``mariadb``
            (:mod:`tests.lab.cloud_mariadb`; always with Nova).
        :param callback_timeout: ``[conductor]deploy_callback_timeout``:
            90 s by default, 600 s with VMs (which boot the ramdisk first,
            in minutes under software emulation).
        :param vms: virtual machines as nodes, beside the ``nodes``
            namespaces (see :mod:`tests.lab.cloud_vms`); the last
            ``ipmi_vms`` of them behind IPMI, the others behind Redfish.
        """
        if database not in ('sqlite', 'mariadb'):
            raise CloudError('unknown database %r (choose sqlite or '
                             'mariadb)' % database)
        if database == 'mariadb' and cloud_mariadb.available():
            raise CloudError(cloud_mariadb.available())
        if nova:
            missing = (cloud_nova.available() or cloud_mariadb.available()
                       or cloud_neutron.available())
            if missing:
                raise CloudError('cannot start Nova: %s' % missing)
            if conductors > 1:
                raise CloudError('Nova in front of several conductors is '
                                 'not supported by the harness yet')
        if callback_timeout is None:
            callback_timeout = cloud_vms.CALLBACK_TIMEOUT if vms else 90
        if vms:
            missing = cloud_vms.available()
            if missing:
                raise CloudError('cannot start VMs: %s' % missing)
            if nova or conductors > 1:
                raise CloudError('VMs with Nova or several conductors are '
                                 'not supported by the harness yet')
        if tracker not in cloud_conductors.TRACKERS:
            raise CloudError('unknown tracker %r (choose from %s)'
                             % (tracker, ', '.join(cloud_conductors.TRACKERS)))
        if os.path.exists(self.state_path):
            raise CloudError('a cloud is already up in %s; run "down" '
                             'first' % self.state_dir)
        os.makedirs(self.state_dir, exist_ok=True)
        open(self.path(MARKER), 'w').close()
        # The logs of a previous cloud here (kept by "down") go now.
        shutil.rmtree(self.path('logs'), ignore_errors=True)
        for sub in _RUNTIME_DIRS + ('logs',):
            os.makedirs(self.path(sub), exist_ok=True)

        enabled, note = _pick_interfaces(interfaces)
        if note:
            _log('note: %s', note)
        default = 'bittorrent' if 'bittorrent' in enabled else enabled[0]
        lab = self._lab_up(subnet, rate_mbit)
        gw = lab.gateway_ip
        self.state = {
            'version': 1,
            'created': time.time(),
            'gateway_ip': gw,
            'subnet': str(lab.subnet),
            'rate_mbit': rate_mbit,
            'api_url': 'http://%s:%d' % (gw, API_PORT),
            'http_url': 'http://%s:%d' % (gw, HTTP_PORT),
            'tracker_status_url': 'http://%s:%d/status' % (gw, TRACKER_PORT),
            'http_stats': self.path('logs', 'http-bytes.json'),
            'deploy_interfaces': enabled,
            'default_interface': default,
            'interface_note': note,
            'disk_bytes': disk_mib * MIB,
            'callback_timeout': callback_timeout,
            'heartbeat_timeout': heartbeat_timeout,
            'tracker': tracker,
            'tracker_port': TRACKER_PORT,
            'services': {},
            'nodes': {},
        }
        self.save()
        _log('lab %s: bridge %s, conductor address %s',
             lab.subnet, lab.bridge, gw)

        for i in range(nodes):
            self._add_host(lab, 'node%d' % i, i)
        cloud_conductors.add_hosts(self, lab, conductors)
        self.save()
        if vms:
            cloud_vms.plan(self, vms, ipmi_vms)
            cloud_vms.add_vms(self, lab)
            cloud_vms.start(self, lab)
            cloud_vms.define_domains(self, lab)
            cloud_vms.start_bmcs(self, lab)
            _log('%d VMs (%s), libvirt %s, BMCs on %s', vms,
                 self.state['vms']['accel'], self.state['vms']['libvirt_uri'],
                 self.state['gateway_ip'])
        if nova:
            database = 'mariadb'
        if database == 'mariadb':
            cloud_mariadb.plan(self, cloud_nova.DATABASES if nova
                               else {'ironic': 'ironic'})
            cloud_mariadb.start(self, lab)
        if nova:
            cloud_nova.plan(self)
            cloud_nova.start_before_ironic(self, lab)
            cloud_neutron.start(self, lab)
            _log('Keystone %s, Glance, Placement, Neutron, MariaDB and '
                 'RabbitMQ up', self.state['nova']['auth_url'])
        self._start_services(lab, callback_timeout, heartbeat_timeout)
        if nodes:
            self._enrol()
            for name in self.node_names():
                self.start_agent(name)
            self.wait_agents(self.node_names())
        if vms:
            cloud_vms.enrol(self, default)
            _log('enrolled %d VMs, all available', vms)
        if nova:
            cloud_nova.start_after_ironic(self, lab)
            _log('Nova up: %d bare-metal hypervisors',
                 cloud_nova.wait_hypervisors(self, len(self.nodes)))
            self.state['nova']['network_id'] = cloud_neutron.create_network(
                self)
            self.state['nova']['flavor_id'] = cloud_nova.create_flavor(self)
            cloud_nova.create_deploy_template(self)
            _log('flavor %s (trait %s, its deploy template) and network %s '
                 'ready', cloud_nova.FLAVOR, cloud_nova.TRAIT,
                 cloud_neutron.NETWORK)
        self.save()
        return self

    def _lab_up(self, subnet, rate_mbit, attempts=5):
        """Bring the lab up on ``subnet`` or on the first free /24.

        Another lab (a functional test, the benchmark) may grab the same
        free subnet between our check and our bridge; then try the next.
        """
        for attempt in range(attempts):
            lab = net.Lab(self.state_dir, prefix=LAB_PREFIX,
                          subnet=subnet or net.free_subnet(),
                          rate_mbit=rate_mbit)
            try:
                return lab.up()
            except net.LabError as e:
                if subnet or 'overlaps' not in str(e) or \
                        attempt == attempts - 1:
                    raise
                time.sleep(0.5 + attempt)

    def _add_host(self, lab, name, index):
        host = lab.add_host(name)
        backing = self.path('disks', '%s.img' % name)
        device = disks.create_loop(lab, backing, self.state['disk_bytes'])
        disks.assert_lab_loop(device, lab)
        node = {
            'name': name, 'index': index, 'ip': host.ip, 'mac': host.mac,
            'netns': host.netns, 'interface': host.veth_ns,
            'device': device, 'backing': backing, 'uuid': None,
            'agent': None,
            'conf': self.path('ipa', '%s.conf' % name),
            'json': self.path('ipa', '%s.json' % name),
            'log': self.path('logs', 'ipa-%s.log' % name),
            'run_dir': self.path('ipa', '%s-run' % name),
        }
        with open(node['json'], 'w') as f:
            json.dump({'name': name, 'interface': host.veth_ns,
                       'mac': host.mac, 'ip': host.ip, 'device': device,
                       'state_dir': self.state_dir,
                       'run_dir': node['run_dir'],
                       'log_file': node['log']}, f, indent=1)
        self.nodes[name] = node
        _log('%s: %s %s, disk %s (%d MiB)', name, host.ip, host.mac,
             device, self.state['disk_bytes'] // MIB)

    def _spawn(self, lab_or_host, key, cmd, log, env=None):
        proc = lab_or_host.popen(cmd, log, env=env)
        return proc, {'pid': proc.pid,
                      'starttime': procs.start_time(proc.pid),
                      'log': log, 'name': key}

    def start_service(self, lab_or_host, name, cmd, log, env=None):
        """Start a service of the cloud and record it under ``name``.

        The lab tracks the process, so ``down`` stops it.

        :returns: its ``Popen``.
        """
        proc, record = self._spawn(lab_or_host, name, cmd, log, env=env)
        self.state['services'][name] = record
        self.save()
        return proc

    def _ironic_sections(self):
        """ironic's configuration beyond cloud_conf's: Keystone, MariaDB."""
        sections = {}
        if self.state.get('nova'):
            sections.update(cloud_nova.ironic_sections(self))
        if self.state.get('vms'):
            for name, values in cloud_vms.ironic_sections(self).items():
                sections.setdefault(name, {}).update(values)
        if self.state.get('mariadb'):
            sections['database'] = {
                'connection': cloud_mariadb.database_url(self, 'ironic')}
        return sections or None

    def _start_services(self, lab, callback_timeout, heartbeat_timeout):
        gw = self.state['gateway_ip']
        dirs = {'ironic': self.path('ironic'),
                'http_root': self.path('http'),
                'logs': self.path('logs'),
                'bittorrent': self.path('bittorrent')}
        for sub in ('tmp', 'locks', 'certificates'):
            os.makedirs(os.path.join(dirs['ironic'], sub), exist_ok=True)
        conf = self.path('ironic', 'ironic.conf')
        common = dict(
            api_port=API_PORT, http_port=HTTP_PORT,
            deploy_interfaces=self.state['deploy_interfaces'],
            default_deploy_interface=self.state['default_interface'],
            callback_timeout=callback_timeout,
            heartbeat_timeout=heartbeat_timeout,
            tracker_port=TRACKER_PORT, seeder_port=SEEDER_PORT,
            **cloud_conductors.conf_options(self))
        if self.state['tracker'] == 'opentracker':
            cloud_conductors.start_opentracker(self, lab)
        # The first conductor's own tracker unless another is shared.
        first = (cloud_conductors.tracker_url(self)
                 if self.state['tracker'] == 'opentracker' else None)
        with open(conf, 'w') as f:
            f.write(cloud_conf.ironic_conf(
                dirs, gw, tracker_url=first,
                extra=self._ironic_sections(),
                **common))
        self.state['ironic_conf'] = conf

        http_log = self.path('logs', 'http.log')
        proc = self.start_service(
            lab, 'http', [sys.executable, '-m', 'tests.lab.cloud_http',
                          '--bind', gw, '--port', str(HTTP_PORT),
                          '--root', dirs['http_root'],
                          '--stats', self.state['http_stats']],
            http_log, env={'PYTHONPATH': REPO})
        procs.wait_port(gw, HTTP_PORT, timeout=30, proc=proc,
                        log_path=http_log)

        dbsync_log = self.path('logs', 'ironic-dbsync.log')
        with open(dbsync_log, 'ab') as log:
            rc = subprocess.run(
                [os.path.join(BINDIR, 'ironic-dbsync'), '--config-file',
                 conf, 'create_schema'], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if rc:
            raise CloudError('ironic-dbsync failed (exit %d): see %s'
                             % (rc, dbsync_log))

        self._start_ironic(lab)
        cloud_conductors.start_conductors(
            self, lab, dirs,
            dict(common, tracker_url=cloud_conductors.tracker_url(self)))

    def _start_ironic(self, lab):
        gw = self.state['gateway_ip']
        out = self.path('logs', 'ironic.out')
        proc = self.start_service(
            lab, 'ironic', [os.path.join(BINDIR, 'ironic'), '--config-file',
                            self.state['ironic_conf']], out)
        log_path = self.path('logs', 'ironic.log')
        procs.wait_port(gw, API_PORT, timeout=120, proc=proc,
                        log_path=log_path)

        def driver_ready():
            try:
                drivers = [d.name for d in self.conn.baremetal.drivers()]
            except Exception:
                return False
            return 'fake-hardware' in drivers
        procs.wait_for(driver_ready, 120, 1, 'the conductor to register '
                       'fake-hardware', proc=proc, log_path=log_path)
        _log('ironic API %s (log %s)', self.state['api_url'], log_path)

    def restart_ironic(self, signum=signal.SIGTERM, timeout=90):
        """Stop the all-in-one ironic (by its recorded PID), start it again.

        As ``systemctl restart`` would; its seeder and tracker go and come
        back with it.

        :returns: seconds from the signal to the API answering again.
        """
        record = self.state['services']['ironic']
        start = time.monotonic()
        if procs.is_running(record['pid'], record['starttime']):
            os.killpg(record['pid'], signum)

            def gone():
                return not procs.is_running(record['pid'],
                                            record['starttime'])
            try:
                procs.wait_for(gone, timeout, 0.2, 'ironic to exit')
            except Exception:
                os.killpg(record['pid'], signal.SIGKILL)
                procs.wait_for(gone, 10, 0.2, 'ironic to exit')
        self._start_ironic(self.lab)
        return time.monotonic() - start

    def _enrol(self):
        bm = self.conn.baremetal
        for name in self.node_names():
            node = self.nodes[name]
            created = self._create_node(name)
            node['uuid'] = created.id
            if self.state.get('nova'):
                # The trait the lab's bare-metal flavor requires.
                bm.add_node_trait(created.id, cloud_nova.TRAIT)
            bm.create_port(node_id=created.id, address=node['mac'],
                           pxe_enabled=True)
        self.save()
        uuids = [self.nodes[n]['uuid'] for n in self.node_names()]
        for uuid in uuids:
            bm.set_node_provision_state(uuid, 'manage')
        bm.wait_for_nodes_provision_state(uuids, 'manageable', timeout=120)
        for uuid in uuids:
            bm.set_node_provision_state(uuid, 'provide')
        bm.wait_for_nodes_provision_state(uuids, AVAILABLE, timeout=120)
        _log('enrolled %d nodes (fake-hardware), all available', len(uuids))

    def _create_node(self, name, attempts=100):
        """Enrol a node; with several conductors, an even share each.

        Ironic's hash ring maps a node's UUID to a conductor; a node whose
        UUID lands on a conductor that has its share already is enrolled
        again with a new UUID, so that every conductor deploys some.
        """
        conductors = [c['ip'] for c in self.state.get('conductors', [])]
        share = -(-len(self.nodes) // max(1, len(conductors)))
        for _attempt in range(attempts):
            created = self._create_node_once(name)
            if len(conductors) < 2:
                return created
            owner = cloud_conductors.owner(self, created.id)
            owned = sum(1 for n in self.nodes.values()
                        if n.get('conductor') == owner)
            if owner in conductors and owned < share:
                self.nodes[name]['conductor'] = owner
                return created
            self.conn.baremetal.delete_node(created.id)
        raise CloudError('could not give every conductor a share of the '
                         'nodes in %d attempts' % attempts)

    def _create_node_once(self, name):
        return self.conn.baremetal.create_node(
            name=name, driver='fake-hardware',
            boot_interface='fake', power_interface='fake',
            management_interface='noop', network_interface='noop',
            storage_interface='noop',
            deploy_interface=self.state['default_interface'],
            # Never let the conductor ask the agent to power off: on this
            # shared machine that is the host itself.
            driver_info={'deploy_forces_oob_reboot': True},
            # Nova schedules a flavor's servers to nodes of its class.
            **({'resource_class': cloud_nova.RESOURCE_CLASS}
               if self.state.get('nova') else {}),
            properties={'cpu_arch': 'x86_64', 'cpus': 1, 'memory_mb': 2048,
                        'local_gb': max(1, self.state['disk_bytes']
                                        // 1024 ** 3)})

    # -- agents (the harness plays the nodes' BMCs) --------------------------

    def agent_alive(self, name):
        record = self.nodes[name].get('agent')
        if not record:
            return False
        return procs.is_running(record['pid'], record['starttime'])

    def stop_agent(self, name, signum=signal.SIGTERM):
        """Signal a node's agent by its recorded PID (and start time)."""
        record = self.nodes[name].get('agent')
        if not record or not self.agent_alive(name):
            return False
        # The lab started it as a session (and process group) leader.
        os.killpg(record['pid'], signum)
        return True

    def agent_token(self, name):
        """The node's agent token, from the conductor's database."""
        if self.state.get('mariadb'):
            raise CloudError('agent_token reads ironic\'s sqlite database; '
                             'this cloud keeps it on MariaDB')
        db = sqlite3.connect(self.path('ironic', 'ironic.sqlite'), timeout=10)
        try:
            row = db.execute(
                'SELECT driver_internal_info FROM nodes WHERE uuid = ?',
                (self.nodes[name]['uuid'],)).fetchone()
        finally:
            db.close()
        return json.loads(row[0] or '{}').get('agent_secret_token')

    def start_agent(self, name, agent_token=None, tls_files=None):
        """Power the node on and boot its "ramdisk": a fresh agent.

        :param agent_token: give the agent this token in its configuration,
            as virtual media gives it on the kernel command line.
        :param tls_files: (certificate, key) for a static TLS identity.
        """
        node = self.nodes[name]
        fd = os.open(node['conf'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(cloud_conf.ipa_conf(node, self.state['api_url'],
                                        node['log'], AGENT_PORT,
                                        agent_token=agent_token,
                                        tls_files=tls_files))
        if self.agent_alive(name):
            self.stop_agent(name, signal.SIGKILL)
            procs.wait_for(lambda: not self.agent_alive(name), 10, 0.1,
                           'the old agent of %s to exit' % name)
        self.conn.baremetal.set_node_power_state(node['uuid'], 'power on')
        site = cloud_conf.write_agent_site(self.path('ipa', 'site'))
        lab = self.lab
        host = lab.host(name)
        _, record = self._spawn(
            host, 'agent', [sys.executable, '-c', AGENT_MAIN,
                            '--config-file', node['conf']],
            self.path('logs', 'ipa-%s.out' % name),
            env={'PYTHONPATH': os.pathsep.join([site, REPO]),
                 'IRONIC_BT_LAB_NODE': node['json']})
        node['agent'] = record
        node['agent_started'] = time.time()
        self.save()

    def agent_ready(self, name, node=None):
        """Whether the conductor can fast-track a deploy to this node."""
        node = node or self.conn.baremetal.get_node(self.nodes[name]['uuid'])
        info = node.driver_internal_info or {}
        beat = info.get('agent_last_heartbeat')
        if not info.get('agent_url') or not beat:
            return False
        started = self.nodes[name].get('agent_started', 0)
        return (cloud_report.parse_time(beat) >= started - 1
                and node.power_state == 'power on')

    def wait_agents(self, names, timeout=180):
        pending = set(names)

        def ready():
            for name in list(pending):
                if not self.agent_alive(name):
                    raise CloudError(
                        'the agent of %s exited; see %s and %s' % (
                            name, self.nodes[name]['log'],
                            self.path('logs', 'ipa-%s.out' % name)))
                if self.agent_ready(name):
                    pending.discard(name)
            return not pending
        procs.wait_for(ready, timeout, 1, 'agents of %s to heartbeat'
                       % ', '.join(sorted(pending)))
        _log('agents up and heartbeating: %s', ', '.join(sorted(names)))

    @contextlib.contextmanager
    def faulty_disk(self, name, fail_writes):
        """Give a node a disk whose writes fail with EIO in one range.

        The node boots its "ramdisk" again on a
        :class:`tests.lab.faulty.FaultyDisk` of the same size (a loop
        device over a FUSE file, registered with the lab so that ``down``
        undoes it if this process dies): a fresh agent, which sees only
        that disk. On exit, also after a failure, the agent is stopped,
        the loop device and the FUSE file system go, and the node boots
        again on its own disk, ``available`` with a fresh agent.

        :param fail_writes: ``(offset, length)`` of the failing range.
        :returns: the FaultyDisk (``device``, ``first_failed_write``).
        """
        own = self.nodes[name]['device']
        directory = self.path('disks', '%s-faulty' % name)
        os.mkdir(directory)
        disk = faulty.FaultyDisk(directory, self.state['disk_bytes'],
                                 fail_writes=fail_writes, lab=self.lab)
        failed = False
        try:
            with disk:
                try:
                    self._boot_disk(name, disk.device)
                    yield disk
                finally:
                    # Nothing may use the loop device when it goes.
                    self._halt_agent(name)
                    self._set_disk(name, own)
        except BaseException:
            failed = True
            raise
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
            try:
                self._boot_disk(name, own)
            except Exception as e:
                if not failed:
                    raise
                # Do not hide the error that brought us here.
                _log('%s: could not boot it on %s again: %s', name, own, e)

    def _halt_agent(self, name, timeout=10):
        """Stop a node's agent (SIGKILL, as a power cut) and wait for it."""
        if self.stop_agent(name, signal.SIGKILL):
            procs.wait_for(lambda: not self.agent_alive(name), timeout, 0.1,
                           'the agent of %s to exit' % name)

    def _set_disk(self, name, device):
        """Make ``device`` the node's only disk, for its next agent."""
        disks.assert_lab_loop(device, self.state_dir)
        node = self.nodes[name]
        with open(node['json']) as f:
            description = json.load(f)
        description['device'] = device
        tmp = node['json'] + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(description, f, indent=1)
        os.replace(tmp, node['json'])
        node['device'] = device
        self.save()

    def _boot_disk(self, name, device):
        """Reboot a node's ramdisk with ``device`` as its disk.

        It ends ``available`` with a heartbeating agent.
        """
        self._halt_agent(name)
        self._set_disk(name, device)
        bm = self.conn.baremetal
        uuid = self.nodes[name]['uuid']
        if bm.get_node(uuid).provision_state in (ACTIVE, DEPLOY_FAILED):
            # Ironic ignores the heartbeats of an agent on a node in
            # either state.
            bm.set_node_provision_state(uuid, 'deleted')
            bm.wait_for_nodes_provision_state([uuid], AVAILABLE,
                                              timeout=300)
        # Powering off makes ironic forget the old agent's token and TLS
        # certificate, so that the new agent gets its own.
        bm.set_node_power_state(uuid, 'power off', wait=True, timeout=60)
        self.start_agent(name)
        self.wait_agents([name])

    # -- deploy --------------------------------------------------------------

    def prepare_image(self, image=None, size_mib=64):
        """Put an image under http_root; return (image, url).

        A generated image is deterministic, so one already there is
        reused: its unchanged modification time also lets the conductor
        keep its cached copy, as it would for a real image server.
        """
        os.makedirs(self.path('http', 'images'), exist_ok=True)
        if image:
            src = os.path.abspath(image)
            dest = self.path('http', 'images', os.path.basename(src))
            if os.path.exists(dest) and not os.path.samefile(src, dest):
                os.unlink(dest)
            if not os.path.exists(dest):
                try:
                    os.link(src, dest)
                except OSError:
                    subprocess.run(['cp', '--sparse=always', src, dest],
                                   check=True)
        else:
            dest = self.path('http', 'images', 'lab-%dm.img' % size_mib)
            if not os.path.exists(dest):
                _log('building a %d MiB GPT + ext4 image', size_mib)
                images.make_disk_image(dest, size_mib=size_mib)
        size = os.path.getsize(dest)
        img = images.Image(dest, size, disks.sha256_region(dest, size))
        if img.size > self.state['disk_bytes']:
            raise CloudError('the image (%d bytes) does not fit the nodes\' '
                             'disks (%d bytes)' % (img.size,
                                                   self.state['disk_bytes']))
        url = '%s/images/%s' % (self.state['http_url'],
                                os.path.basename(dest))
        return img, url

    def _reset_node(self, name, wipe=True):
        """Bring a node back to available, disk zeroed, agent fresh."""
        bm = self.conn.baremetal
        uuid = self.nodes[name]['uuid']
        node = bm.get_node(uuid)
        if node.provision_state in (ACTIVE, DEPLOY_FAILED):
            bm.set_node_provision_state(uuid, 'deleted')
        elif node.provision_state == 'manageable':
            bm.set_node_provision_state(uuid, 'provide')
        elif node.provision_state != AVAILABLE:
            raise CloudError('%s is %s; cannot deploy it' %
                             (name, node.provision_state))
        bm.wait_for_nodes_provision_state([uuid], AVAILABLE, timeout=300)
        if wipe:
            self.wipe_disk(name)
        node = bm.get_node(uuid)
        if node.last_error or not self.agent_alive(name) or \
                not self.agent_ready(name, node):
            self.start_agent(name)
            return True
        return False

    def wipe_disk(self, name):
        """Discard a node's disk, so that nothing is left from before.

        A disk already holding the image would finish a torrent
        instantly (libtorrent checks existing data), which would make
        figures meaningless and verification vacuous.
        """
        device = self.nodes[name]['device']
        disks.assert_lab_loop(device, self.state_dir)
        subprocess.run(['blkdiscard', '--force', device], check=True,
                       capture_output=True)

    def deploy(self, interface=None, image=None, image_size_mib=64,
               names=None, kill_agent=None, kill_delay=0.0, timeout=900,
               wipe=True, strict=None, fault=None, out=sys.stdout):
        """Deploy nodes with the real client and verify their disks.

        :param kill_agent: name of a node whose agent is killed (SIGKILL,
            by PID) ``kill_delay`` seconds after it was handed the image
            write step: the fault case. The conductor notices when the
            agent's heartbeats stop ([conductor]deploy_callback_timeout).
        :param fault: a :class:`RestartAgent` or :class:`RestartConductor`
            (or anything with ``step(cloud, nodes, watcher)`` and an
            ``events`` list), stepped once a second during the deploy; the
            nodes are expected to end ``active`` all the same.
        :param strict: require the image's exact bytes on disk. By default
            this holds for ``bittorrent``; for ``direct`` a backup GPT
            moved to the end of the disk (what IPA's standby extension
            does) is accepted and reported.
        :returns: the report dict (also printed as one JSON line).
        """
        interface = interface or self.state['default_interface']
        if strict is None:
            strict = interface == 'bittorrent'
        if interface not in self.state['deploy_interfaces']:
            raise CloudError('deploy interface %s is not enabled in this '
                             'cloud (enabled: %s)%s' % (
                                 interface,
                                 ', '.join(self.state['deploy_interfaces']),
                                 '; ' + self.state['interface_note']
                                 if self.state.get('interface_note')
                                 else ''))
        names = names or self.node_names()
        unknown = set(names) - set(self.nodes)
        if unknown:
            raise CloudError('unknown nodes: %s' % ', '.join(sorted(unknown)))
        if kill_agent and kill_agent not in names:
            raise CloudError('%s is not among the nodes deployed'
                             % kill_agent)
        img, url = self.prepare_image(image, image_size_mib)
        if interface == 'bittorrent':
            cloud_conductors.allow_torrent(self, img.path)
        restarted = [n for n in names if self._reset_node(n, wipe)]
        if restarted:
            self.wait_agents(restarted)

        bm = self.conn.baremetal
        for name in names:
            bm.update_node(self.nodes[name]['uuid'],
                           deploy_interface=interface,
                           instance_info={
                               'image_source': cloud_conductors.image_url(
                                   self, name, img.path, url),
                               'image_os_hash_algo': 'sha256',
                               'image_os_hash_value': img.sha256,
                               'image_disk_format': 'raw',
                           })
        http_before = cloud_report.read_json(self.state['http_stats']) or {}
        uuids = [self.nodes[n]['uuid'] for n in names]
        _log('deploying %s with %s: %s (%d bytes, sha256 %s)',
             ', '.join(names), interface, url, img.size, img.sha256[:16])
        started = time.time()
        cmd = [os.path.join(BINDIR, 'openstack'), 'baremetal', 'node',
               'deploy'] + uuids
        _log('$ openstack %s', ' '.join(cmd[1:]))
        proc = subprocess.run(cmd, env=osc_env(self),
                              capture_output=True, text=True)
        if proc.returncode:
            raise CloudError('openstack baremetal node deploy failed: %s'
                             % (proc.stderr.strip() or proc.stdout.strip()))

        watcher = cloud_report.Progress(self, names, interface, img.size,
                                        started, out=out)
        killed = {}
        deadline = time.monotonic() + timeout
        while True:
            nodes = {n: bm.get_node(self.nodes[n]['uuid']) for n in names}
            watcher.update(nodes)
            if kill_agent and kill_agent not in killed:
                self._maybe_kill(kill_agent, nodes[kill_agent], kill_delay,
                                 killed, watcher)
            if fault is not None:
                fault.step(self, nodes, watcher)
            for name, node in nodes.items():
                # The node's part: once active it has rebooted into the
                # instance, so its ramdisk (the agent) is gone.
                if node.provision_state == ACTIVE and self.agent_alive(name):
                    self.stop_agent(name)
            # A failed node is saved in its new state a moment before its
            # last_error: wait for both.
            if all(n.provision_state in TERMINAL
                   and (n.provision_state == ACTIVE or n.last_error)
                   for n in nodes.values()):
                break
            if time.monotonic() > deadline:
                watcher.finish()
                raise CloudError('timed out after %ds; states: %s' % (
                    timeout, {n: v.provision_state
                              for n, v in nodes.items()}))
            time.sleep(1)
        watcher.finish()

        report = cloud_report.build_report(
            self, names, nodes, interface, img, started, watcher,
            http_before, killed, strict)
        if fault is not None:
            report['faults'] = fault.events
            if not fault.events:
                # Asked for a fault that never happened: not a pass.
                report['ok'] = False
        cloud_report.print_summary(report, out=out)
        if kill_agent and kill_agent not in killed:
            # Asked for a fault that never happened: not a pass.
            report['ok'] = False
        return report

    def _maybe_kill(self, name, node, delay, killed, watcher):
        # "wait call-back" with the write step current means the conductor
        # has handed the step to the agent and waits for its heartbeat:
        # the agent is writing. Killed earlier, the conductor would fail
        # the step at once with "connection refused", a different fault.
        if not _writing(node):
            watcher.kill_pending = None
            return
        if watcher.kill_pending is None:
            watcher.kill_pending = time.monotonic() + delay
        if time.monotonic() >= watcher.kill_pending:
            pid = self.nodes[name]['agent']['pid']
            step = node.deploy_step['step']
            if self.stop_agent(name, signal.SIGKILL):
                killed[name] = {'pid': pid, 'at': time.time(), 'step': step}
                watcher.note('killed the agent of %s (pid %d) while it ran '
                             'deploy step %s' % (name, pid, step))

    # -- status / down -------------------------------------------------------

    def status(self, out=sys.stdout):
        rows = []
        for name in self.node_names():
            node = self.conn.baremetal.get_node(self.nodes[name]['uuid'])
            rows.append({
                'node': name, 'uuid': node.id,
                'provision_state': node.provision_state,
                'power_state': node.power_state,
                'deploy_interface': node.deploy_interface,
                'agent': 'up' if self.agent_alive(name) else 'down',
                'ip': self.nodes[name]['ip'],
                'disk': self.nodes[name]['device'],
                'last_error': node.last_error or '',
            })
        for name, vm in sorted((self.state.get('vm_nodes') or {}).items()):
            node = self.conn.baremetal.get_node(vm['uuid'])
            rows.append({
                'node': name, 'uuid': node.id,
                'provision_state': node.provision_state,
                'power_state': node.power_state,
                'deploy_interface': node.deploy_interface,
                'agent': 'VM %s (%s)' % (cloud_vms.domain_state(self, name),
                                         node.driver),
                'ip': vm['ip'], 'disk': vm['disk'],
                'last_error': node.last_error or '',
            })
        cloud_report.print_table(rows, out=out)
        return rows

    def usage(self):
        api = self.state['api_url']
        if self.state.get('nova'):
            rc = cloud_nova.openrc_paths(self)
            return '\n'.join([
                'Keystone: %s; Ironic API: %s; deploy interfaces: %s' % (
                    self.state['nova']['auth_url'], api,
                    ', '.join(self.state['deploy_interfaces'])),
                'The cloud admin, for servers, flavors and images:',
                '  . %s; openstack server list' % rc['project'],
                'and for ironic (a token scoped to the whole system):',
                '  . %s; openstack baremetal node list' % rc['system'],
            ])
        return '\n'.join([
            'Ironic API: %s (noauth); deploy interfaces: %s' % (
                api, ', '.join(self.state['deploy_interfaces'])),
            'Use it with:',
            '  export OS_AUTH_TYPE=none OS_ENDPOINT=%s' % api,
            '  openstack baremetal node list',
            'or: python -m tests.lab.cloud {status,deploy,down} '
            '--state-dir %s' % self.state_dir,
        ])


def _writing(node):
    """Whether the conductor waits for the node's agent to write."""
    step = (node.deploy_step or {}).get('step') or ''
    return (node.provision_state == 'wait call-back'
            and step.startswith('write_image'))


class _Fault:
    """A fault injected ``delay`` seconds after its nodes started writing.

    :meth:`step` is called once a second by :meth:`Cloud.deploy`; the
    fault happens once, in :meth:`inject`, and is recorded in ``events``.
    """

    def __init__(self, names, delay):
        self.names = list(names)
        self.delay = delay
        self.events = []
        self._since = None

    def step(self, cloud, nodes, watcher):
        if self.events or not all(_writing(nodes[n]) for n in self.names):
            return
        self._since = self._since or time.monotonic()
        if time.monotonic() - self._since >= self.delay:
            self.inject(cloud, watcher)

    def inject(self, cloud, watcher):
        raise NotImplementedError


class RestartAgent(_Fault):
    """Kill a node's agent while it writes, and boot a fresh one.

    As a crashing ramdisk service restarts.
    """

    def __init__(self, name, delay):
        super().__init__([name], delay)
        self.name = name

    def inject(self, cloud, watcher):
        node = cloud.nodes[self.name]
        pid = node['agent']['pid']
        # The new agent keeps the identity of the first: the token the
        # conductor gave it (a ramdisk booted from virtual media has it on
        # its kernel command line) and its TLS certificate (a ramdisk with
        # its own). Ironic refuses a restarted agent without both.
        cloud.start_agent(
            self.name, agent_token=cloud.agent_token(self.name),
            tls_files=(os.path.join(node['run_dir'], 'agent.crt'),
                       os.path.join(node['run_dir'], 'agent.key')))
        self.events.append({'restarted_agent': self.name, 'pid': pid,
                            'at': time.time()})
        watcher.note('killed the agent of %s (pid %d) while it wrote, and '
                     'started a new one' % (self.name, pid))


class RestartConductor(_Fault):
    """Restart ironic while the nodes in ``names`` write."""

    def inject(self, cloud, watcher):
        seconds = cloud.restart_ironic()
        self.events.append({'restarted_conductor': True, 'at': time.time(),
                            'down_seconds': round(seconds, 1)})
        watcher.note('restarted ironic while %s wrote; its API answered '
                     'again after %.1f s' % (', '.join(self.names), seconds))


@contextlib.contextmanager
def running(state_dir, **up_args):
    """A cloud that is up inside the block and fully torn down after it.

    :param up_args: what :meth:`Cloud.up` takes.
    :raises AssertionError: after the block, if anything of the lab
        survived the teardown (a namespace, a link, a loop device or a
        process named after it).
    """
    cloud = Cloud(state_dir)
    try:
        cloud.up(**up_args)
        yield cloud
    finally:
        problems = down(state_dir)
        assert not problems, problems
        assert not os.path.exists(os.path.join(state_dir, net.STATE_FILE))


def down(state_dir, purge=False):
    """Tear everything down. Idempotent and always safe.

    :returns: the list of problems the lab teardown met.
    """
    state_dir = os.path.abspath(state_dir)
    problems = net.Lab.cleanup(state_dir)
    if not os.path.exists(os.path.join(state_dir, MARKER)):
        return problems
    for name in (STATE_FILE, STATE_FILE + '.tmp'):
        try:
            os.unlink(os.path.join(state_dir, name))
        except FileNotFoundError:
            pass
    for sub in _RUNTIME_DIRS:
        shutil.rmtree(os.path.join(state_dir, sub), ignore_errors=True)
    if purge:
        shutil.rmtree(os.path.join(state_dir, 'logs'), ignore_errors=True)
        os.unlink(os.path.join(state_dir, MARKER))
        try:
            os.rmdir(state_dir)
        except OSError:
            pass
    return problems


# -- command line ----------------------------------------------------------


def _add_up_args(parser):
    parser.add_argument('--nodes', type=int,
                        help='number of namespace nodes (default 3, or 0 '
                             'with --vms)')
    parser.add_argument('--vms', type=int, default=0,
                        help='virtual machines as nodes, booting the '
                             'deploy ramdisk by PXE (needs tools/install-'
                             'deps.sh --vms; see tests/lab/cloud_vms.py)')
    parser.add_argument('--ipmi-vms', type=int, default=0,
                        help='how many of the VMs are behind IPMI '
                             '(virtualbmc); the others behind Redfish '
                             '(sushy-tools)')
    parser.add_argument('--disk-mib', type=int, default=256,
                        help='size of each node\'s disk (default 256)')
    parser.add_argument('--subnet',
                        help='lab subnet inside 198.18.0.0/15 (default: '
                             'the first free /24)')
    parser.add_argument('--interfaces', default='auto',
                        help='enabled deploy interfaces, comma-separated, '
                             'or "auto" (direct and bittorrent; an error '
                             'if bittorrent cannot load)')
    parser.add_argument('--conductors', type=int, default=1,
                        help='conductors sharing the nodes, each on an '
                             'address of its own (default 1)')
    parser.add_argument('--tracker', choices=cloud_conductors.TRACKERS,
                        default='builtin',
                        help='the tracker the conductors share: the first '
                             'conductor\'s built-in tracker (default) or '
                             'opentracker')
    parser.add_argument('--nova', action='store_true',
                        help='Keystone, Glance, Placement and Nova in '
                             'front of ironic (needs the "nova" tox '
                             'environment: tools/cloud uses it)')
    parser.add_argument('--database', choices=('sqlite', 'mariadb'),
                        default='sqlite',
                        help='ironic\'s database (default sqlite; always '
                             'MariaDB with --nova)')
    parser.add_argument('--callback-timeout', type=int,
                        help='[conductor]deploy_callback_timeout: how long '
                             'a dead agent goes unnoticed (default 90, or '
                             '600 with --vms)')


def _add_deploy_args(parser):
    parser.add_argument('--interface', choices=('bittorrent', 'direct'),
                        help='deploy interface (default: bittorrent if '
                             'enabled, else direct)')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--image', help='a raw whole-disk image to deploy')
    group.add_argument('--image-size-mib', type=int, default=64,
                       help='size of the generated image (default 64)')
    parser.add_argument('--kill-agent', metavar='NODE',
                        help='fault case: SIGKILL this node\'s agent once '
                             'its image write has started')
    parser.add_argument('--kill-delay', type=float, default=0.0,
                        help='seconds after the write step starts before '
                             'the kill (default 0)')
    parser.add_argument('--timeout', type=int,
                        help='seconds for the deploy (default 900, or 3600 '
                             'with VMs)')
    parser.add_argument('--keep-disks', action='store_true',
                        help='do not discard the disks before deploying')
    parser.add_argument('--strict-verify', action='store_true',
                        default=None,
                        help='require the image\'s exact bytes on disk '
                             '(the default for bittorrent; for direct a '
                             'backup GPT moved to the end of the disk is '
                             'accepted by default)')


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog='python -m tests.lab.cloud',
        description='A local bare-metal cloud: real Ironic, real agents, '
                    'network namespaces and loop devices.')
    parser.add_argument('--state-dir', default=DEFAULT_STATE_DIR,
                        help='default: $IRONIC_BT_CLOUD_DIR or %(default)s')
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('up', help='build the cloud')
    _add_up_args(p)
    p.add_argument('--rate-mbit', type=float,
                   help='shape every link (nodes and conductor)')

    p = sub.add_parser('deploy', help='deploy nodes and verify them')
    _add_deploy_args(p)
    p.add_argument('--rate-mbit', type=float,
                   help='reshape every link before deploying')
    p.add_argument('--nodes', nargs='+', metavar='NODE',
                   help='nodes to deploy (default: all)')

    sub.add_parser('status', help='list nodes, states and errors')

    p = sub.add_parser('ssh', help='a shell (or a command) in a VM\'s '
                                   'ramdisk, as root, with the cloud\'s key')
    p.add_argument('vm', help='the VM, e.g. vm0')
    p.add_argument('remote', nargs=argparse.REMAINDER,
                   help='a command to run instead of a shell')

    p = sub.add_parser('down', help='tear everything down')
    p.add_argument('--purge', action='store_true',
                   help='also remove the logs and the state directory')

    p = sub.add_parser('demo', help='up, deploy, verify, down')
    _add_up_args(p)
    _add_deploy_args(p)
    p.add_argument('--rate-mbit', type=float,
                   help='shape every link (nodes and conductor)')
    p.add_argument('--keep', action='store_true',
                   help='leave the cloud up at the end')
    return parser.parse_args(argv)


def _reshape(cloud, rate_mbit):
    lab = cloud.lab
    lab.shape('gateway', rate_mbit)
    for name in cloud.node_names():
        lab.shape(name, rate_mbit)
    cloud.state['rate_mbit'] = rate_mbit
    cloud.save()


def _require_root():
    if os.geteuid() != 0:
        raise CloudError('the cloud needs root (namespaces, loop devices)')


def _up(args):
    cloud = Cloud(args.state_dir)
    try:
        nodes = args.nodes
        if nodes is None:
            nodes = 0 if args.vms else 3
        cloud.up(nodes=nodes, rate_mbit=args.rate_mbit,
                 disk_mib=args.disk_mib, subnet=args.subnet,
                 interfaces=args.interfaces,
                 callback_timeout=args.callback_timeout,
                 conductors=args.conductors, tracker=args.tracker,
                 nova=args.nova, database=args.database, vms=args.vms,
                 ipmi_vms=args.ipmi_vms)
    except BaseException:
        _log('up failed: tearing down (logs are kept in %s)',
             os.path.join(cloud.state_dir, 'logs'))
        down(cloud.state_dir)
        raise
    return cloud


def _deploy(cloud, args, names=None):
    if cloud.state.get('vms'):
        return _deploy_vms(cloud, args, names)
    if args.rate_mbit is not None and args.command == 'deploy':
        _reshape(cloud, args.rate_mbit)
    report = cloud.deploy(
        interface=args.interface, image=args.image,
        image_size_mib=args.image_size_mib, names=names,
        kill_agent=args.kill_agent, kill_delay=args.kill_delay,
        timeout=args.timeout or 900, wipe=not args.keep_disks,
        strict=args.strict_verify)
    # With --kill-agent, "ok" means the killed node failed (with an
    # error) and every other node is active and verified.
    return report['ok']


def _deploy_vms(cloud, args, names=None):
    names = names or sorted(cloud.state['vm_nodes'])
    unknown = set(names) - set(cloud.state['vm_nodes'])
    if unknown:
        raise CloudError('unknown VMs: %s' % ', '.join(sorted(unknown)))
    image = args.image or lab_instance.get()[0]
    report = cloud_vms.run(
        cloud, osc_env(cloud), names,
        args.interface or cloud.state['default_interface'], image,
        timeout=args.timeout or 3600, log=lambda msg: _log('%s', msg))
    print(json.dumps(report, sort_keys=True))
    return report['ok']


def main(argv=None):
    args = _parse(argv)
    try:
        _require_root()
        if args.command == 'up':
            print(_up(args).usage())
            return 0
        if args.command == 'down':
            problems = down(args.state_dir, purge=args.purge)
            for problem in problems:
                _log('teardown problem: %s', problem)
            _log('down: %s is clean', args.state_dir)
            return 1 if problems else 0
        if args.command == 'demo':
            return _demo(args)
        cloud = Cloud(args.state_dir).load()
        if args.command == 'status':
            cloud.status()
            return 0
        if args.command == 'deploy':
            return 0 if _deploy(cloud, args, args.nodes) else 1
        if args.command == 'ssh':
            cmd = cloud_vms.ssh_command(cloud, args.vm, args.remote)
            return subprocess.run(cmd).returncode
    except (cloud_vms.VmLabError, CloudError, net.LabError, TimeoutError) as e:
        _log('error: %s', e)
        return 2
    except KeyboardInterrupt:
        _log('interrupted')
        return 130
    return 0


def _demo(args):
    # SIGTERM would skip the finally below; make it an exception instead.
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
    cloud = None
    try:
        cloud = _up(args)
        print(cloud.usage())
        if cloud.state.get('nova'):
            # Through Nova, as its users deploy: servers of the flavor.
            return 0 if cloud_servers.demo(
                cloud, image_size_mib=args.image_size_mib,
                timeout=args.timeout or cloud_servers.BOOT_TIMEOUT) else 1
        if args.interface is None and \
                'bittorrent' not in cloud.state['deploy_interfaces']:
            _log('note: deploying with direct: %s',
                 cloud.state['interface_note'])
        return 0 if _deploy(cloud, args) else 1
    finally:
        if cloud is not None and not args.keep:
            _log('tearing down')
            for problem in down(cloud.state_dir):
                _log('teardown problem: %s', problem)


if __name__ == '__main__':
    sys.exit(main())
