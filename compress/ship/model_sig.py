"""``model.sig``: the OpenSSF model-signing bundle of an export, for ``model_signing verify key``.

An export signed with an elliptic-curve key also carries ``model.sig``, written by the OpenSSF
``model_signing`` library (sigstore/model-transparency) over every other file of the finished
export, ``provenance.intoto.json``, ``manifest.json`` and ``evidence/`` included. Anyone can check it
without compress::

    python -m model_signing verify key --signature DIR/model.sig --public_key PUB DIR

Every file is signed, git-named ones (``.gitattributes``, ``.git/``...) too, which the tool leaves
out by default: an export holds none, and one that did would fail that command (fail closed).
``model_signing`` is imported inside functions so that ``compress --help`` stays fast.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compress.core.artifact import MODEL_SIG
from compress.core.errors import IntegrityError

__all__ = ["CURVES", "MODEL_SIG", "verify", "verify_command", "write"]
# The curves model_signing takes (those of Sigstore's bundle specification).
CURVES = ("secp256r1", "secp384r1", "secp521r1")


def verify_command(export_dir: Path | str, public_key: Path | str) -> str:
    """The OpenSSF tool's command line that checks an export's ``model.sig``."""
    return (f"python -m model_signing verify key --signature {Path(export_dir) / MODEL_SIG} "
            f"--public_key {public_key} {export_dir}")


def _hashing() -> Any:
    """Every file but model.sig, git-named ones included, hashed with sha256 (the library's default)."""
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[MODEL_SIG], ignore_git_paths=False)


@contextlib.contextmanager
def _pem_path(private_key: Any) -> Iterator[str]:
    """A path from which the key's PEM can be read once: a pipe, so that key text (which may have come
    from COMPRESS_SIGN_KEY) never touches a disk. model_signing's public API takes a key path only."""
    from cryptography.hazmat.primitives import serialization

    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, pem)  # a few hundred bytes: far below a pipe's buffer
        os.close(write_end)
        write_end = -1
        yield f"/dev/fd/{read_end}"
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


def write(export_dir: Path, private_key: Any) -> Path:
    """Sign every file of a finished export with an EC private key; write ``model.sig`` into it.

    Args:
        export_dir: the export, complete but for model.sig (its provenance already written).
        private_key: an elliptic-curve private key on one of ``CURVES``.

    Returns:
        The path of ``model.sig``.
    """
    from model_signing import signing

    export_dir = Path(export_dir)
    with _pem_path(private_key) as key_path:
        config = signing.Config().use_elliptic_key_signer(private_key=key_path)
    config.set_hashing_config(_hashing()).sign(export_dir, export_dir / MODEL_SIG)
    return export_dir / MODEL_SIG


def verify(export_dir: Path, public_key_path: Path) -> None:
    """Check an export's ``model.sig`` with model_signing's verifier, as ``model_signing verify key`` does.

    Args:
        export_dir: an exported artifact directory holding model.sig.
        public_key_path: the PEM EC public key (``compress-signing.pub``).

    Raises:
        IntegrityError: model.sig is missing, damaged, signed by another key, or the files differ from the
            signed ones (changed, added, missing or linked).
    """
    from model_signing import verifying

    export_dir = Path(export_dir)
    path = export_dir / MODEL_SIG
    hint = "the export is not the one that was signed; re-export it from its run"
    if not path.is_file() or path.is_symlink():
        raise IntegrityError(f"{export_dir}: no {MODEL_SIG} (an export signed with an EC key carries one)",
                             hint=hint)
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public_key_path).set_hashing_config(
            _hashing()).verify(export_dir, path)
    except Exception as e:  # the library raises ValueError, InvalidSignature, JSON and protobuf errors alike
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise IntegrityError(f"{export_dir}: {MODEL_SIG} does not verify: {why}", hint=hint) from None
