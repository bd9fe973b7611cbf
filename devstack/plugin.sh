#!/bin/bash
# plugin.sh - devstack plugin for ironic-bt, the BitTorrent deploy interface
# of ironic.
#
# It extends ironic's own plugin and uses its functions and variables, so
# enable it after ironic:
#
#   enable_plugin ironic https://opendev.org/openstack/ironic
#   enable_plugin ironic-bt https://opendev.org/openstack/ironic-bt

# devstack plugin contract defined at:
# https://docs.openstack.org/devstack/latest/plugins.html

echo_summary "ironic-bt devstack plugin.sh called: $1/${2:-}"
source $DEST/ironic/devstack/lib/ironic

# Save trace setting
_XTRACE_IRONIC_BT=$(set +o | grep xtrace)
set +o xtrace

# _ironic_bt_has LIST ITEM - whether the comma-separated LIST holds ITEM
function _ironic_bt_has {
    local list=${1// /}
    [[ ",$list," == *",$2,"* ]]
}

# _ironic_bt_add LIST ITEM - print the comma-separated LIST with ITEM
# appended, unless it is already there
function _ironic_bt_add {
    local list=${1// /}
    if _ironic_bt_has "$list" "$2"; then
        echo "$list"
    elif [[ -z "$list" ]]; then
        echo "$2"
    else
        echo "$list,$2"
    fi
}

function _ironic_bt_advertise_host {
    echo "${IRONIC_BT_ADVERTISE_HOST:-$IRONIC_HTTP_SERVER}"
}

# install_ironic_bt() - Install ironic-bt into ironic's Python environment
function install_ironic_bt {
    # No [conductor] extra: ironic is installed from $IRONIC_DIR already,
    # and the extra could let pip replace it with a release from PyPI.
    setup_develop $IRONIC_BT_DIR
}

# build_ironic_bt_ramdisk() - Build the deploy ramdisk with ironic-bt in it
#
# The kernel and ramdisk are written where ironic's plugin looks for them
# ($IRONIC_DEPLOY_KERNEL and $IRONIC_DEPLOY_RAMDISK), before its stack/extra
# phase: it uploads existing files instead of building or downloading its
# own. Ironic's build_ipa_dib_ramdisk cannot be reused because it sets
# ELEMENTS_PATH to ironic-python-agent-builder's elements only.
function build_ironic_bt_ramdisk {
    local stamp=$IRONIC_DEPLOY_RAMDISK.ironic-bt
    local ref
    local dib_options=$IRONIC_DIB_RAMDISK_OPTIONS
    local tempdir

    ref=${IRONIC_BT_RAMDISK_REF:-$(git -C $IRONIC_BT_DIR rev-parse HEAD)}
    # The stamp records the ironic-bt commit in the ramdisk.
    if [[ "$(cat $stamp 2>/dev/null)" == "$ref" \
            && -e "$IRONIC_DEPLOY_KERNEL" && -e "$IRONIC_DEPLOY_RAMDISK" ]]; then
        if ! is_deploy_iso_required || [[ -e "$IRONIC_DEPLOY_ISO" ]]; then
            echo "The deploy ramdisk already has ironic-bt $ref"
            return 0
        fi
    fi
    if [[ "$OFFLINE" == "True" ]]; then
        die $LINENO "The ironic-bt deploy ramdisk cannot be built in OFFLINE mode"
    fi

    if ! type -P disk-image-create > /dev/null; then
        install_diskimage_builder
    fi
    setup_ipa_builder

    if is_deploy_iso_required; then
        dib_options+=" iso"
    fi
    if is_ansible_deploy_enabled; then
        dib_options+=" devuser"
    fi

    local -a dib_env=(
        "ELEMENTS_PATH=$IRONIC_PYTHON_AGENT_BUILDER_DIR/dib:$IRONIC_BT_ELEMENTS_DIR"
        "DIB_CLOUD_INIT_DATASOURCES=ConfigDrive,openstack"
        "DIB_DHCP_TIMEOUT=$IRONIC_DIB_DHCP_TIMEOUT"
        "DIB_RELEASE=$IRONIC_DIB_RAMDISK_RELEASE"
        "DIB_REPOLOCATION_requirements=$DEST/requirements"
        "DIB_REPOREF_requirements=$TARGET_BRANCH"
        "DIB_REPOLOCATION_ironic_bt=$IRONIC_BT_DIR"
        "DIB_REPOREF_ironic_bt=$ref"
        "DIB_DEVUSER_PWDLESS_SUDO=yes"
        "DIB_DEVUSER_AUTHORIZED_KEYS=$IRONIC_ANSIBLE_SSH_KEY.pub"
    )
    if [[ -d "$IRONIC_PYTHON_AGENT_DIR" ]]; then
        dib_env+=(
            "DIB_REPOLOCATION_ironic_python_agent=$IRONIC_PYTHON_AGENT_DIR"
            "DIB_REPOREF_ironic_python_agent=$TARGET_BRANCH"
        )
    fi

    echo_summary "Building the deploy ramdisk with ironic-bt $ref"
    tempdir=$(mktemp -d --tmpdir=${DEST})
    # dib_options is a list of elements: word splitting is intended.
    env "${dib_env[@]}" disk-image-create $dib_options \
        -x -o "$tempdir/ironic-agent" \
        ironic-python-agent-ramdisk ironic-bt
    chmod -R +r $tempdir
    mv "$tempdir/ironic-agent.kernel" "$IRONIC_DEPLOY_KERNEL"
    mv "$tempdir/ironic-agent.initramfs" "$IRONIC_DEPLOY_RAMDISK"
    if is_deploy_iso_required; then
        mv "$tempdir/ironic-agent.iso" "$IRONIC_DEPLOY_ISO"
    fi
    rm -rf $tempdir
    echo "$ref" > "$stamp"
}

# configure_ironic_bt() - Enable the bittorrent deploy interface and its
# hardware types in ironic.conf, and set the [bittorrent] options
function configure_ironic_bt {
    local deploy_ifaces
    local hw_types
    local hw_type
    local data_dir=${IRONIC_BT_DATA_DIR:-$IRONIC_STATE_PATH/bittorrent}
    local listen_host=$IRONIC_BT_TRACKER_LISTEN_HOST

    deploy_ifaces=$(iniget $IRONIC_CONF_FILE DEFAULT enabled_deploy_interfaces)
    deploy_ifaces=${deploy_ifaces:-$IRONIC_ENABLED_DEPLOY_INTERFACES}
    deploy_ifaces=$(_ironic_bt_add "$deploy_ifaces" bittorrent)
    iniset $IRONIC_CONF_FILE DEFAULT enabled_deploy_interfaces "$deploy_ifaces"

    # A hardware type whose power or management interfaces are not enabled
    # stops the conductor, so only shadow the types that are enabled.
    hw_types=$(iniget $IRONIC_CONF_FILE DEFAULT enabled_hardware_types)
    hw_types=${hw_types:-$IRONIC_ENABLED_HARDWARE_TYPES}
    for hw_type in ipmi redfish; do
        if _ironic_bt_has "$hw_types" $hw_type; then
            hw_types=$(_ironic_bt_add "$hw_types" bittorrent-$hw_type)
        fi
    done
    iniset $IRONIC_CONF_FILE DEFAULT enabled_hardware_types "$hw_types"

    # NOTE: [DEFAULT]default_deploy_interface is left alone even when
    # IRONIC_BT_DEFAULT_DEPLOY_INTERFACE is True: the ipmi and redfish
    # hardware types refuse bittorrent, and a default that an enabled
    # hardware type refuses stops the conductor.

    if [[ -z "$listen_host" ]]; then
        # The seeder listens on both address families by default; the
        # tracker only on the family of its listen address.
        if [[ "$IRONIC_IP_VERSION" == "6" ]]; then
            listen_host="::"
        else
            listen_host=0.0.0.0
        fi
    fi
    iniset $IRONIC_CONF_FILE bittorrent advertise_host "$(_ironic_bt_advertise_host)"
    iniset $IRONIC_CONF_FILE bittorrent tracker_listen_host "$listen_host"
    iniset $IRONIC_CONF_FILE bittorrent tracker_port $IRONIC_BT_TRACKER_PORT
    iniset $IRONIC_CONF_FILE bittorrent seeder_port $IRONIC_BT_SEEDER_PORT
    if [[ -n "$IRONIC_BT_TRACKER_URL" ]]; then
        iniset $IRONIC_CONF_FILE bittorrent tracker_url "$IRONIC_BT_TRACKER_URL"
    fi
    # The seeder hard-links published images from ironic's image cache,
    # which lives in $IRONIC_STATE_PATH: keep data_dir on that file system.
    iniset $IRONIC_CONF_FILE bittorrent data_dir "$data_dir"
    sudo install -d -o $STACK_USER "$data_dir"
}

# _ironic_bt_iptables ACTION - insert (-I) or delete (-D) the rules that let
# agents reach the conductor's tracker and seeder
function _ironic_bt_iptables {
    local action=$1
    local advertise_host
    local cmd=iptables
    local port
    local ports=$IRONIC_BT_SEEDER_PORT

    advertise_host=$(_ironic_bt_advertise_host)
    if [[ -z "$IRONIC_BT_TRACKER_URL" ]]; then
        ports+=" $IRONIC_BT_TRACKER_PORT"
    fi
    if [[ "$IRONIC_IP_VERSION" == "6" ]]; then
        cmd=ip6tables
    fi
    for port in $ports; do
        sudo $cmd $action INPUT -d $advertise_host -p tcp --dport $port \
            -j ACCEPT || true
    done
}

# ironic_bt_set_default_deploy_interface() - Move the nodes devstack enrolled
# to the bittorrent hardware types and deploy interface
function ironic_bt_set_default_deploy_interface {
    local nodes
    local node
    local driver
    local state

    nodes=$($IRONIC_CMD node list --fields uuid driver provision_state -f value)
    while read -r node driver state; do
        case "$driver" in
            ipmi|redfish)
                ;;
            *)
                continue
                ;;
        esac
        case "$state" in
            enroll|manageable|available)
                echo "Node $node: $driver -> bittorrent-$driver"
                $IRONIC_CMD node set $node --driver bittorrent-$driver \
                    --deploy-interface bittorrent
                ;;
            *)
                echo "WARNING: node $node stays $driver: its hardware type" \
                    "cannot change in provision state $state"
                ;;
        esac
    done <<< "$nodes"
}

# cleanup_ironic_bt() - Remove what the plugin created
function cleanup_ironic_bt {
    local data_dir=${IRONIC_BT_DATA_DIR:-$IRONIC_STATE_PATH/bittorrent}

    sudo rm -rf "$data_dir"
    # Force a fresh build of the ramdisk on the next run.
    if [[ "$IRONIC_BT_BUILD_RAMDISK" == "True" ]]; then
        rm -f $IRONIC_DEPLOY_RAMDISK.ironic-bt
        sudo rm -f $IRONIC_DEPLOY_KERNEL $IRONIC_DEPLOY_RAMDISK \
            $IRONIC_DEPLOY_ISO
    fi
}

if is_service_enabled ir-cond; then
    if [[ "$1" == "stack" ]]; then
        if [[ "$2" == "install" ]]; then
        # stack/install - Called after the layer 1 and 2 projects source and
        # their dependencies have been installed

            echo_summary "Installing ironic-bt"
            install_ironic_bt
            if [[ "$IRONIC_BT_BUILD_RAMDISK" == "True" \
                    && "$HOST_TOPOLOGY_ROLE" != "subnode" ]]; then
                build_ironic_bt_ramdisk
            fi

        elif [[ "$2" == "post-config" ]]; then
        # stack/post-config - Called after the layer 1 and 2 services have been
        # configured. All configuration files for enabled services should exist
        # at this point.

            echo_summary "Configuring ironic-bt"
            configure_ironic_bt

        elif [[ "$2" == "extra" ]]; then
        # stack/extra - Called near the end after layer 1 and 2 services have
        # been started. Ironic's plugin has enrolled its nodes by now.

            # Ironic's plugin manages the firewall only for its virtual
            # bare metal setup; follow it.
            if [[ "$IRONIC_BAREMETAL_BASIC_OPS" == "True" ]]; then
                _ironic_bt_iptables -I
            fi
            if [[ "$IRONIC_BT_DEFAULT_DEPLOY_INTERFACE" == "True" ]]; then
                echo_summary "Making bittorrent the nodes' deploy interface"
                ironic_bt_set_default_deploy_interface
            fi
        fi
    fi

    if [[ "$1" == "unstack" ]]; then
    # unstack - Called by unstack.sh before other services are shut down.

        if [[ "$IRONIC_BAREMETAL_BASIC_OPS" == "True" ]]; then
            _ironic_bt_iptables -D
        fi
    fi

    if [[ "$1" == "clean" ]]; then
    # clean - Called by clean.sh before other services are cleaned, but after
    # unstack.sh has been called.

        cleanup_ironic_bt
    fi
fi

# Restore xtrace
$_XTRACE_IRONIC_BT
