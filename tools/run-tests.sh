#!/bin/bash
# The test command: unit, functional (real libtorrent peers in network
# namespaces on loop devices) and end-to-end (real Ironic and IPA) tests,
# and the local cloud with Keystone, Glance, Placement and Nova in front.
# Run as root on Debian: bash tools/run-tests.sh
set -euo pipefail

cd "$(dirname "$0")/.."
bash tools/install-deps.sh
exec .venv-tox/bin/tox -e pep8,py3,functional,e2e,nova "$@"
