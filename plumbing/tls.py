"""Mutual TLS between the shop's processes: the credentials a server and a
channel use, and the checks that make a wrong file fail at start, saying
which, rather than at the first handshake."""

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from plumbing.access import SPIFFE_PREFIX
from plumbing.config import ConfigError, TlsConfig


def certificate_identity(certificate: bytes, private_key: bytes, ca_certificates: bytes) -> str:
    """The process name in the certificate's spiffe://shop/<name> URI SAN,
    once the key is the certificate's and one of the CAs signed it."""
    try:
        cert = x509.load_pem_x509_certificate(certificate)
    except ValueError:
        raise ConfigError("TLS_CERT_FILE holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError):
        raise ConfigError("TLS_KEY_FILE holds no unencrypted PEM private key") from None
    try:
        authorities = x509.load_pem_x509_certificates(ca_certificates)
    except ValueError:
        raise ConfigError("TLS_CA_FILE holds no PEM certificate") from None
    if key.public_key() != cert.public_key():
        raise ConfigError("TLS_KEY_FILE is not the private key of TLS_CERT_FILE")
    if not any(_issued_by(cert, authority) for authority in authorities):
        raise ConfigError("TLS_CERT_FILE was not issued by a CA of TLS_CA_FILE")
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        uris = []
    names = [uri.removeprefix(SPIFFE_PREFIX) for uri in uris if uri.startswith(SPIFFE_PREFIX)]
    if len(uris) != 1 or len(names) != 1:
        raise ConfigError(f"TLS_CERT_FILE must name one identity, a URI SAN {SPIFFE_PREFIX}<name>; it has {uris}")
    return names[0]


def _issued_by(cert: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(authority)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Serve with the process's certificate; every client must present one
    issued by the CA."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate)], root_certificates=tls.ca_certificates, require_client_auth=True
    )


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """Present the process's certificate; trust servers issued by the CA
    (and check their name against the address, as usual)."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_certificates, private_key=tls.private_key, certificate_chain=tls.certificate
    )
