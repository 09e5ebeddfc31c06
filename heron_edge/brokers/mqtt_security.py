"""Security policy of an MQTT connection: the broker URL, TLS, and no plaintext or anonymous MQTT off the machine.

To a non-loopback host a connection must use TLS (``mqtts://``) and authenticate (username/password or
a client certificate) unless ``allow_insecure`` is given: credentials and commands never cross a
network in the clear. Loopback hosts are exempt, since their traffic never leaves the machine.
"""
from __future__ import annotations

import ipaddress
import ssl
import urllib.parse
from dataclasses import dataclass

from heron_edge.errors import ConfigError

__all__ = ["Endpoint", "TlsOptions", "check_secure", "is_loopback_host", "parse_url", "secure_endpoint", "ssl_context"]


@dataclass(frozen=True)
class TlsOptions:
    """TLS for ``mqtts://``: CA bundle (None = system CAs), optional client certificate and key,
    and whether the server's certificate must name the host we connect to."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """An SSL context for a client; certificates are always verified."""
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
            if self.cert_file is not None:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS options: {exc}") from exc
        ctx.check_hostname = self.check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(frozen=True)
class Endpoint:
    """Where a broker URL points: host, port (default 1883, 8883 with TLS) and whether to use TLS."""

    url: str
    host: str
    port: int
    tls: bool


def _url_problem(parts: urllib.parse.SplitResult) -> str | None:
    """What makes a broker URL unusable, or None."""
    if parts.scheme not in ("mqtt", "mqtts"):
        return "scheme must be mqtt:// or mqtts://"
    if parts.username or parts.password:
        return "pass username/password as arguments, not in the url"
    if not parts.hostname:
        return "no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "only mqtt[s]://host[:port] is supported"
    return None


def parse_url(url: str) -> Endpoint:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]``; ConfigError for anything else."""
    parts = urllib.parse.urlsplit(url)
    if (problem := _url_problem(parts)) is not None or not parts.hostname:
        raise ConfigError(f"broker url {url!r}: {problem}")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker url {url!r}: {exc}") from exc
    return Endpoint(url, parts.hostname, port, tls)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); no DNS lookup."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_secure(endpoint: Endpoint, *, username: str | None, tls: TlsOptions | None) -> None:
    """Refuse plaintext or unauthenticated MQTT to a non-loopback host (ConfigError naming the opt-in)."""
    if is_loopback_host(endpoint.host):
        return
    if not endpoint.tls:
        raise ConfigError(
            f"broker url {endpoint.url!r}: plaintext MQTT to a non-loopback host exposes credentials and commands; "
            "use mqtts:// with TLS, or pass allow_insecure=True to opt in explicitly"
        )
    if username is None and (tls is None or tls.cert_file is None):
        raise ConfigError(
            f"broker url {endpoint.url!r}: no authentication (neither username/password nor a client certificate) "
            "for a non-loopback host; configure credentials, or pass allow_insecure=True to opt in explicitly"
        )


def secure_endpoint(
    url: str, *, username: str | None, password: str | None, tls: TlsOptions | None, allow_insecure: bool
) -> Endpoint:
    """The parsed ``url`` once the credentials and TLS options fit it and the policy allows it; else ConfigError."""
    endpoint = parse_url(url)
    if tls is not None and not endpoint.tls:
        raise ConfigError("TLS options given for an mqtt:// url; use mqtts://")
    if password is not None and username is None:
        raise ConfigError("password given without username")
    if not allow_insecure:
        check_secure(endpoint, username=username, tls=tls)
    return endpoint


def ssl_context(endpoint: Endpoint, tls: TlsOptions | None) -> ssl.SSLContext | None:
    """The verifying SSL context for an ``mqtts://`` endpoint (system CAs unless ``tls`` says otherwise); None for mqtt://."""
    return (tls or TlsOptions()).context() if endpoint.tls else None
