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

"""The local cloud's control plane: Keystone, Glance, Placement, Nova.

``tools/cloud up --nova`` starts, beside the all-in-one ironic:

* RabbitMQ from Debian, the message bus of Nova's services, with its own
  ``epmd``; AMQP on the lab bridge address, Erlang distribution on the
  loopback address only;
* Keystone (fernet tokens), bootstrapped with an
  ``admin`` user, a ``service`` project and a user per service;
* Placement and Glance (images on the local file system, sha256 hashes);
* Nova: the API, conductor, scheduler, and a compute service with the
  ironic driver;
* Neutron (:mod:`tests.lab.cloud_neutron`);
* ironic switched from noauth to Keystone, and every service in the
  catalog.

Each WSGI application runs in its own process under cheroot
(:mod:`tests.lab.wsgi_serve`), one thread pool each: the machine has two
cores. Every service's database is on the lab's MariaDB
(:mod:`tests.lab.cloud_mariadb`), under the state directory. Every process is
started through the lab, which records it, so ``down`` stops them all.
Nothing listens beyond the lab bridge address and loopback.
"""

import os
import secrets
import shlex
import shutil
import subprocess
import sys

from tests.lab import cloud_conf
from tests.lab import cloud_mariadb
from tests.lab import procs

BINDIR = cloud_conf.BINDIR
REGION = 'RegionOne'
KEYSTONE_PORT = 5000
PLACEMENT_PORT = 8778
GLANCE_PORT = 9292
NOVA_PORT = 8774
NEUTRON_PORT = 9696
AMQP_PORT = 5672
#: The services' users in the ``service`` project; each has the ``admin``
#: and ``service`` roles there (ironic and Nova's ironic driver need the
#: latter to see every node).
SERVICE_USERS = ('ironic', 'glance', 'placement', 'nova', 'neutron')
#: The resource class of the lab's nodes, and the flavor's.
RESOURCE_CLASS = 'baremetal-bt'
FLAVOR = 'baremetal-bt'
#: The trait of the lab's nodes, which the flavor requires, and the name
#: of the deploy template that ironic applies to its servers' deploys.
TRAIT = 'CUSTOM_BITTORRENT'
#: The write step's arguments in that template (see
#: ironic_bt.deploy.STEP_ARGSINFO): not the [bittorrent] options' values,
#: so that a test sees which ones a deploy got.
TEMPLATE_ARGS = {'linger_timeout': 45, 'stall_timeout': 240}
#: The databases on the lab's MariaDB (tests.lab.cloud_mariadb), and the
#: user of each.
DATABASES = {'keystone': 'keystone', 'glance': 'glance',
             'placement': 'placement', 'neutron': 'neutron',
             'nova_api': 'nova', 'nova_cell0': 'nova', 'nova_cell1': 'nova',
             'ironic': 'ironic'}
#: Seconds Nova's compute service is given to report every node.
HYPERVISOR_TIMEOUT = 240


class ControlPlaneError(RuntimeError):
    """A control plane service did not start (the message says which)."""


def available():
    """Why the control plane cannot start here, or None if it can."""
    for tool in ('nova-manage', 'keystone-manage', 'glance-manage',
                 'placement-manage'):
        if not os.path.exists(os.path.join(BINDIR, tool)):
            return ('%s is not installed next to %s: create the "nova" tox '
                    'environment (tox -e nova --notest)'
                    % (tool, sys.executable))
    if not os.path.exists('/usr/lib/rabbitmq/bin/rabbitmq-server'):
        return 'RabbitMQ is not installed: run tools/install-deps.sh'
    return None


def plan(cloud):
    """Passwords, addresses and directories of the control plane.

    Kept in the cloud's state (mode 0600 directory) so that later commands
    (deploy, status, down) reach the services.
    """
    gw = cloud.state['gateway_ip']
    index = _lab_index(gw)
    state = {
        'admin_password': secrets.token_urlsafe(18),
        'passwords': {user: secrets.token_urlsafe(18)
                      for user in SERVICE_USERS + ('rabbit',)},
        'auth_url': 'http://%s:%d/v3' % (gw, KEYSTONE_PORT),
        'urls': {
            'identity': 'http://%s:%d/v3' % (gw, KEYSTONE_PORT),
            'placement': 'http://%s:%d' % (gw, PLACEMENT_PORT),
            'image': 'http://%s:%d' % (gw, GLANCE_PORT),
            'compute': 'http://%s:%d/v2.1' % (gw, NOVA_PORT),
            'network': 'http://%s:%d' % (gw, NEUTRON_PORT),
            'baremetal': cloud.state['api_url'],
        },
        # Erlang's port mapper and distribution port are per lab, on the
        # loopback address, so that two clouds do not meet.
        'epmd_port': 44000 + index,
        'dist_port': 45000 + index,
        'rabbit_node': 'rabbit-lab%d@localhost' % index,
        'dir': cloud.path('control'),
    }
    cloud.state['nova'] = state
    os.makedirs(state['dir'], mode=0o700, exist_ok=True)
    cloud.save()
    _write_openrc(cloud)
    return state


def openrc_paths(cloud):
    """The admin's credential files: {'project': path, 'system': path}."""
    return {scope: control_path(cloud, 'admin-%s-openrc' % scope)
            for scope in ('project', 'system')}


def _write_openrc(cloud):
    """Credential files for the ``openstack`` CLI, readable by root only."""
    env = admin_auth(cloud)
    system = dict(env, OS_SYSTEM_SCOPE='all')
    del system['OS_PROJECT_NAME'], system['OS_PROJECT_DOMAIN_ID']
    for scope, values in (('project', env), ('system', system)):
        path = openrc_paths(cloud)[scope]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            for key, value in sorted(values.items()):
                f.write('export %s=%s\n' % (key, shlex.quote(value)))


database_url = cloud_mariadb.database_url


def _lab_index(gateway_ip):
    octets = [int(o) for o in gateway_ip.split('.')]
    return (octets[1] - 18) * 256 + octets[2]


def control_path(cloud, *parts):
    return os.path.join(cloud.state['nova']['dir'], *parts)


def auth_options(cloud, user):
    """keystoneauth password options for a service user."""
    nova = cloud.state['nova']
    return {
        'auth_type': 'password',
        'auth_url': nova['auth_url'],
        'username': user,
        'password': nova['passwords'][user],
        'project_name': 'service',
        'user_domain_id': 'default',
        'project_domain_id': 'default',
        'region_name': REGION,
    }


def authtoken(cloud, user):
    options = auth_options(cloud, user)
    options['www_authenticate_uri'] = cloud.state['nova']['auth_url']
    del options['region_name']
    return options


def admin_auth(cloud):
    """The cloud admin's credentials (``openstack`` CLI variables)."""
    nova = cloud.state['nova']
    return {
        'OS_AUTH_URL': nova['auth_url'],
        'OS_USERNAME': 'admin',
        'OS_PASSWORD': nova['admin_password'],
        'OS_PROJECT_NAME': 'admin',
        'OS_USER_DOMAIN_ID': 'default',
        'OS_PROJECT_DOMAIN_ID': 'default',
        'OS_REGION_NAME': REGION,
        'OS_IDENTITY_API_VERSION': '3',
    }


def connect(cloud, system=False):
    """An openstacksdk connection as the cloud admin.

    :param system: system scope (ironic's view of every node), else the
        ``admin`` project (what a tenant's admin sees: servers, images).
    """
    import openstack  # slow to import
    nova = cloud.state['nova']
    scope = ({'system_scope': 'all'} if system
             else {'project_name': 'admin',
                   'project_domain_id': 'default'})
    return openstack.connection.Connection(
        auth_url=nova['auth_url'], username='admin',
        password=nova['admin_password'], user_domain_id='default',
        region_name=REGION, **scope)


def ironic_sections(cloud):
    """What ironic's configuration needs to sit behind Keystone."""
    return {
        'DEFAULT': {'auth_strategy': 'keystone',
                    # Nova's ironic driver has the "service" role in the
                    # "service" project: let it see and deploy every node.
                    'rbac_service_role_elevated_access': True},
        'keystone_authtoken': authtoken(cloud, 'ironic'),
        'glance': auth_options(cloud, 'ironic'),
        'service_catalog': auth_options(cloud, 'ironic'),
        # Nova is told of power changes it did not ask for; the lab's
        # fake power never changes behind Nova's back.
        'nova': dict(auth_options(cloud, 'nova'),
                     send_power_notifications=False),
    }


# -- start --------------------------------------------------------------------


def start_before_ironic(cloud, lab):
    """RabbitMQ, Keystone with the catalog, Placement and Glance."""
    _start_rabbit(cloud, lab)
    _start_keystone(cloud, lab)
    _register(cloud)
    _start_placement(cloud, lab)
    _start_glance(cloud, lab)


def start_after_ironic(cloud, lab):
    """Nova's services; returns once Nova reports every node."""
    _start_nova(cloud, lab)


def run_tool(cloud, name, cmd, env=None):
    log_path = cloud.path('logs', '%s.log' % name)
    environ = dict(os.environ)
    environ.update(env or {})
    with open(log_path, 'ab') as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=environ).returncode
    if rc:
        raise ControlPlaneError('%s failed (exit %d): see %s'
                                % (' '.join(cmd[:3]), rc, log_path))


def serve(cloud, lab, name, app, port, env):
    """Start a WSGI application and wait for its port."""
    gw = cloud.state['gateway_ip']
    out = cloud.path('logs', '%s.out' % name)
    proc = cloud.start_service(
        lab, name, [sys.executable, '-m', 'tests.lab.wsgi_serve', '--bind',
                    gw, '--port', str(port), '--threads', '4', app],
        out, env=dict(env, PYTHONPATH=cloud_conf.REPO))
    procs.wait_port(gw, port, timeout=120, proc=proc, log_path=out)


def _start_rabbit(cloud, lab):
    nova = cloud.state['nova']
    gw = cloud.state['gateway_ip']
    base = control_path(cloud, 'rabbitmq')
    for sub in ('mnesia', 'log', 'home'):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    with open(os.path.join(base, 'enabled_plugins'), 'w') as f:
        f.write('[].\n')
    with open(os.path.join(base, 'rabbitmq.conf'), 'w') as f:
        f.write('listeners.tcp.default = %s:%d\n' % (gw, AMQP_PORT))
        f.write('default_user = nova\n')
        f.write('default_pass = %s\n' % nova['passwords']['rabbit'])
        f.write('loopback_users = none\n')
    dist = '-kernel inet_dist_use_interface {127,0,0,1}'
    env = {
        'HOME': os.path.join(base, 'home'),
        'ERL_EPMD_ADDRESS': '127.0.0.1',
        'ERL_EPMD_PORT': str(nova['epmd_port']),
        'RABBITMQ_NODENAME': nova['rabbit_node'],
        'RABBITMQ_DIST_PORT': str(nova['dist_port']),
        'RABBITMQ_MNESIA_BASE': os.path.join(base, 'mnesia'),
        'RABBITMQ_LOG_BASE': os.path.join(base, 'log'),
        'RABBITMQ_ENABLED_PLUGINS_FILE': os.path.join(base,
                                                      'enabled_plugins'),
        'RABBITMQ_CONFIG_FILE': os.path.join(base, 'rabbitmq'),
        'RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS': dist,
        'RABBITMQ_CTL_ERL_ARGS': dist,
    }
    # Our own port mapper, so that teardown stops it (rabbit would start
    # one that outlives it).
    epmd = shutil.which('epmd') or '/usr/lib/erlang/bin/epmd'
    cloud.start_service(
        lab, 'epmd', [epmd, '-address', '127.0.0.1', '-port',
                      str(nova['epmd_port'])],
        cloud.path('logs', 'epmd.log'), env=env)
    procs.wait_port('127.0.0.1', nova['epmd_port'], timeout=30)
    out = cloud.path('logs', 'rabbitmq.out')
    proc = cloud.start_service(
        lab, 'rabbitmq', ['/usr/lib/rabbitmq/bin/rabbitmq-server'], out,
        env=env)
    procs.wait_port(gw, AMQP_PORT, timeout=120, proc=proc, log_path=out)


def transport_url(cloud):
    nova = cloud.state['nova']
    return 'rabbit://nova:%s@%s:%d/' % (
        nova['passwords']['rabbit'], cloud.state['gateway_ip'], AMQP_PORT)


def _start_keystone(cloud, lab):
    nova = cloud.state['nova']
    conf = control_path(cloud, 'keystone.conf')
    keys = {name: control_path(cloud, 'keystone-%s' % name)
            for name in ('fernet', 'credential')}
    with open(conf, 'w') as f:
        f.write(cloud_conf.render({
            'DEFAULT': {'log_file': cloud.path('logs', 'keystone.log'),
                        'use_stderr': False},
            'database': {'connection': database_url(cloud, 'keystone')},
            'token': {'provider': 'fernet'},
            'fernet_tokens': {'key_repository': keys['fernet']},
            'fernet_receipts': {'key_repository': keys['fernet']},
            'credential': {'key_repository': keys['credential']},
        }))
    manage = [os.path.join(BINDIR, 'keystone-manage'), '--config-file',
              conf]
    run_tool(cloud, 'keystone-manage', manage + ['db_sync'])
    for what in ('fernet_setup', 'credential_setup'):
        run_tool(cloud, 'keystone-manage', manage + [
            what, '--keystone-user', 'root', '--keystone-group', 'root'])
    url = nova['urls']['identity']
    run_tool(cloud, 'keystone-manage', manage + [
        'bootstrap', '--bootstrap-password', nova['admin_password'],
        '--bootstrap-region-id', REGION,
        '--bootstrap-public-url', url, '--bootstrap-internal-url', url,
        '--bootstrap-admin-url', url])
    serve(cloud, lab, 'keystone', 'keystone.wsgi.api:application',
          KEYSTONE_PORT, {'OS_KEYSTONE_CONFIG_FILES': conf})


def _register(cloud):
    """The service project, the services' users, the catalog."""
    conn = connect(cloud)
    identity = conn.identity
    project = identity.create_project(name='service', domain_id='default')
    roles = {r.name: r for r in identity.roles()}
    if 'service' not in roles:
        roles['service'] = identity.create_role(name='service')
    for user in SERVICE_USERS:
        u = identity.create_user(
            name=user, password=cloud.state['nova']['passwords'][user],
            domain_id='default', default_project_id=project.id)
        for role in ('admin', 'service'):
            identity.assign_project_role_to_user(project, u, roles[role])
    names = {'placement': 'placement', 'image': 'glance',
             'compute': 'nova', 'baremetal': 'ironic',
             'network': 'neutron'}
    for kind, name in names.items():
        service = identity.create_service(name=name, type=kind)
        for interface in ('public', 'internal'):
            identity.create_endpoint(
                service_id=service.id, interface=interface,
                url=cloud.state['nova']['urls'][kind], region_id=REGION)


def _start_placement(cloud, lab):
    conf_dir = control_path(cloud, 'placement')
    os.makedirs(conf_dir, exist_ok=True)
    conf = os.path.join(conf_dir, 'placement.conf')
    with open(conf, 'w') as f:
        f.write(cloud_conf.render({
            'DEFAULT': {'log_file': cloud.path('logs', 'placement.log'),
                        'use_stderr': False},
            'placement_database': {
                'connection': database_url(cloud, 'placement')},
            'api': {'auth_strategy': 'keystone'},
            'keystone_authtoken': authtoken(cloud, 'placement'),
        }))
    run_tool(cloud, 'placement-manage', [
        os.path.join(BINDIR, 'placement-manage'), '--config-file', conf,
        'db', 'sync'])
    serve(cloud, lab, 'placement', 'placement.wsgi.api:application',
          PLACEMENT_PORT, {'OS_PLACEMENT_CONFIG_DIR': conf_dir})


def _start_glance(cloud, lab):
    conf_dir = control_path(cloud, 'glance')
    stores = {name: control_path(cloud, 'glance-%s' % name)
              for name in ('images', 'staging', 'tasks')}
    for path in [conf_dir] + list(stores.values()):
        os.makedirs(path, exist_ok=True)
    paste = os.path.join(os.path.dirname(BINDIR), 'etc', 'glance',
                         'glance-api-paste.ini')
    shutil.copy(paste, conf_dir)
    conf = os.path.join(conf_dir, 'glance-api.conf')
    with open(conf, 'w') as f:
        f.write(cloud_conf.render({
            'DEFAULT': {'log_file': cloud.path('logs', 'glance.log'),
                        'use_stderr': False,
                        'enabled_backends': 'fs:file',
                        # Ironic and the agents check sha256.
                        'hashing_algorithm': 'sha256'},
            'glance_store': {'default_backend': 'fs'},
            'fs': {'filesystem_store_datadir': stores['images']},
            'os_glance_staging_store': {
                'filesystem_store_datadir': stores['staging']},
            'os_glance_tasks_store': {
                'filesystem_store_datadir': stores['tasks']},
            'database': {'connection': database_url(cloud, 'glance')},
            'paste_deploy': {'flavor': 'keystone',
                             'config_file': os.path.join(
                                 conf_dir, 'glance-api-paste.ini')},
            'keystone_authtoken': authtoken(cloud, 'glance'),
        }))
    run_tool(cloud, 'glance-manage', [
        os.path.join(BINDIR, 'glance-manage'), '--config-file', conf,
        'db_sync'])
    serve(cloud, lab, 'glance', 'glance.wsgi.api:application',
          GLANCE_PORT, {'OS_GLANCE_CONFIG_DIR': conf_dir})


def _nova_conf(cloud):
    gw = cloud.state['gateway_ip']
    state = control_path(cloud, 'nova-state')
    os.makedirs(os.path.join(state, 'locks'), exist_ok=True)
    return {
        'DEFAULT': {
            'log_dir': cloud.path('logs'),
            'use_stderr': False,
            'debug': True,
            'state_path': state,
            'transport_url': transport_url(cloud),
            'compute_driver': 'ironic.IronicDriver',
            'my_ip': gw,
            'host': 'lab-compute',
            # Bare metal: nothing reserved on the "hypervisor".
            'reserved_host_memory_mb': 0,
            'force_config_drive': True,
            # The nodes' inventory is refreshed this often (seconds): a
            # node enrolled while Nova looked is offered within seconds.
            'update_resources_interval': 10,
        },
        'api': {'auth_strategy': 'keystone'},
        'api_database': {'connection': database_url(cloud, 'nova_api')},
        'database': {'connection': database_url(cloud, 'nova_cell1')},
        'keystone_authtoken': authtoken(cloud, 'nova'),
        'service_user': dict(auth_options(cloud, 'nova'),
                             send_service_user_token=True),
        'placement': auth_options(cloud, 'nova'),
        'glance': auth_options(cloud, 'nova'),
        'ironic': auth_options(cloud, 'nova'),
        'neutron': auth_options(cloud, 'neutron'),
        'oslo_concurrency': {'lock_path': os.path.join(state, 'locks')},
        'scheduler': {'discover_hosts_in_cells_interval': 5},
        'wsgi': {'api_paste_config': control_path(cloud, 'nova',
                                                  'api-paste.ini')},
    }


def _start_nova(cloud, lab):
    conf_dir = control_path(cloud, 'nova')
    os.makedirs(conf_dir, exist_ok=True)
    shutil.copy(os.path.join(os.path.dirname(BINDIR), 'etc', 'nova',
                             'api-paste.ini'), conf_dir)
    conf = os.path.join(conf_dir, 'nova.conf')
    sections = _nova_conf(cloud)
    with open(conf, 'w') as f:
        f.write(cloud_conf.render(sections))
    # The API's own log (its process is the WSGI server's, not nova-api).
    with open(os.path.join(conf_dir, 'nova-api.conf'), 'w') as f:
        f.write(cloud_conf.render(dict(sections, DEFAULT=dict(
            sections['DEFAULT'], log_file='nova-api.log'))))
    # The compute service reaches the databases through the conductor
    # only, as on a real compute host.
    compute_conf = os.path.join(conf_dir, 'nova-compute.conf')
    del sections['api_database'], sections['database']
    with open(compute_conf, 'w') as f:
        f.write(cloud_conf.render(sections))
    manage = [os.path.join(BINDIR, 'nova-manage'), '--config-file', conf]
    run_tool(cloud, 'nova-manage', manage + ['api_db', 'sync'])
    run_tool(cloud, 'nova-manage', manage + [
        'cell_v2', 'map_cell0', '--database_connection',
        database_url(cloud, 'nova_cell0')])
    run_tool(cloud, 'nova-manage', manage + [
        'cell_v2', 'create_cell', '--name', 'cell1'])
    run_tool(cloud, 'nova-manage', manage + ['db', 'sync'])
    serve(cloud, lab, 'nova-api', 'nova.wsgi.osapi_compute:application',
          NOVA_PORT, {'OS_NOVA_CONFIG_DIR': conf_dir,
                      'OS_NOVA_CONFIG_FILES': 'api-paste.ini;nova-api.conf'})
    for service in ('conductor', 'scheduler', 'compute'):
        name = 'nova-%s' % service
        cloud.start_service(
            lab, name, [os.path.join(BINDIR, name), '--config-file',
                        compute_conf if service == 'compute' else conf],
            cloud.path('logs', '%s.out' % name))
    cloud.state['nova']['conf'] = conf
    cloud.save()


def wait_hypervisors(cloud, count, timeout=HYPERVISOR_TIMEOUT):
    """Wait until Nova can schedule a server to every node.

    Nova's compute service turns each available ironic node into a
    compute node and a resource provider with one unit of the node's
    resource class, not reserved; then its host is mapped to the cell (what
    ``nova-manage cell_v2 discover_hosts`` does, and the API's hypervisor
    list shows).

    :returns: how many nodes Nova reports.
    """
    _wait_inventory(cloud, count, timeout)
    run_tool(cloud, 'nova-manage', [
        os.path.join(BINDIR, 'nova-manage'), '--config-file',
        cloud.state['nova']['conf'], 'cell_v2', 'discover_hosts'])
    conn = connect(cloud)
    return procs.wait_for(
        lambda: len(list(conn.compute.hypervisors())) >= count and count,
        60, 1, 'Nova\'s API to list %d hypervisors' % count)


def resource_class_name():
    """The nodes' resource class as Placement names it."""
    return 'CUSTOM_' + RESOURCE_CLASS.upper().replace('-', '_')


def create_flavor(cloud):
    """The bare-metal flavor: one whole node of the lab's class.

    Nova schedules bare metal by the resource class alone: the flavor asks
    for one unit of it and for none of the standard resources it still
    has to name (ram, vcpus and disk must be at least 1).

    :returns: the flavor's ID.
    """
    conn = connect(cloud)
    flavor = conn.compute.create_flavor(name=FLAVOR, ram=1, vcpus=1,
                                        disk=1)
    conn.compute.create_flavor_extra_specs(flavor, {
        'resources:%s' % resource_class_name(): '1',
        'resources:VCPU': '0',
        'resources:MEMORY_MB': '0',
        'resources:DISK_GB': '0',
        # Only nodes with the trait, and ironic applies the deploy
        # template of the same name (see create_deploy_template).
        'trait:%s' % TRAIT: 'required',
    })
    return flavor.id


def create_deploy_template(cloud):
    """The deploy template of the flavor's trait: the write step's tuning.

    Nova puts the traits a flavor requires into the node's
    ``instance_info``; ironic then runs the steps of the deploy templates
    named like them, here the bittorrent write step with its arguments.
    """
    conn = connect(cloud, system=True)
    conn.baremetal.create_deploy_template(name=TRAIT, steps=[{
        'interface': 'deploy', 'step': 'write_image_bittorrent',
        'args': dict(TEMPLATE_ARGS), 'priority': 80}])


def _traits(conn, provider):
    """The traits Placement holds for a resource provider."""
    response = conn.placement.get(
        '/resource_providers/%s/traits' % provider.id,
        microversion='1.6')
    response.raise_for_status()
    return response.json()['traits']


def _wait_inventory(cloud, count, timeout):
    conn = connect(cloud)
    rc = resource_class_name()

    def ready():
        providers = list(conn.placement.resource_providers())
        with_rc = 0
        for provider in providers:
            inventories = conn.placement.resource_provider_inventories(
                provider)
            # Nova reserves the whole unit of a node it may not deploy
            # yet (one that was still being enrolled when it looked), and
            # copies the node's traits, which the flavor requires.
            if any(i.resource_class == rc and i.total - i.reserved >= 1
                   for i in inventories) and TRAIT in _traits(conn,
                                                              provider):
                with_rc += 1
        return with_rc if with_rc >= count else None
    return procs.wait_for(ready, timeout, 2,
                          'Nova to report %d bare-metal nodes with %s and '
                          '%s in Placement' % (count, rc, TRAIT),
                          log_path=cloud.path('logs', 'nova-compute.log'))
