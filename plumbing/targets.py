"""Addresses. What INVENTORY_ADDR and friends may say, as a gRPC target:
'host:port', a gRPC target ('dns:///inventory:50051',
'ipv4:10.0.0.1:50051,10.0.0.2:50051'), or a comma-separated list of
host:port, spread round-robin; and a host and port written as grpc and
sockets take them (an IPv6 address bare, or in brackets before a port);
what a port may be, and whether it can be bound."""

import ipaddress
import re
import socket

# Target schemes grpc resolves itself: such an address passes through as it is.
GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")
# Any other URI with a scheme (passthrough:///host:1) is grpc's to judge too.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")
# A host name or an IPv4 address (checked as one if it is all digits and dots).
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_PORT = 65535


def port_number(text: str, any_free: bool = False) -> int:
    """`text` as a TCP port, 1-65535 (with `any_free`, 0 too: the system
    picks a free one). Raises ValueError saying what a port is."""
    text = text.strip()
    if text.isascii() and text.isdigit() and (0 if any_free else 1) <= int(text) <= MAX_PORT:
        return int(text)
    raise ValueError(f"must be a port number, 1-{MAX_PORT}" + (" (or 0: any free port)" if any_free else ""))


def bare_host(host: str) -> str:
    """A host name or address as sockets take it: an IPv6 one without brackets."""
    return host.strip().removeprefix("[").removesuffix("]")


def bind_error(family: int, address: tuple) -> OSError | None:
    """What binding `address` meets, as a server binds it: connections left
    in TIME_WAIT by a server just gone (a crash, a SIGKILL) do not count."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            return error
    return None


def join_host_port(host: str, port: int) -> str:
    """host:port for grpc, an IPv6 address in brackets."""
    host = bare_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parts(address: str) -> list[tuple[str, int]]:
    """(host, port) of each address of a comma-separated list."""
    parts = []
    for part in filter(None, (p.strip() for p in address.split(","))):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{part!r} in a comma-separated list is not host:port")
        try:
            parts.append((bare_host(host), port_number(port)))
        except ValueError as error:
            raise ValueError(f"{part!r} in a comma-separated list: port {port!r} {error}") from None
    if not parts:
        raise ValueError("a comma-separated list names no address")
    return parts


def _is_list(address: str) -> bool:
    """Whether `address` is a list of host:port for us to resolve (grpc's own
    ipv4:/ipv6: lists are targets already)."""
    address = address.strip()
    return "," in address and not address.startswith(GRPC_SCHEMES)


def _check_host_port(address: str) -> None:
    """ValueError unless `address` is host:port as grpc takes it: a name or
    an address (IPv6 in brackets), and a port 1-65535. No DNS lookup: a
    name may not resolve yet where it will (a Service starting in Kubernetes)."""
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port:
        raise ValueError("not host:port (nor a gRPC target such as dns:///inventory:50051)")
    try:
        port_number(port)
    except ValueError as error:
        raise ValueError(f"port {port!r} {error}") from None
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError("not host:port: an IPv6 address goes in brackets, as in [::1]:50051")
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or address")
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None


def resolve_target(address: str) -> str:
    """The gRPC target for `address`. A comma-separated list becomes a static
    ipv4: or ipv6: list, resolved here (grpc has no scheme for a list of
    names), so round_robin spreads calls over all of them; a single
    host:port is checked, not resolved; a gRPC target passes through as it
    is. Raises ValueError for a list or host:port it cannot use."""
    address = address.strip()
    if address.startswith(GRPC_SCHEMES) or _URI.match(address):
        return address
    if not _is_list(address):
        _check_host_port(address)
        return address
    v4, v6 = [], []
    for host, port in _parts(address):
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0]
        except socket.gaierror:
            raise ValueError(f"cannot resolve {host!r}") from None
        if family == socket.AF_INET6:
            v6.append(f"[{sockaddr[0]}]:{port}")
        else:
            v4.append(f"{sockaddr[0]}:{port}")
    if v4 and v6:
        raise ValueError("a comma-separated list cannot mix IPv4 and IPv6 addresses")
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)


def list_host(address: str) -> str | None:
    """The one host name of a comma-separated list, which TLS checks every
    server's certificate against (a resolved list keeps no names); None for
    any other form. Raises ValueError if the list names several hosts."""
    if not _is_list(address):
        return None
    hosts = {host for host, _ in _parts(address)}
    if len(hosts) > 1:
        raise ValueError(
            "with TLS, the addresses of a comma-separated list must share one host name, which every "
            "certificate is checked against; put them behind one DNS name (dns:///inventory:50051)"
        )
    return hosts.pop()
