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

"""Certificates of SSL swarms: a deployment's authority and its members.

An SSL torrent accepts only peers whose certificate chains to the torrent's
root certificate; every other connection is dropped before a byte of the
image moves (see :mod:`ironic_bt.common.swarm`). The root is an
:class:`Authority` the conductors keep. Each member of a swarm (a seeder, an
agent) holds a private key that never leaves the host that made it, and a
short-lived certificate the authority issued for its public key.

This module imports neither ironic nor ironic-python-agent: agents make
their keys with it, conductors issue certificates with it.
"""

import base64
import contextlib
import dataclasses
import datetime
import fcntl
import os
import re
import tempfile

from cryptography import exceptions as crypto_exc
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import aead
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf import hkdf
from cryptography.hazmat.primitives import serialization
from cryptography import x509
from cryptography.x509.oid import NameOID

from ironic_bt.common.i18n import _

#: libtorrent checks that a peer's certificate names the torrent (its
#: name, or ``*``) in a SubjectAltName DNS entry. Every torrent of a
#: deployment has the same fixed name, so certificates name ``*``: what
#: scopes them is the authority and their lifetime.
SWARM_NAME = '*'
#: Certificates are valid from a day before they are issued: deploy
#: ramdisks often run without NTP, and a node whose clock is behind the
#: conductor's must accept them. Their end of validity bounds exposure.
CLOCK_SKEW = datetime.timedelta(days=1)
#: Lifetime of a deployment's authority made by the conductor.
AUTHORITY_LIFETIME = datetime.timedelta(days=3650)

CA_CERT_FILE = 'ca.pem'
CA_KEY_FILE = 'ca.key'

_PEM_RE = re.compile(r'(-----BEGIN ([A-Z ]+)-----\r?\n'
                     r'[A-Za-z0-9+/=\r\n]+'
                     r'-----END \2-----\r?\n?)')


class CertificateError(Exception):
    """A key or certificate is unusable."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a swarm member needs: the root it trusts, its certificate, key.

    All three are PEM text. The private key is left out of ``repr``, so
    that logging the object cannot leak it.
    """

    ca: str
    certificate: str
    private_key: str = dataclasses.field(repr=False)

    def to_pem(self):
        """One PEM bundle: our certificate, the root, our private key."""
        return ''.join(part if part.endswith('\n') else part + '\n'
                       for part in (self.certificate, self.ca,
                                    self.private_key))

    def save(self, path):
        """Write :meth:`to_pem` to ``path``, mode 0600 from the start."""
        _write_new(path, self.to_pem().encode('ascii'), 0o600)

    @classmethod
    def load(cls, path):
        """Read what :meth:`save` wrote.

        :raises: CertificateError naming ``path``.
        """
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise CertificateError(_('Cannot read %(p)s: %(e)s')
                                   % {'p': path, 'e': e})
        return cls.from_pem(text, source=path)

    @classmethod
    def from_pem(cls, text, source='<credentials>'):
        """Read what :meth:`to_pem` wrote.

        :raises: CertificateError naming ``source``.
        """
        blocks = _PEM_RE.findall(text)
        certs_ = [b for b, kind in blocks if kind == 'CERTIFICATE']
        keys_ = [b for b, kind in blocks if kind.endswith('PRIVATE KEY')]
        if len(certs_) != 2 or len(keys_) != 1:
            raise CertificateError(
                _('%(src)s must hold two certificates (this member\'s, then '
                  'the swarm root) and one private key; it holds '
                  '%(c)d and %(k)d.')
                % {'src': source, 'c': len(certs_), 'k': len(keys_)})
        return cls(ca=certs_[1], certificate=certs_[0], private_key=keys_[0])

    def check(self, now=None):
        """Check that the three belong together and are valid now.

        :raises: CertificateError saying which part is wrong.
        """
        try:
            root = x509.load_pem_x509_certificate(self.ca.encode())
        except ValueError as e:
            raise CertificateError(
                _('The swarm root certificate is not a PEM certificate: '
                  '%s') % e)
        try:
            cert = x509.load_pem_x509_certificate(self.certificate.encode())
        except ValueError as e:
            raise CertificateError(
                _('The swarm certificate is not a PEM certificate: %s') % e)
        key = load_private_key(self.private_key)
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise CertificateError(
                _('The swarm certificate was not issued for this private '
                  'key.'))
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, crypto_exc.InvalidSignature):
            raise CertificateError(
                _('The swarm certificate (%(subject)s) was not issued by '
                  'the swarm root certificate (%(root)s).')
                % {'subject': cert.subject.rfc4514_string(),
                   'root': root.subject.rfc4514_string()})
        now = now or _now()
        if not (cert.not_valid_before_utc <= now
                <= cert.not_valid_after_utc):
            raise CertificateError(
                _('The swarm certificate (%(subject)s) is valid from '
                  '%(start)s to %(end)s, not now (%(now)s): check the '
                  'clocks of the conductor and of this host.')
                % {'subject': cert.subject.rfc4514_string(),
                   'start': cert.not_valid_before_utc.isoformat(),
                   'end': cert.not_valid_after_utc.isoformat(),
                   'now': now.isoformat()})


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _public_der(public_key):
    return public_key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo)


def new_private_key():
    """A new private key (EC P-256: libtorrent refuses small DH/RSA)."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode('ascii')


def public_key_pem(key):
    """The PEM of the public half of ``key``: what an authority signs."""
    return public_pem(key.public_key())


def public_pem(public_key):
    return public_key.public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo).decode('ascii')


def load_private_key(pem):
    try:
        return serialization.load_pem_private_key(pem.encode(), None)
    except (ValueError, TypeError) as e:
        # Never include the PEM itself in the message.
        raise CertificateError(
            _('The swarm private key is not an unencrypted PEM key: %s')
            % type(e).__name__)


@contextlib.contextmanager
def _locked(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_new(path, data, mode):
    """Write a file through a temporary name of our own, then rename it."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: What the conductor seals for an agent (:func:`seal`'s purpose).
ANNOUNCE_KEY = b'announce key'
WEB_SEEDS = b'web seeds'
CONFIGDRIVE = b'config drive'

_SEAL_INFO = b'ironic-bt sealed secret v1'
_POINT = 65     # an uncompressed P-256 point
_NONCE = 12


def _seal_key(shared, purpose):
    return hkdf.HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                     info=_SEAL_INFO + b'\0' + purpose).derive(shared)


def seal(public_key, secret, purpose):
    """Encrypt a small secret so that only a key's holder can read it.

    ECIES: an ephemeral P-256 key, ECDH with ``public_key``, HKDF-SHA256
    and AES-GCM. What travels (step arguments, which IPA logs) is useless
    without the agent's private key, which never leaves the node.

    :param public_key: PEM of the recipient's EC (P-256) public key.
    :param secret: bytes.
    :param purpose: bytes naming what it is; :func:`unseal` must be given
        the same, so that one sealed secret cannot stand for another.
    :returns: ASCII text (base64).
    """
    try:
        recipient = serialization.load_pem_public_key(public_key.encode())
    except (ValueError, TypeError, AttributeError) as e:
        raise CertificateError(_('Cannot seal a secret for a key that is '
                                 'not a PEM public key: %s') % e)
    if not (isinstance(recipient, ec.EllipticCurvePublicKey)
            and isinstance(recipient.curve, ec.SECP256R1)):
        raise CertificateError(_('Cannot seal a secret for a %s key: a '
                                 'P-256 key is needed.')
                               % type(recipient).__name__)
    ephemeral = ec.generate_private_key(recipient.curve)
    key = _seal_key(ephemeral.exchange(ec.ECDH(), recipient), purpose)
    nonce = os.urandom(_NONCE)
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962,
        serialization.PublicFormat.UncompressedPoint)
    box = aead.AESGCM(key).encrypt(nonce, secret, point)
    return base64.b64encode(point + nonce + box).decode('ascii')


def unseal(private_key, sealed, purpose):
    """Decrypt what :func:`seal` made for ``private_key``'s public key.

    :raises: CertificateError if it was sealed for another key or altered.
    """
    try:
        raw = base64.b64decode(sealed, validate=True)
        point, nonce, box = (raw[:_POINT], raw[_POINT:_POINT + _NONCE],
                             raw[_POINT + _NONCE:])
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(
            private_key.curve, point)
        key = _seal_key(private_key.exchange(ec.ECDH(), ephemeral),
                        purpose)
        return aead.AESGCM(key).decrypt(nonce, box, point)
    except (ValueError, TypeError, AttributeError, crypto_exc.InvalidTag):
        raise CertificateError(_('A sealed secret cannot be opened: it was '
                                 'sealed for another key or purpose, or '
                                 'altered.'))


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         common_name[:64])])


class Authority:
    """The certificate authority of one deployment's swarms."""

    def __init__(self, certificate, private_key):
        self._cert = certificate
        self._key = private_key

    @classmethod
    def create(cls, common_name='ironic-bt swarm authority',
               lifetime=AUTHORITY_LIFETIME, key=None, not_after=None):
        """A new self-signed authority.

        :param key: its private key (a new one by default).
        :param not_after: when it expires (``lifetime`` from now by
            default).
        """
        key = key or new_private_key()
        name = _name(common_name)
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(not_after or now + lifetime)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                               critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                    key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path, key_path):
        """Load an authority from PEM files.

        :raises: CertificateError naming the file that is unusable.
        """
        for path in (cert_path, key_path):
            if not os.path.isfile(path):
                raise CertificateError(
                    _('The swarm authority file %s does not exist.') % path)
        try:
            with open(cert_path, 'rb') as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError) as e:
            raise CertificateError(
                _('Cannot read the swarm authority certificate %(path)s: '
                  '%(err)s') % {'path': cert_path, 'err': e})
        try:
            with open(key_path, 'rb') as f:
                key = serialization.load_pem_private_key(f.read(), None)
        except (OSError, ValueError, TypeError) as e:
            raise CertificateError(
                _('Cannot read the swarm authority key %(path)s (an '
                  'unencrypted PEM key): %(err)s')
                % {'path': key_path, 'err': type(e).__name__})
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise CertificateError(
                _('The swarm authority key %(key)s does not belong to the '
                  'certificate %(cert)s.')
                % {'key': key_path, 'cert': cert_path})
        return cls(cert, key)

    @classmethod
    def load_or_create(cls, directory):
        """The authority kept in ``directory``, made there on first use.

        The key is written with mode 0600 in a directory of mode 0700,
        under a lock, so that processes starting together (conductors
        sharing the directory, commands) make one authority. Several
        conductors whose nodes share swarms need the same two files.
        """
        cert_path = os.path.join(directory, CA_CERT_FILE)
        key_path = os.path.join(directory, CA_KEY_FILE)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with _locked(os.path.join(directory, '.lock')):
            if os.path.exists(cert_path):
                return cls.load(cert_path, key_path)
            if os.path.exists(key_path):
                # Never replace a key someone put there (the operator
                # copying the files of another conductor, key first).
                raise CertificateError(
                    _('%(key)s exists without %(cert)s: copy the '
                      'authority\'s certificate there too, or remove the '
                      'key to make a new authority.')
                    % {'key': key_path, 'cert': cert_path})
            authority = cls.create()
            key_pem = authority._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption())
            _write_new(key_path, key_pem, 0o600)
            _write_new(cert_path, authority.certificate.encode(), 0o644)
        return authority

    @property
    def certificate(self):
        """The root certificate, PEM: every swarm member trusts it."""
        return self._cert.public_bytes(
            serialization.Encoding.PEM).decode('ascii')

    def issue(self, common_name, public_key, lifetime):
        """A certificate for a member's public key.

        :param common_name: who it is for (a node UUID, "seeder").
        :param public_key: the member's public key, PEM.
        :param lifetime: a ``timedelta``; the certificate expires then.
        :returns: the certificate, PEM.
        :raises: CertificateError if the public key is unusable.
        """
        try:
            key = serialization.load_pem_public_key(public_key.encode())
        except (ValueError, TypeError, AttributeError) as e:
            raise CertificateError(
                _('Cannot issue a swarm certificate for %(name)s: the '
                  'public key is not a PEM public key: %(err)s')
                % {'name': common_name, 'err': e})
        if not (isinstance(key, ec.EllipticCurvePublicKey)
                and isinstance(key.curve, ec.SECP256R1)):
            raise CertificateError(
                _('Cannot issue a swarm certificate for %(name)s: the '
                  'public key is %(kind)s, not a P-256 elliptic curve key.')
                % {'name': common_name, 'kind': type(key).__name__})
        now = _now()
        if now >= self._cert.not_valid_after_utc:
            raise CertificateError(
                _('Cannot issue a swarm certificate for %(name)s: the swarm '
                  'authority (%(subject)s) expired on %(end)s. Make a new '
                  'one (move ca.pem and ca.key away) on every conductor.')
                % {'name': common_name,
                   'subject': self._cert.subject.rfc4514_string(),
                   'end': self._cert.not_valid_after_utc.isoformat()})
        not_after = min(now + lifetime, self._cert.not_valid_after_utc)
        cert = (x509.CertificateBuilder()
                .subject_name(_name(common_name))
                .issuer_name(self._cert.subject)
                .public_key(key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False,
                                                     path_length=None),
                               critical=True)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName(SWARM_NAME)]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier
                               .from_issuer_public_key(
                                   self._key.public_key()), critical=False)
                .sign(self._key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM).decode('ascii')

    def derive_secret(self, purpose):
        """A secret only holders of the authority's key can compute.

        Conductors that share the authority share it too, with nothing
        more to configure: the announce keys of their nodes
        (:func:`ironic_bt.common.publication.announce_key`) use it.

        :param purpose: bytes naming what the secret is for.
        """
        # From the private number, not an encoding of the key: conductors
        # holding the same key in another file format agree.
        value = self._key.private_numbers().private_value
        return hkdf.HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                         info=b'ironic-bt derived secret\0' + purpose).derive(
            value.to_bytes(66, 'big'))

    def for_image(self, info_hash):
        """The root of one image's swarm, derived from this authority.

        A certificate it issues opens that image's swarm only: a node
        deployed with one tenant's image cannot fetch another's from the
        seeder. Its key is derived from this authority's, so every
        conductor holding the authority derives the same root key, and
        the certificates each issues verify against the others' roots
        (same subject, same key); the info-hash does not change.

        :param info_hash: the torrent's hex v1 info-hash.
        """
        value = self._key.private_numbers().private_value
        seed = hkdf.HKDF(algorithm=hashes.SHA256(), length=48, salt=None,
                         info=b'ironic-bt image root\0'
                         + info_hash.encode('ascii')).derive(
            value.to_bytes(66, 'big'))
        # P-256's group order; a 384-bit number reduced into [1, n - 1].
        order = int('ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9ca'
                    'c2fc632551', 16)
        key = ec.derive_private_key(
            int.from_bytes(seed, 'big') % (order - 1) + 1, ec.SECP256R1())
        return Authority.create('ironic-bt swarm %s' % info_hash, key=key,
                                not_after=self._cert.not_valid_after_utc)

    def credentials(self, common_name, lifetime):
        """Credentials with a key made here (the seeder's, a test's)."""
        key = new_private_key()
        return Credentials(
            ca=self.certificate,
            certificate=self.issue(common_name, public_key_pem(key),
                                   lifetime),
            private_key=private_key_pem(key))
