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

"""The agent's private keys for SSL swarms: made here, never sent.

The conductor asks the agent for a public key (the ``bittorrent.swarm_key``
command, :mod:`ipa_extension.extension`), issues a certificate for it and
hands the certificate to the deploy step. The private key stays in this
process's memory: it is in no step argument, so in no log of IPA or
ironic and in no field of the node. An agent that restarts forgets its
keys; the conductor then asks again when it restarts the step.
"""

import collections
import threading

from cryptography import x509

from ironic_bt.common import certs
from ironic_bt.common.i18n import _

#: Keys kept at once: a step restarted by the conductor asks for a new one.
MAX_KEYS = 4

_lock = threading.Lock()
_keys = collections.OrderedDict()   # public key PEM -> private key


def new_public_key():
    """Make a private key, keep it, and return its public key (PEM)."""
    key = certs.new_private_key()
    public = certs.public_key_pem(key)
    with _lock:
        _keys[public] = key
        while len(_keys) > MAX_KEYS:
            _keys.popitem(last=False)
    return public


def credentials(node_uuid, ca, certificate):
    """The credentials for a certificate issued for one of our keys.

    :raises: certs.CertificateError if the certificate is unreadable or
        was issued for no key this agent holds.
    """
    try:
        cert = x509.load_pem_x509_certificate(certificate.encode())
    except (ValueError, AttributeError) as e:
        raise certs.CertificateError(
            _('The swarm certificate for node %(node)s is not a PEM '
              'certificate: %(err)s') % {'node': node_uuid, 'err': e})
    public = certs.public_pem(cert.public_key())
    with _lock:
        key = _keys.get(public)
    if key is None:
        raise certs.CertificateError(
            _('The swarm certificate for node %s was issued for a key this '
              'agent does not hold (did the agent restart since the '
              'conductor asked for it?). The conductor asks for a new key '
              'when it restarts the step.') % node_uuid)
    return certs.Credentials(ca=ca, certificate=certificate,
                             private_key=certs.private_key_pem(key))


def unseal(node_uuid, credentials, sealed, purpose):
    """Open a secret the conductor sealed for our swarm key.

    :param purpose: what it is (:data:`ironic_bt.common.certs.ANNOUNCE_KEY`,
        :data:`ironic_bt.common.certs.WEB_SEEDS`).
    :raises: certs.CertificateError naming the node and the purpose.
    """
    return _open(node_uuid, certs.load_private_key(credentials.private_key),
                 sealed, purpose)


def unseal_for(node_uuid, public_key, sealed, purpose):
    """Open a secret sealed for one of our keys, named by its public key.

    For what is sealed without a certificate (a plain swarm's config
    drive): the conductor names the key it sealed for.

    :raises: certs.CertificateError naming the node and the purpose.
    """
    with _lock:
        key = _keys.get(public_key or '')
    if key is None:
        raise certs.CertificateError(
            _('The %(what)s for node %(node)s was sealed for a key this '
              'agent does not hold (did the agent restart since the '
              'conductor asked for it?). The conductor asks for a new key '
              'when it restarts the step.')
            % {'what': purpose.decode(), 'node': node_uuid})
    return _open(node_uuid, key, sealed, purpose)


def _open(node_uuid, private_key, sealed, purpose):
    try:
        return certs.unseal(private_key, sealed, purpose).decode('ascii')
    except (certs.CertificateError, UnicodeDecodeError, TypeError) as e:
        raise certs.CertificateError(
            _('The %(what)s sealed for node %(node)s cannot be opened: '
              '%(err)s') % {'what': purpose.decode(), 'node': node_uuid,
                            'err': e})
