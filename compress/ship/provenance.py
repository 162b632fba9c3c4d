"""Signed provenance: an in-toto Statement over every file of an export, in a DSSE envelope.

``compress export --sign KEY`` writes ``provenance.intoto.json`` into the export: a DSSE
envelope (https://github.com/secure-systems-lab/dsse) whose payload is an in-toto Statement v1
naming every other file of the export with its sha256, and whose predicate is the gate's
evidence (verdict, checks, hashes), the effective recipe, the base model and the environment.
The signature is over DSSE's pre-authentication encoding (PAE), by an elliptic-curve key (ECDSA on
P-256, P-384 or P-521; what ``compress keygen`` makes) or an Ed25519 key. An EC key then also signs the
finished export, provenance included, into ``model.sig`` for the OpenSSF ``model_signing`` tool
(``compress.ship.model_sig``); model_signing takes no Ed25519 keys.
``compress verify DIR --key PUB`` checks both signatures and that the directory holds exactly the
signed files, byte for byte.

Private keys are read, never written anywhere but by ``generate_keypair``; a loaded key lives
only inside a ``Signer`` (which does not show it in its repr). ``cryptography`` is imported
inside functions so that ``compress --help`` stays fast.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from compress import __version__
from compress.core.artifact import MANIFEST, PROVENANCE, RECIPE_FILE, sha256_file
from compress.core.errors import IntegrityError, UsageError
from compress.ship.model_sig import CURVES, MODEL_SIG

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://compress.dev/gate/v1"
ENV_KEY = "COMPRESS_SIGN_KEY"
KEY_FILE = "compress-signing.key"
PUB_FILE = "compress-signing.pub"
_KEYGEN_HINT = "make a key pair with `compress keygen`"
_PUB_HINT = f"pass the {PUB_FILE} that `compress keygen` wrote"
KINDS = ("ec", "ed25519")  # what `compress keygen --kind` makes: ECDSA P-256 (the default), Ed25519
_TAKES = "compress signs with EC (P-256, P-384, P-521) or Ed25519 keys"


# ------------------------------------------------------------------------ DSSE, statement

def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: ``"DSSEv1" SP len(type) SP type SP len(body) SP body``.

    Lengths are byte counts in ASCII decimal; this is what gets signed, so the payload type
    cannot be swapped without breaking the signature.

    Example:
        >>> pae("http://example.com/HelloWorld", b"hello world")
        b'DSSEv1 29 http://example.com/HelloWorld 11 hello world'
    """
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def _export_files(export_dir: Path) -> dict[str, Path]:
    """Every entry of an export except the signatures (PROVENANCE, and MODEL_SIG, written after it over
    everything else), by relative posix path (hidden files included: an export holds nothing unsigned).
    Symbolic links are listed so that verify can refuse them."""
    found = {}
    for path in sorted(export_dir.rglob("*")):
        if path.is_symlink() or path.is_file():
            rel = path.relative_to(export_dir).as_posix()
            if rel not in (PROVENANCE, MODEL_SIG):
                found[rel] = path
    return found


def subjects(export_dir: Path) -> list[dict[str, Any]]:
    """The in-toto subjects of an export: one per file, sorted by name, with its sha256."""
    return [{"name": name, "digest": {"sha256": sha256_file(path)}}
            for name, path in sorted(_export_files(export_dir).items())]


def build_statement(export_dir: Path, *, created: str | None = None) -> dict[str, Any]:
    """The in-toto Statement v1 for an export directory (its manifest must hold the gate).

    Args:
        export_dir: a complete export (model files, recipe.yaml, manifest.json, ...).
        created: ISO 8601 time to record (default: now, UTC).

    Returns:
        The statement: every file as a subject, and the gate evidence as the predicate.
    """
    manifest = json.loads((export_dir / MANIFEST).read_text())
    recipe_path = export_dir / RECIPE_FILE
    recipe = None
    if recipe_path.exists():
        recipe = {"file": RECIPE_FILE, "sha256": sha256_file(recipe_path),
                  "content": yaml.safe_load(recipe_path.read_text())}
    method = manifest.get("method") or {}
    predicate = {
        "gate": manifest.get("gate"),
        "evidence": manifest.get("evidence"),  # hashes of the reports and policy behind the gate, if recorded
        "recipe": recipe,
        "artifact": {"name": manifest.get("name"), "artifact_key": manifest.get("artifact_key"),
                     "method": {k: method.get(k) for k in ("kind", "name", "scheme", "format")}},
        "base_model": manifest.get("base_model"),
        "environment": manifest.get("environment"),
        "content_hash": manifest.get("content_hash"),
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "compress_version": __version__,
    }
    return {"_type": STATEMENT_TYPE, "subject": subjects(export_dir), "predicateType": PREDICATE_TYPE,
            "predicate": predicate}


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def envelope_bytes(envelope: dict[str, Any]) -> bytes:
    """How a DSSE envelope is written to disk; verify insists on exactly these bytes."""
    return (json.dumps(envelope, indent=2) + "\n").encode()


def _ecdsa(key: Any) -> Any:
    """ECDSA with the hash that fits the curve (sha256, sha384, sha512), as model_signing and Sigstore use."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    size = key.curve.key_size
    return ec.ECDSA(hashes.SHA256() if size <= 256 else hashes.SHA384() if size <= 384 else hashes.SHA512())


def is_ec(key: Any) -> bool:
    """Whether a (private or public) key is an elliptic-curve key, which model.sig can be signed with."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey))


def sign_statement(statement: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """Wrap a statement in a DSSE envelope signed with an EC (ECDSA, DER signature) or Ed25519 private key."""
    body = _canonical(statement)
    message = pae(PAYLOAD_TYPE, body)
    sig = private_key.sign(message, _ecdsa(private_key)) if is_ec(private_key) else private_key.sign(message)
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(body).decode(),
            "signatures": [{"keyid": keyid(private_key.public_key()), "sig": base64.b64encode(sig).decode()}]}


def keyid(public_key: Any) -> str:
    """A public key's id: sha256 (hex) of the raw 32 bytes of an Ed25519 key; of the PEM of an EC key, which
    is the key hint model_signing writes into model.sig, so that both signatures name the same id."""
    from cryptography.hazmat.primitives import serialization

    if is_ec(public_key):
        raw = public_key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def write_provenance(export_dir: Path, private_key: Any) -> dict[str, Any]:
    """Sign every file of ``export_dir`` and write the envelope to PROVENANCE; return it."""
    envelope = sign_statement(build_statement(export_dir), private_key)
    path = export_dir / PROVENANCE
    path.write_bytes(envelope_bytes(envelope))
    return envelope


# ---------------------------------------------------------------------------- signing keys

def looks_like_key(text: str) -> bool:
    """Whether a string is key material rather than a path (PEM armour)."""
    return "-----BEGIN" in text or "PRIVATE KEY-----" in text


@dataclass(frozen=True)
class Signer:
    """A loaded signing key, called with an export directory to write its PROVENANCE, then (an EC key)
    its MODEL_SIG over the finished directory, provenance included.

    The key is kept out of the repr so that it cannot reach a log by accident.
    """

    keyid: str
    origin: str
    _key: Any = field(repr=False, compare=False)

    @property
    def writes_model_sig(self) -> bool:
        """Whether this key also signs model.sig (an EC key; model_signing takes no Ed25519 keys)."""
        return is_ec(self._key)

    def __call__(self, export_dir: Path) -> None:
        write_provenance(Path(export_dir), self._key)
        if self.writes_model_sig:
            from compress.ship import model_sig

            model_sig.write(Path(export_dir), self._key)


def _check_kind(key: Any, where: str) -> None:
    """Refuse a key compress cannot sign with: neither Ed25519 nor EC on a curve model_signing takes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if is_ec(key):
        if key.curve.name not in CURVES:
            raise UsageError(f"{where}: EC key on curve {key.curve.name}; {_TAKES}", hint=_KEYGEN_HINT)
    elif not isinstance(key, (Ed25519PrivateKey, Ed25519PublicKey)):
        raise UsageError(f"{where}: {_kind(key)} key; {_TAKES}", hint=_KEYGEN_HINT)


def _parse_private_key(data: bytes, where: str) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"{where} is encrypted with a passphrase, which compress cannot prompt for",
                         hint=f"use an unencrypted key kept in a CI secret ({ENV_KEY}) or a file only you "
                              f"can read; {_KEYGEN_HINT}") from None
    except (ValueError, UnsupportedAlgorithm):
        what = "a public key, not a private key" if b"PUBLIC KEY-----" in data else "not a PEM private key"
        raise UsageError(f"{where} is {what}",
                         hint=f"sign with the private key (PKCS8 PEM); {_KEYGEN_HINT}") from None
    _check_kind(key, where)
    return key


def _kind(key: Any) -> str:
    name = type(key).__name__
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return {"EllipticCurve": "EC"}.get(name, name)


def signer_from(source: str | os.PathLike, origin: str = "--sign") -> Signer:
    """Load and check a signing key now (before any work) and return the signer for ``export_run``.

    Args:
        source: the path of a PKCS8 PEM EC or Ed25519 private key; or, as a ``str``, the PEM text itself
            (what ``COMPRESS_SIGN_KEY`` may hold in CI).
        origin: where the source came from, named in errors (``--sign``, ``export.sign_key``,
            ``COMPRESS_SIGN_KEY``). Errors name the file, never the key text.

    Returns:
        A ``Signer``: call it with a directory to write PROVENANCE into it.

    Raises:
        UsageError: the file is missing or unreadable, or not an unencrypted EC or Ed25519 private key.
    """
    if isinstance(source, str) and looks_like_key(source):
        if origin != ENV_KEY:
            raise UsageError(f"{origin} takes the path of a key file, not the key itself",
                             hint=f"put key text only in the {ENV_KEY} environment variable")
        if "\n" not in source.strip():  # a one-line secret with literal \n escapes
            source = source.replace("\\n", "\n")
        key = _parse_private_key(source.encode(), f"the key in {ENV_KEY}")
        return Signer(keyid=keyid(key.public_key()), origin=origin, _key=key)
    path = Path(source).expanduser()
    if looks_like_key(str(path)):
        raise UsageError(f"{origin} takes the path of a key file, not the key itself",
                         hint=f"put key text only in the {ENV_KEY} environment variable")
    where = f"signing key {path}" + ("" if origin == "--sign" else f" (from {origin})")
    data = _read_key_file(path, where, _KEYGEN_HINT, KEY_FILE)
    key = _parse_private_key(data, where)
    return Signer(keyid=keyid(key.public_key()), origin=origin, _key=key)


def _read_key_file(path: Path, where: str, missing_hint: str, usual_name: str) -> bytes:
    """A key file's bytes, or a one-line UsageError saying why they cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file", hint=missing_hint) from None
    except IsADirectoryError:
        raise UsageError(f"{where} is a directory, not a key file",
                         hint=f"pass the file, e.g. {path / usual_name}") from None
    except OSError as e:
        raise UsageError(f"{where} cannot be read: {e.strerror}") from None


def choose_signer(flag: Path | None, recipe_key: str | None,
                  environ: Mapping[str, str] = os.environ) -> Signer | None:
    """The signer to use, by precedence: ``--sign`` flag > recipe ``export.sign_key`` >
    ``COMPRESS_SIGN_KEY`` (a path or PEM text). None when none of them is set."""
    if flag is not None:
        return signer_from(flag, "--sign")
    if recipe_key:
        return signer_from(Path(recipe_key), "export.sign_key")
    if value := environ.get(ENV_KEY, "").strip():
        return signer_from(value if looks_like_key(value) else Path(value), ENV_KEY)
    return None


# ------------------------------------------------------------------------------- verify

def load_public_key(path: Path) -> Any:
    """An EC or Ed25519 public key from a PEM file.

    Raises:
        UsageError: the file is missing, unreadable, or not a public key compress signs with.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    where = f"public key {path}"
    data = _read_key_file(path, where, _PUB_HINT, PUB_FILE)
    if b"PRIVATE KEY-----" in data:
        # Never parse (or echo) a private key handed to verify: it should not be there at all.
        raise UsageError(f"{path} is a private key; --key takes the public key",
                         hint=f"pass {PUB_FILE}, and keep the private key out of places where it is shared")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(f"{where} is not a PEM public key", hint=_PUB_HINT) from None
    _check_kind(key, where)
    return key


def read_envelope(export_dir: Path) -> dict[str, Any] | None:
    """The DSSE envelope of an export, unchecked; None when the export is not signed.

    Raises:
        IntegrityError: PROVENANCE exists but is not an envelope compress wrote.
    """
    path = export_dir / PROVENANCE
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise IntegrityError(f"{path} is not a regular file", hint="re-export the artifact")
    raw = path.read_bytes()
    try:
        envelope = json.loads(raw)
    except ValueError:
        raise IntegrityError(f"{path} is not valid JSON (edited or damaged)",
                             hint="re-export the artifact") from None
    sigs = envelope.get("signatures") if isinstance(envelope, dict) else None
    if not isinstance(sigs, list) or not all(isinstance(s, dict) for s in sigs) \
            or not isinstance(envelope.get("payload"), str):
        raise IntegrityError(f"{path} is not a DSSE envelope", hint="re-export the artifact")
    if envelope_bytes(envelope) != raw:
        raise IntegrityError(f"{path} is not byte for byte what compress wrote (edited?)",
                             hint="re-export the artifact")
    return envelope


def signed_by(export_dir: Path) -> list[str] | None:
    """The keyids an export claims to be signed by (not checked); None when it is not signed."""
    envelope = read_envelope(export_dir)
    return None if envelope is None else [str(s.get("keyid")) for s in envelope["signatures"]]


def verify_signature(export_dir: Path, public_key_path: Path) -> dict[str, Any]:
    """Check an export's signed provenance against a public key, and its files against the statement.

    Passes only when the envelope is signed by this key, the signature covers the statement,
    and the directory holds exactly the statement's subjects with the same sha256 (no file
    added, missing or changed).

    Args:
        export_dir: an exported artifact directory.
        public_key_path: a PEM EC or Ed25519 public key (``compress-signing.pub``).

    Returns:
        The verified in-toto statement.

    Raises:
        UsageError: the public key cannot be loaded.
        IntegrityError: anything else: unsigned, wrong key, bad signature, files that differ.
    """
    from cryptography.exceptions import InvalidSignature

    public_key = load_public_key(public_key_path)
    kid = keyid(public_key)
    export_dir = Path(export_dir)
    hint = "the export is not the one that was signed; re-export it from its run"
    envelope = read_envelope(export_dir)
    if envelope is None:
        raise IntegrityError(f"{export_dir} is not signed (no {PROVENANCE})",
                             hint="export it with `compress export RUN -o DIR --sign KEY`")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise IntegrityError(f"{PROVENANCE}: payloadType is {envelope.get('payloadType')!r}, "
                             f"not {PAYLOAD_TYPE}", hint=hint)
    mine = [s for s in envelope["signatures"] if s.get("keyid") == kid]
    if not mine:
        others = ", ".join(str(s.get("keyid"))[:16] for s in envelope["signatures"]) or "nobody"
        raise IntegrityError(f"{export_dir} is signed by {others}, not by key {kid[:16]}",
                             hint="pass the public key that belongs to the signing key")
    try:
        body = base64.b64decode(envelope["payload"], validate=True)
        sigs = [base64.b64decode(str(s.get("sig")), validate=True) for s in mine]
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{PROVENANCE}: payload or signature is not base64 (edited?)",
                             hint=hint) from None
    message = pae(PAYLOAD_TYPE, body)
    for sig in sigs:
        try:
            if is_ec(public_key):
                public_key.verify(sig, message, _ecdsa(public_key))
            else:
                public_key.verify(sig, message)
            break
        except InvalidSignature:
            continue
    else:
        raise IntegrityError(f"{export_dir}: the signature by key {kid[:16]} does not match its statement "
                             "(provenance edited)", hint=hint)
    try:
        statement = json.loads(body)
    except ValueError:
        raise IntegrityError(f"{PROVENANCE}: the signed payload is not JSON", hint=hint) from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE \
            or statement.get("predicateType") != PREDICATE_TYPE \
            or not isinstance(statement.get("subject"), list):
        raise IntegrityError(f"{PROVENANCE}: the signed payload is not a compress in-toto statement",
                             hint=hint)
    problems = check_subjects(export_dir, statement["subject"])
    manifest_path = export_dir / MANIFEST
    if not problems and manifest_path.exists():
        content = json.loads(manifest_path.read_text()).get("content_hash")
        if content != statement.get("predicate", {}).get("content_hash"):
            problems.append(f"{MANIFEST}: content_hash is not the signed one")
    if problems:
        raise IntegrityError(f"{export_dir}: " + "; ".join(problems), hint=hint)
    return statement


def check_subjects(export_dir: Path, subject: list[Any]) -> list[str]:
    """Compare the files of ``export_dir`` with signed subjects; return every difference."""
    signed: dict[str, str | None] = {}
    for s in subject:
        if isinstance(s, dict) and isinstance(s.get("name"), str):
            signed[s["name"]] = (s.get("digest") or {}).get("sha256")
    actual = _export_files(export_dir)
    problems = []
    for name in sorted(signed.keys() | actual.keys()):
        if name not in actual:
            problems.append(f"{name}: signed but missing")
        elif name not in signed:
            problems.append(f"{name}: not signed (file added)")
        elif actual[name].is_symlink():
            problems.append(f"{name}: a symbolic link, not a signed file")
        elif sha256_file(actual[name]) != signed[name]:
            problems.append(f"{name}: sha256 differs from the signed one (file changed)")
    return problems


def verify_signatures(export_dir: Path, public_key_path: Path) -> tuple[dict[str, Any], bool]:
    """Both signatures of an export, as ``compress verify --key`` checks them: the signed provenance
    (``verify_signature``), then model.sig with model_signing's own verifier.

    An EC key writes model.sig with the provenance, so with an EC public key a missing model.sig fails;
    with an Ed25519 key there is none to check.

    Returns:
        (the verified in-toto statement, whether model.sig was checked).

    Raises:
        UsageError: the public key cannot be loaded.
        IntegrityError: either signature does not verify, or the files are not the signed ones.
    """
    statement = verify_signature(export_dir, public_key_path)
    if not is_ec(load_public_key(public_key_path)):
        return statement, False
    from compress.ship import model_sig

    model_sig.verify(Path(export_dir), Path(public_key_path))
    return statement, True
