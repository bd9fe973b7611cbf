#!/bin/bash
# Install what ironic-bt's tests, demo and benchmark need on a fresh Debian
# machine, as root: system tools for namespaces, loop devices and disk
# images, and tox in its own virtualenv (.venv-tox). With --vms, also what
# tox -e vms needs: diskimage-builder's tools, QEMU and libvirt, dnsmasq and
# iPXE, ipmitool, syslinux, and the headers the libvirt bindings build with.
set -euo pipefail

cd "$(dirname "$0")/.."

PACKAGES=(
    iproute2 iputils-ping util-linux mount fdisk e2fsprogs dosfstools gdisk parted
    kmod procps psmisc bsdextrautils ethtool curl libfuse2 tcpdump
    rtorrent qbittorrent-nox opentracker
    rabbitmq-server genisoimage mariadb-server mariadb-client udev
    python3 python3-venv python3-pip git
)
# tox -e vms: the deploy ramdisk's and the instance image's builds
# (diskimage-builder, syslinux), and the VM lab (tests/lab/cloud_vms.py).
if [[ "${1:-}" == "--vms" ]]; then
    PACKAGES+=(debootstrap sudo cpio qemu-utils qemu-system-x86
               libvirt-daemon-system libvirt-clients libvirt-dev python3-dev
               pkg-config gcc dnsmasq-base ipxe ipmitool
               extlinux syslinux-common)
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
    export DEBIAN_FRONTEND=noninteractive
    # Packages with a service (rabbitmq-server, mariadb-server, udev) must
    # not start it: the local cloud runs its own RabbitMQ, bound to the lab
    # bridge only, and its own MariaDB, on a unix socket only.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Loop devices: the kernel module may not be loaded on a fresh machine.
modprobe loop 2>/dev/null || true

if [[ ! -x .venv-tox/bin/tox ]]; then
    python3 -m venv .venv-tox
    .venv-tox/bin/pip install -q --upgrade pip
    .venv-tox/bin/pip install -q 'tox>=4.0.0'
fi
