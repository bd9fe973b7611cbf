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

"""Serve an OpenStack WSGI application for the local cloud.

``python -m tests.lab.wsgi_serve --bind IP --port PORT MODULE:ATTR``

Keystone, Glance, Placement and the Nova API ship WSGI applications
(``keystone.wsgi.api:application`` and so on) and leave the server to the
deployment. This one is cheroot, which ironic already depends on: a
thread pool in one process, bound to one address. The applications read
their configuration files from environment variables
(``OS_KEYSTONE_CONFIG_FILES``, ``OS_GLANCE_CONFIG_DIR``, ...), which the
caller sets. They also parse ``sys.argv`` with oslo.config, so the
server's own arguments are removed before the application is imported.
"""

import argparse
import importlib
import signal
import sys

from cheroot import wsgi


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bind', required=True)
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--threads', type=int, default=4)
    parser.add_argument('app', help='MODULE:ATTRIBUTE of the application')
    args = parser.parse_args(argv)
    module, _sep, attribute = args.app.partition(':')
    sys.argv = [module]
    application = getattr(importlib.import_module(module),
                          attribute or 'application')
    server = wsgi.Server((args.bind, args.port), application,
                         numthreads=args.threads,
                         server_name='%s on %s:%d' % (module, args.bind,
                                                      args.port))

    def stop(signum, frame):
        server.stop()
    signal.signal(signal.SIGTERM, stop)
    try:
        server.start()
    except KeyboardInterrupt:
        server.stop()


if __name__ == '__main__':
    main()
