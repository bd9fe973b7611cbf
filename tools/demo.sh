#!/bin/bash
# The main job: a local bare-metal cloud (real Ironic, real IPA nodes in
# network namespaces) deployed over BitTorrent, verified and torn down.
# Run as root on Debian: bash tools/demo.sh [--nodes N]
set -euo pipefail

cd "$(dirname "$0")/.."
bash tools/install-deps.sh
# The test environment, .tox/py3 (kept between runs), then the demo in it.
.venv-tox/bin/tox -e py3 --notest
exec .tox/py3/bin/python -m tests.lab.cloud demo "$@"
