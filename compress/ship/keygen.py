"""`compress keygen`: a new signing key pair, written atomically with its permissions from the start."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from compress.core.errors import UsageError
from compress.ship.provenance import KEY_FILE, KINDS, PUB_FILE, keyid


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write a file under a temporary name with ``mode`` from the start, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_keypair(out_dir: Path, *, force: bool = False, kind: str = "ec") -> tuple[Path, Path, str]:
    """Write a new key pair: ``compress-signing.key`` (PKCS8 PEM, 0600) and ``compress-signing.pub``
    (SubjectPublicKeyInfo PEM, 0644 less the umask).

    Args:
        out_dir: where to write the pair.
        force: replace an existing pair.
        kind: ``ec`` (ECDSA P-256: signs provenance.intoto.json and model.sig) or ``ed25519`` (signs
            provenance.intoto.json only).

    Returns:
        (private key path, public key path, keyid).

    Raises:
        UsageError: either file exists and ``force`` is not set, or ``kind`` is unknown.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if kind not in KINDS:
        raise UsageError(f"--kind {kind}: not a kind of key compress makes",
                         hint=f"choose one of: {', '.join(KINDS)}")

    out_dir = Path(out_dir)
    priv_path, pub_path = out_dir / KEY_FILE, out_dir / PUB_FILE
    existing = [str(p) for p in (priv_path, pub_path) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise UsageError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}",
                         hint="choose another -o/--output, or pass --force to replace the key pair "
                              "(exports signed with the old key then no longer verify with the new one)")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    umask = os.umask(0)
    os.umask(umask)
    _write_file(priv_path, private_pem, 0o600)
    _write_file(pub_path, public_pem, 0o644 & ~umask)
    return priv_path, pub_path, keyid(key.public_key())
