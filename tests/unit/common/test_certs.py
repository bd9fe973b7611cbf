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

import datetime
import os
import shutil
import stat
import tempfile

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import serialization
from cryptography import x509
import testtools

from ironic_bt.common import certs

HOUR = datetime.timedelta(hours=1)


class TestAuthority(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def test_made_once_then_loaded_with_a_private_key_file(self):
        path = os.path.join(self.dir, 'ca')
        first = certs.Authority.load_or_create(path)
        again = certs.Authority.load_or_create(path)
        self.assertEqual(first.certificate, again.certificate)
        mode = stat.S_IMODE(os.stat(os.path.join(path, 'ca.key')).st_mode)
        self.assertEqual(0o600, mode)
        self.assertEqual(0o700, stat.S_IMODE(os.stat(path).st_mode))

    def test_key_of_another_authority_is_named(self):
        path = os.path.join(self.dir, 'ca')
        certs.Authority.load_or_create(path)
        other = os.path.join(self.dir, 'other')
        certs.Authority.load_or_create(other)
        os.replace(os.path.join(other, 'ca.key'),
                   os.path.join(path, 'ca.key'))
        exc = self.assertRaises(certs.CertificateError,
                                certs.Authority.load_or_create, path)
        self.assertIn(os.path.join(path, 'ca.key'), str(exc))
        self.assertIn('does not belong to the certificate', str(exc))

    def test_key_without_its_certificate_is_never_replaced(self):
        path = os.path.join(self.dir, 'ca')
        certs.Authority.load_or_create(path)
        os.unlink(os.path.join(path, 'ca.pem'))
        with open(os.path.join(path, 'ca.key'), 'rb') as f:
            key = f.read()
        exc = self.assertRaises(certs.CertificateError,
                                certs.Authority.load_or_create, path)
        self.assertIn('ca.key exists without', str(exc))
        with open(os.path.join(path, 'ca.key'), 'rb') as f:
            self.assertEqual(key, f.read())

    def test_expired_authority_issues_nothing(self):
        authority = certs.Authority.create(
            lifetime=-certs.CLOCK_SKEW / 2)
        exc = self.assertRaises(
            certs.CertificateError, authority.credentials, 'node-1', HOUR)
        self.assertIn('expired on', str(exc))
        self.assertIn('node-1', str(exc))

    def test_same_key_other_encoding_same_secret(self):
        one = certs.Authority.create()
        # The key as another tool might write it (traditional SEC1 PEM).
        pem = one._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption())
        two = certs.Authority(one._cert, serialization.load_pem_private_key(
            pem, None))
        self.assertEqual(one.derive_secret(b'x'), two.derive_secret(b'x'))
        self.assertNotEqual(one.derive_secret(b'x'), one.derive_secret(b'y'))

    def test_missing_key_is_named_not_remade(self):
        path = os.path.join(self.dir, 'ca')
        certs.Authority.load_or_create(path)
        os.unlink(os.path.join(path, 'ca.key'))
        exc = self.assertRaises(certs.CertificateError,
                                certs.Authority.load_or_create, path)
        self.assertIn('ca.key does not exist', str(exc))

    def test_issued_certificate_names_any_torrent_and_expires(self):
        authority = certs.Authority.create()
        creds = authority.credentials('node-1', HOUR)
        creds.check()
        cert = x509.load_pem_x509_certificate(creds.certificate.encode())
        san = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        self.assertEqual(['*'], san.get_values_for_type(x509.DNSName))
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertEqual(HOUR + certs.CLOCK_SKEW, lifetime)

    def test_rsa_key_is_refused(self):
        key = rsa.generate_private_key(65537, 2048)
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        exc = self.assertRaises(certs.CertificateError,
                                certs.Authority.create().issue, 'node-1',
                                pem, HOUR)
        self.assertIn('node-1', str(exc))
        self.assertIn('not a P-256 elliptic curve key', str(exc))

    def test_private_key_never_in_repr(self):
        creds = certs.Authority.create().credentials('node-1', HOUR)
        self.assertNotIn('PRIVATE KEY', repr(creds))
        self.assertNotIn(creds.private_key[40:80], repr(creds))
        self.assertIn('CERTIFICATE', repr(creds))

    def test_key_that_does_not_match_is_refused(self):
        authority = certs.Authority.create()
        one = authority.credentials('node-1', HOUR)
        two = authority.credentials('node-2', HOUR)
        mixed = certs.Credentials(one.ca, one.certificate, two.private_key)
        exc = self.assertRaises(certs.CertificateError, mixed.check)
        self.assertIn('not issued for this private key', str(exc))

    def test_garbage_key_message_does_not_echo_it(self):
        authority = certs.Authority.create()
        one = authority.credentials('node-1', HOUR)
        secret = 'not-a-key-SECRET-MATERIAL'
        bad = certs.Credentials(one.ca, one.certificate, secret)
        exc = self.assertRaises(certs.CertificateError, bad.check)
        self.assertNotIn(secret, str(exc))


class TestSeal(testtools.TestCase):

    def test_only_the_keys_holder_opens_it(self):
        key = certs.new_private_key()
        sealed = certs.seal(certs.public_key_pem(key), b'announce-key',
                            certs.ANNOUNCE_KEY)
        self.assertNotIn('announce-key', sealed)
        self.assertEqual(b'announce-key',
                         certs.unseal(key, sealed, certs.ANNOUNCE_KEY))
        exc = self.assertRaises(certs.CertificateError, certs.unseal,
                                certs.new_private_key(), sealed,
                                certs.ANNOUNCE_KEY)
        self.assertIn('sealed for another key', str(exc))
        # Nor does it open as another secret.
        self.assertRaises(certs.CertificateError, certs.unseal, key, sealed,
                          certs.WEB_SEEDS)

    def test_altered_is_refused(self):
        key = certs.new_private_key()
        sealed = certs.seal(certs.public_key_pem(key), b'announce-key',
                            certs.ANNOUNCE_KEY)
        altered = sealed[:-6] + ('A' if sealed[-6] != 'A' else 'B') + \
            sealed[-5:]
        self.assertRaises(certs.CertificateError, certs.unseal, key, altered,
                          certs.ANNOUNCE_KEY)


class TestImageRoots(testtools.TestCase):

    def test_every_holder_of_the_authority_derives_the_same_root(self):
        one = certs.Authority.create()
        # Another conductor: the same key, its own certificate objects.
        two = certs.Authority(one._cert, one._key)
        ih = 'ab' * 20
        root_one, root_two = one.for_image(ih), two.for_image(ih)
        # A node certified by one conductor is trusted by the other's
        # seeder, whose root is its own derivation.
        creds = root_one.credentials('node-1', HOUR)
        certs.Credentials(root_two.certificate, creds.certificate,
                          creds.private_key).check()

    def test_a_certificate_opens_one_image_only(self):
        authority = certs.Authority.create()
        creds = authority.for_image('ab' * 20).credentials('node-1', HOUR)
        other_root = authority.for_image('cd' * 20).certificate
        exc = self.assertRaises(
            certs.CertificateError, certs.Credentials(
                other_root, creds.certificate, creds.private_key).check)
        self.assertIn('was not issued by the swarm root', str(exc))
        # Nor by the deployment's own root.
        self.assertRaises(certs.CertificateError, certs.Credentials(
            authority.certificate, creds.certificate,
            creds.private_key).check)
