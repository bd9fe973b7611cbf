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

"""The devstack plugin, run against a stub of devstack's environment.

devstack itself needs a whole machine, so the plugin's phases run here in
bash with ``errexit`` and ``nounset``, after a stub that defines the
functions and variables devstack and ironic's plugin give it: a misspelt
function or variable fails the test. ``iniset``/``iniget`` work on a real
file, ``$IRONIC_CMD`` answers ``node list`` with a fixed set of nodes and
records the rest, and ``sudo`` records instead of running.
"""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PLUGIN = os.path.join(REPO, 'devstack', 'plugin.sh')
SETTINGS = os.path.join(REPO, 'devstack', 'settings')

STUB = textwrap.dedent('''\
    set -o errexit -o nounset -o pipefail
    DEST=$WORK
    TOP_DIR=$WORK
    STACK_USER=stack
    OFFLINE=False
    TARGET_BRANCH=master
    HOST_TOPOLOGY_ROLE=all
    IRONIC_CONF_FILE=$WORK/ironic.conf
    IRONIC_STATE_PATH=$WORK/state
    IRONIC_HTTP_SERVER=192.0.2.10
    IRONIC_IP_VERSION=4
    IRONIC_ENABLED_DEPLOY_INTERFACES=direct,fake
    IRONIC_ENABLED_HARDWARE_TYPES=ipmi,redfish,fake-hardware
    IRONIC_BAREMETAL_BASIC_OPS=True
    IRONIC_CMD="record ironic"
    IRONIC_DEPLOY_KERNEL=$WORK/ipa.kernel
    IRONIC_DEPLOY_RAMDISK=$WORK/ipa.initramfs
    IRONIC_DEPLOY_ISO=$WORK/ipa.iso
    IRONIC_DIB_RAMDISK_OPTIONS=debian-minimal
    IRONIC_DIB_DHCP_TIMEOUT=30
    IRONIC_DIB_RAMDISK_RELEASE=bookworm
    IRONIC_PYTHON_AGENT_BUILDER_DIR=$WORK/ipa-builder
    IRONIC_PYTHON_AGENT_DIR=$WORK/ironic-python-agent
    IRONIC_ANSIBLE_SSH_KEY=$WORK/key

    record() { echo "$*" >> $WORK/calls; }
    echo_summary() { echo "summary: $*"; }
    die() { echo "die: $*" >&2; exit 1; }
    trueorfalse() {
        local default=$1 name=$2 value
        value=${!name:-$default}
        case "${value,,}" in
            1|yes|true|on) echo True ;;
            *) echo False ;;
        esac
    }
    is_service_enabled() { [[ ",$ENABLED_SERVICES," == *",$1,"* ]]; }
    setup_develop() { record setup_develop "$@"; }
    sudo() { record sudo "$@"; }
    is_deploy_iso_required() { return 1; }
    is_ansible_deploy_enabled() { return 1; }
    install_diskimage_builder() { record install_diskimage_builder; }
    setup_ipa_builder() { record setup_ipa_builder; }
    iniset() {
        python3 - "$@" <<'PY'
    import configparser, sys
    path, section, option, value = sys.argv[1:5]
    c = configparser.RawConfigParser()
    c.read(path)
    if section != 'DEFAULT' and not c.has_section(section):
        c.add_section(section)
    c.set(section, option, value)
    with open(path, 'w') as f:
        c.write(f)
    PY
    }
    iniget() {
        python3 - "$@" <<'PY'
    import configparser, sys
    path, section, option = sys.argv[1:4]
    c = configparser.RawConfigParser()
    c.read(path)
    print(c.get(section, option, fallback=''))
    PY
    }
    ''')

#: What "openstack baremetal node list --fields uuid driver provision_state
#: -f value" prints in the stub.
NODES = ('n-ipmi ipmi available\n'
         'n-redfish redfish manageable\n'
         'n-fake fake-hardware available\n'
         'n-busy ipmi active\n')


def _run_phase(tmp_path, *phases, env=None):
    (tmp_path / 'ironic' / 'devstack' / 'lib').mkdir(parents=True,
                                                     exist_ok=True)
    # ironic's plugin library: sourced by ours, empty in the stub.
    (tmp_path / 'ironic' / 'devstack' / 'lib' / 'ironic').write_text('')
    script = STUB + textwrap.dedent('''\
        record() {
            echo "$*" >> $WORK/calls
            if [[ "$*" == "ironic node list"* ]]; then
                cat $WORK/nodes
            fi
        }
        source %(settings)s
        ''') % {'settings': SETTINGS}
    for phase in phases:
        script += 'source %s %s\n' % (PLUGIN, ' '.join(phase))
    (tmp_path / 'nodes').write_text(NODES)
    environ = {'PATH': os.environ['PATH'], 'WORK': str(tmp_path),
               'ENABLED_SERVICES': 'ir-api,ir-cond'}
    environ.update(env or {})
    return subprocess.run(['bash', '-c', script], env=environ,
                          capture_output=True, text=True)


def _ini(tmp_path):
    import configparser
    c = configparser.RawConfigParser()
    c.read(tmp_path / 'ironic.conf')
    return c


def test_bashate_finds_nothing():
    # As devstack and ironic run it: long lines (E006) allowed, a missing
    # shebang (E005) and "local" hiding an exit code (E042) errors.
    bashate = os.path.join(os.path.dirname(sys.executable), 'bashate')
    result = subprocess.run(
        [bashate, '-v', '-iE006', '-eE005,E042', PLUGIN, SETTINGS],
        capture_output=True, text=True)
    found = [line for line in result.stdout.splitlines()
             if ': E' in line or ': W' in line]
    assert result.returncode == 0 and not found, result.stdout


def test_stack_configures_ironic_and_moves_the_nodes(tmp_path):
    result = _run_phase(
        tmp_path, ('stack', 'install'), ('stack', 'post-config'),
        ('stack', 'extra'),
        env={'IRONIC_BT_DEFAULT_DEPLOY_INTERFACE': 'True',
             'IRONIC_BT_BUILD_RAMDISK': 'False'})
    assert result.returncode == 0, result.stderr
    conf = _ini(tmp_path)
    assert conf.get('DEFAULT', 'enabled_deploy_interfaces') == \
        'direct,fake,bittorrent'
    assert conf.get('DEFAULT', 'enabled_hardware_types') == \
        'ipmi,redfish,fake-hardware,bittorrent-ipmi,bittorrent-redfish'
    assert conf.get('bittorrent', 'advertise_host') == '192.0.2.10'
    assert conf.get('bittorrent', 'tracker_port') == '6969'
    assert conf.get('bittorrent', 'data_dir') == \
        str(tmp_path / 'state' / 'bittorrent')
    calls = (tmp_path / 'calls').read_text().splitlines()
    assert 'setup_develop %s/ironic-bt' % tmp_path in calls
    # The ipmi and redfish nodes that can change move; the active node
    # and the fake one do not.
    assert ('ironic node set n-ipmi --driver bittorrent-ipmi '
            '--deploy-interface bittorrent') in calls
    assert ('ironic node set n-redfish --driver bittorrent-redfish '
            '--deploy-interface bittorrent') in calls
    assert not [c for c in calls if 'n-busy' in c or 'n-fake' in c
                if c.startswith('ironic node set')]
    assert 'stays ipmi' in result.stdout
    assert ('sudo iptables -I INPUT -d 192.0.2.10 -p tcp --dport 6881 '
            '-j ACCEPT') in calls


def test_unstack_and_clean_undo_it(tmp_path):
    result = _run_phase(tmp_path, ('unstack',), ('clean',),
                        env={'IRONIC_BT_BUILD_RAMDISK': 'True'})
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / 'calls').read_text().splitlines()
    assert ('sudo iptables -D INPUT -d 192.0.2.10 -p tcp --dport 6969 '
            '-j ACCEPT') in calls
    assert 'sudo rm -rf %s/state/bittorrent' % tmp_path in calls
    assert ('sudo rm -f %(w)s/ipa.kernel %(w)s/ipa.initramfs %(w)s/ipa.iso'
            % {'w': tmp_path}) in calls


def test_ramdisk_build_runs_the_builder_with_our_element(tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    # disk-image-create and git, as the ramdisk build calls them.
    (bin_dir / 'disk-image-create').write_text(textwrap.dedent('''\
        #!/bin/bash
        echo "disk-image-create $* ELEMENTS_PATH=$ELEMENTS_PATH \\
        DIB_REPOREF_ironic_bt=$DIB_REPOREF_ironic_bt" >> $WORK/calls
        while [[ $# -gt 0 ]]; do
            if [[ "$1" == "-o" ]]; then out=$2; fi
            shift
        done
        touch $out.kernel $out.initramfs
        '''))
    (bin_dir / 'disk-image-create').chmod(0o755)
    result = _run_phase(
        tmp_path, ('stack', 'install'),
        env={'IRONIC_BT_BUILD_RAMDISK': 'True',
             'IRONIC_BT_RAMDISK_REF': 'abc123',
             'PATH': '%s:%s' % (bin_dir, os.environ['PATH'])})
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / 'calls').read_text()
    assert 'ironic-python-agent-ramdisk ironic-bt' in calls
    assert ('ELEMENTS_PATH=%(w)s/ipa-builder/dib:%(w)s/ironic-bt/devstack/'
            'elements' % {'w': tmp_path}) in calls
    assert 'DIB_REPOREF_ironic_bt=abc123' in calls
    assert (tmp_path / 'ipa.kernel').exists()
    assert (tmp_path / 'ipa.initramfs.ironic-bt').read_text() == 'abc123\n'
