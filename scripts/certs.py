"""python -m scripts.certs DIR [--days N] [--namespace NS] [--k8s-secrets]

A local certificate authority and one certificate per process of the shop, for
mutual TLS between them (API.md, "Service-to-service TLS"):

  DIR/ca.crt, DIR/ca.key          the CA (kept and reused when DIR has one)
  DIR/<name>.crt, DIR/<name>.key  gateway, order, inventory, payment

Each certificate names its process by the URI SAN spiffe://shop/<name> (the
identity the servers' caller table knows), and the addresses it is reached at
as DNS SANs (localhost and its Kubernetes Service's names) and IP SANs
(127.0.0.1, ::1); it is good for both ends of a call (serverAuth, clientAuth).
Running it again issues fresh certificates under the same CA: rotation, which
each process picks up at its next start.

--k8s-secrets also prints, on stdout, one kubernetes.io/tls Secret per process
(<service>-tls: tls.crt, tls.key, ca.crt; the CA's key stays in DIR), for
`kubectl apply -n shop -f -`.
"""

import argparse
import datetime as dt
import ipaddress
import json
import os
import pathlib
import sys
from base64 import b64encode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plumbing.access import IDENTITIES, spiffe_id

# The Kubernetes Service in front of each process (k8s/).
SERVICE_NAMES = {
    "gateway": "api-gateway",
    "order": "order-service",
    "inventory": "inventory-service",
    "payment": "payment-service",
}
CA_DAYS = 10 * 365
DEFAULT_DAYS = 365
# Issued a little in the past, so a clock slightly behind still accepts it.
BACKDATE = dt.timedelta(minutes=5)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: small, and the quickest handshake TLS offers.
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: pathlib.Path, key) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)


def _write_cert(path: pathlib.Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """A CA signs certificates; a process signs its handshakes."""
    return x509.KeyUsage(
        digital_signature=not signs_certificates, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=signs_certificates,
        crl_sign=signs_certificates, encipher_only=False, decipher_only=False,
    )


def _sign(subject: x509.Name, key, issuer: x509.Name, issuer_key, days: int, extensions) -> x509.Certificate:
    """A certificate for `key`, valid from a little before now for `days`."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shop"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def certificate_authority(directory: pathlib.Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in `directory`, made there first if it has none."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return cert, key
    key = _new_key()
    name = _name("shop local CA")
    cert = _sign(
        name,
        key,
        name,
        key,
        CA_DAYS,
        [(x509.BasicConstraints(ca=True, path_length=0), True), (_key_usage(signs_certificates=True), True)],
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert, key


def dns_names(name: str, namespace: str) -> list[str]:
    service = SERVICE_NAMES.get(name, name)
    return ["localhost", service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], name: str, namespace: str = "shop", days: int = DEFAULT_DAYS
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for the process `name`, signed by the CA (and expiring no later than it)."""
    ca_cert, ca_key = ca
    key = _new_key()
    alt_names = [
        x509.UniformResourceIdentifier(spiffe_id(name)),
        *(x509.DNSName(dns) for dns in dns_names(name, namespace)),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    days = min(days, (ca_cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days)
    cert = _sign(
        _name(name),
        key,
        ca_cert.subject,
        ca_key,
        days,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(signs_certificates=False), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
            (x509.SubjectAlternativeName(alt_names), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), False),
        ],
    )
    return cert, key


def make_certificates(
    directory: str | os.PathLike, names=IDENTITIES, namespace: str = "shop", days: int = DEFAULT_DAYS
) -> pathlib.Path:
    """The CA (reused if there) and a fresh certificate per name, in `directory`."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = certificate_authority(directory)
    for name in names:
        cert, key = issue(ca, name, namespace, days)
        _write_key(directory / f"{name}.key", key)
        _write_cert(directory / f"{name}.crt", cert)
    return directory


def kubernetes_secrets(directory: pathlib.Path, names=IDENTITIES) -> dict:
    """One kubernetes.io/tls Secret per process (cert-manager's key names), as a List."""

    def data(path: pathlib.Path) -> str:
        return b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": f"{SERVICE_NAMES[name]}-tls", "labels": {"app": SERVICE_NAMES[name]}},
                "data": {
                    "tls.crt": data(directory / f"{name}.crt"),
                    "tls.key": data(directory / f"{name}.key"),
                    "ca.crt": data(directory / "ca.crt"),
                },
            }
            for name in names
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity of each process's certificate")
    parser.add_argument("--namespace", default="shop", help="the Kubernetes namespace in the DNS SANs")
    parser.add_argument("--k8s-secrets", action="store_true", help="print the Secrets for kubectl apply")
    args = parser.parse_args(argv)
    directory = make_certificates(args.directory, namespace=args.namespace, days=args.days)
    if args.k8s_secrets:
        json.dump(kubernetes_secrets(directory), sys.stdout, indent=1)
        print()
    else:
        print(f"CA and certificates for {', '.join(IDENTITIES)} in {directory}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
