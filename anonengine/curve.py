"""CURVE for a tap reachable over TCP: key files, the binder's gate and a subscriber's keys.

A tap's headers carry every person's box and keypoints; on TCP anyone who reaches the port could read
them. So a TCP tap is a CURVE server (encrypted) behind a ZAP handler that lets in only clients whose
public key is in an allowed folder; any other connection is refused during the handshake and receives
nothing: the ZAP handler's refusal (400) reaches the client as an ERROR command, and `tap.subscribe` raises
`TapRefused` (`anonengine tap` says so in one line). Keys are pyzmq's certificate files
(`zmq.auth.create_certificates`): `NAME.key` holds the public key, `NAME.key_secret` both.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from anonengine.errors import ConfigError

log = logging.getLogger("anonengine.curve")

ZAP_DOMAIN = "anonengine-tap"
KEYS_HINT = "make key pairs with `anonengine keys DIR --name NAME`"


def write_key_pair(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Writes `folder/NAME.key` (public) and `folder/NAME.key_secret` (mode 0600); never overwrites."""
    folder = Path(folder)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} exists: remove it or choose another --name")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # pyzmq writes with the umask's mode: the secret is made private before its key is in it.
        secret.touch(mode=0o600, exist_ok=False)
        os.chmod(secret, 0o600)
        made = zmq.auth.create_certificates(folder, name)
    except OSError as exc:
        raise ConfigError(f"cannot write keys in {folder}: {exc.strerror}") from None
    return Path(made[0]), Path(made[1])


def write_public_key(path: str | os.PathLike, public: bytes) -> None:
    """A public key file in the format `zmq.auth.load_certificate` reads (for a key made in memory)."""
    Path(path).write_text(f'curve\n    public-key = "{public.decode()}"\n')


def load_key(path: str | os.PathLike, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys of a key file; with `secret`, the file must hold the secret key too."""
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError):
        raise ConfigError(f"{path} is not a CURVE key file ({KEYS_HINT})") from None
    if secret and not secret_key:
        raise ConfigError(f"{path} holds no secret key: give the .key_secret file ({KEYS_HINT})")
    return public, secret_key


@dataclass(frozen=True)
class CurveClient:
    """What a subscriber needs to read a CURVE tap: its own key pair and the server's public key (z85)."""

    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def from_files(cls, key_secret: str | os.PathLike, server_key: str | os.PathLike) -> CurveClient:
        public, secret = load_key(key_secret, secret=True)
        return cls(public, secret, load_key(server_key, secret=False)[0])

    @classmethod
    def ephemeral(cls, server: bytes) -> CurveClient:
        """A key pair made in memory, for a client of this host that lists it with the server itself."""
        public, secret = zmq.curve_keypair()
        return cls(public, secret, server)

    def apply(self, sock: zmq.Socket) -> None:
        """Sets the keys on a socket, before it connects."""
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self.public, self.secret, self.server


class AllowedClients:
    """The ZAP handler's question, asked at each connection: is this public key in an allowed folder?

    The folders are read at each connection, so a client key added or removed counts from the next one."""

    def __init__(self, *folders: str | os.PathLike) -> None:
        self.folders = [Path(f) for f in folders]

    def keys(self) -> set[bytes]:
        keys = set()
        for folder in self.folders:
            for path in sorted(folder.glob("*.key")) if folder.is_dir() else ():
                try:
                    keys.add(zmq.auth.load_certificate(path)[0])
                except (OSError, ValueError) as exc:  # one bad file must not lock every client out
                    log.warning("ignored the tap client key %s: %s", path, exc)
        return keys

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys()
        if not allowed:
            log.info("refused a tap client with an unknown key %s", key.decode(errors="replace"))
        return allowed


class CurveServer:
    """The binder's side: the server's key pair and the ZAP handler that checks every client's key."""

    def __init__(self, key_secret: str | os.PathLike, *client_folders: str | os.PathLike) -> None:
        self.public, self.secret = load_key(key_secret, secret=True)
        self.allowed = AllowedClients(*client_folders)
        self.authenticator: ThreadAuthenticator | None = None

    def secure(self, context: zmq.Context, sock: zmq.Socket) -> None:
        """Makes `sock` (not bound yet) a CURVE server whose clients the ZAP handler checks.

        The handler starts first, and the socket insists on it (ZAP_ENFORCE_DOMAIN): without one, libzmq
        would let in any client that knows the server's public key."""
        if self.authenticator is None:
            self.authenticator = ThreadAuthenticator(context, log=logging.getLogger("anonengine.zap"))
            self.authenticator.start()
            self.authenticator.configure_curve_callback(ZAP_DOMAIN, self.allowed)
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = self.public, self.secret
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


def curve_clients_folder(path: str | os.PathLike) -> Path:
    """The folder of allowed clients' public keys, which must exist (an empty one lets nobody in)."""
    if not Path(path).is_dir():
        raise ConfigError(f"tap.curve_clients {path} is not a folder ({KEYS_HINT}, and put the clients' .key "
                          "files there)")
    return Path(path)
