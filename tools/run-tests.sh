#!/bin/bash
# The test command: lint and the layer contracts, then unit, functional
# (real libtorrent peers in network namespaces on loop devices) and
# end-to-end (real Ironic and IPA) tests in one environment, and the local
# cloud with Keystone, Glance, Placement and Nova in front.
# Run as root on Debian: bash tools/run-tests.sh [TOX OPTIONS]
set -euo pipefail

cd "$(dirname "$0")/.."
bash tools/install-deps.sh
tox=.venv-tox/bin/tox
"$tox" "$@" -e pep8
# One environment for the three suites: tox 4 would recreate an
# environment shared under several names (see tox.ini).
"$tox" "$@" -e py3 -- tests/unit
"$tox" "$@" -e py3 -- --timeout=600 tests/functional
"$tox" "$@" -e py3 -- --timeout=1800 tests/e2e
exec "$tox" "$@" -e nova
