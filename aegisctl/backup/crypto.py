"""Optional client-side encryption of backups: AES-256-GCM (pyca/cryptography), streamed in
1 MiB chunks, so a backup is encrypted before it touches the disk or leaves the machine.

File format (all integers big-endian):

    header  "AEGISBK1" | key id (8 bytes) | nonce prefix (8 random bytes) | chunk size (u32)
    chunks  final flag (1 byte) | ciphertext length (u32) | ciphertext + 16-byte GCM tag

Each chunk's nonce is the prefix plus its counter (u32); its associated data is the header, the
counter and the final flag, so reordered, dropped, truncated or appended chunks fail
authentication, as does any changed byte. The key id (a hash of the key, not the key) tells a
wrong key apart from a damaged file before any decryption is attempted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aegisctl.backup.settings import EncryptionSettings
from aegisctl.errors import ConfigError, OperationFailed, UsageError

MAGIC = b"AEGISBK1"
ALGORITHM = "AES-256-GCM"
CHUNK_SIZE = 1024 * 1024
_HEADER = struct.Struct(">8s8s8sI")
_CHUNK = struct.Struct(">BI")
KEY_BYTES = 32


@dataclass
class BackupKey:
    key: bytes
    origin: str

    def __repr__(self) -> str:  # never show the key
        return f"BackupKey(id={self.key_id}, origin={self.origin})"

    @property
    def key_id(self) -> str:
        return key_fingerprint(self.key).hex()


def key_fingerprint(key: bytes) -> bytes:
    return hashlib.sha256(b"aegisctl backup key id v1\x00" + key).digest()[:8]


def parse_key(raw: bytes, origin: str) -> BackupKey:
    if len(raw) == KEY_BYTES:
        return BackupKey(raw, origin)
    text = raw.strip()
    for decode in (binascii.unhexlify, base64.b64decode):
        try:
            key = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return BackupKey(key, origin)
    raise ConfigError(f"the backup encryption key from {origin} is not 32 bytes "
                      "(raw, 64 hex digits or base64)",
                      hint="create one with `aegisctl backup key-generate FILE`")


def load_key(settings: EncryptionSettings | None,
             env: dict[str, str] | None = None) -> BackupKey | None:
    if settings is None:
        return None
    env = dict(os.environ) if env is None else env
    if bool(settings.key_file) == bool(settings.key_env):
        raise ConfigError("backup.encryption: give exactly one of key_file and key_env")
    if settings.key_env:
        value = env.get(settings.key_env)
        if not value:
            raise ConfigError(f"backup.encryption.key_env: {settings.key_env} is not set")
        return parse_key(value.encode(), f"env {settings.key_env}")
    path = Path(str(settings.key_file)).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"backup.encryption.key_file {path}: {exc.strerror}") from None
    return parse_key(raw, str(path))


@dataclass
class GeneratedKey:
    path: str
    key_id: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "key_id": self.key_id}

    def to_view(self) -> list[Any]:
        from aegisctl.output import Note

        return [Note(f"wrote a new key to {self.path} (key id {self.key_id})")]


def generate_key_file(path: Path) -> GeneratedKey:
    """Write a new random key (hex) to a new 0600 file (written whole under a temporary name,
    then linked into place, so it never overwrites and is never seen half-written)."""
    key = os.urandom(KEY_BYTES)
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write the key to {path}: the folder {folder} does not exist",
                         hint=f"create it first (mkdir -m 700 {folder})")
    if path.exists() or path.is_symlink():
        raise OperationFailed(f"{path} exists; refusing to overwrite a key")
    tmp = folder / f".tmp-{path.name}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)  # fails if the name appeared meanwhile: never overwrites
    except FileExistsError:
        raise OperationFailed(f"{path} exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise OperationFailed(f"cannot write the key to {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return GeneratedKey(str(path), key_fingerprint(key).hex())


class EncryptingWriter:
    """A file-like sink: write() plaintext, close() writes the final chunk."""

    def __init__(self, sink: BinaryIO, key: BackupKey, chunk_size: int = CHUNK_SIZE) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.sink = sink
        self.aead = AESGCM(key.key)
        self.chunk_size = chunk_size
        self.header = _HEADER.pack(MAGIC, key_fingerprint(key.key), os.urandom(8), chunk_size)
        self.prefix = self.header[16:24]
        self.counter = 0
        self.buffer = bytearray()
        sink.write(self.header)

    def _emit(self, block: bytes, final: bool) -> None:
        flag = 1 if final else 0
        counter = struct.pack(">I", self.counter)
        ciphertext = self.aead.encrypt(self.prefix + counter, block,
                                       self.header + counter + bytes([flag]))
        self.sink.write(_CHUNK.pack(flag, len(ciphertext)))
        self.sink.write(ciphertext)
        self.counter += 1

    def write(self, data: bytes) -> None:
        self.buffer += data
        # Keep at least one byte back: the last chunk must be the one flagged final.
        while len(self.buffer) > self.chunk_size:
            self._emit(bytes(self.buffer[: self.chunk_size]), final=False)
            del self.buffer[: self.chunk_size]

    def close(self) -> None:
        self._emit(bytes(self.buffer), final=True)
        self.buffer.clear()


def read_header(source: BinaryIO, key: BackupKey | None, what: str) -> tuple[bytes, bytes, int]:
    header = source.read(_HEADER.size)
    if len(header) != _HEADER.size or not header.startswith(MAGIC):
        raise OperationFailed(f"{what} is not an aegisctl-encrypted file (bad header)")
    _, key_id, _, chunk_size = _HEADER.unpack(header)
    if key is None:
        raise ConfigError(f"{what} is encrypted (key id {key_id.hex()}) and no key is configured",
                          hint="set backup.encryption.key_file or key_env")
    if key_id != key_fingerprint(key.key):
        raise ConfigError(
            f"wrong encryption key: {what} was encrypted with key id {key_id.hex()}, the "
            f"configured key ({key.origin}) has id {key.key_id}",
            hint="configure the key this backup was made with",
        )
    return header, key_id, chunk_size


def decrypt_stream(source: BinaryIO, key: BackupKey | None, what: str) -> Iterator[bytes]:
    """Plaintext chunks; raises OperationFailed on any tampering or truncation."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header, _, chunk_size = read_header(source, key, what)
    assert key is not None
    aead = AESGCM(key.key)
    prefix = header[16:24]
    counter = 0
    while True:
        head = source.read(_CHUNK.size)
        if len(head) != _CHUNK.size:
            raise OperationFailed(f"{what} is truncated (chunk {counter} missing)")
        flag, length = _CHUNK.unpack(head)
        if length > chunk_size + 16 or flag not in (0, 1):
            raise OperationFailed(f"{what} is damaged (chunk {counter} header)")
        ciphertext = source.read(length)
        if len(ciphertext) != length:
            raise OperationFailed(f"{what} is truncated (chunk {counter})")
        packed = struct.pack(">I", counter)
        try:
            yield aead.decrypt(prefix + packed, ciphertext, header + packed + bytes([flag]))
        except InvalidTag:
            raise OperationFailed(f"{what} failed authentication at chunk {counter}: "
                                  "the file was altered or damaged") from None
        counter += 1
        if flag == 1:
            if source.read(1):
                raise OperationFailed(f"{what} has data after its final chunk")
            return


def decrypt_to_file(source: Path, dest: Path, key: BackupKey | None) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
        for block in decrypt_stream(src, key, source.name):
            out.write(block)


def check_decrypts(source: Path, key: BackupKey | None) -> None:
    with open(source, "rb") as src:
        for _ in decrypt_stream(src, key, source.name):
            pass
