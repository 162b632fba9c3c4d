"""Signed provenance (compress export --sign, compress verify --key, compress keygen) and model.sig.

Fast tests sign a hand-made export directory, with an EC and with an Ed25519 key; the end-to-end
tests run the real flow once on the embedded model, sign its export, and prove that any one-byte
change to any file, a wrong key or an edited provenance file fails `compress verify --key`, that
the export's model.sig passes OpenSSF's own `python -m model_signing verify key` and fails it after
a one-byte change, and that no private key material ends up in a run, an export, the cache or the logs.
"""
import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from compress.ship import keygen, provenance
from compress.ship.model_sig import MODEL_SIG
from compress.core.artifact import PROVENANCE
from compress.cli import main
from compress.core.errors import EXIT_RUNTIME, EXIT_USAGE, IntegrityError, RecipeError, UsageError
from compress.core.recipe import load_recipe
from conftest import FAST_RUN, ROOT, run_cli

FAST = FAST_RUN
GOOD = ROOT / "recipes" / "tiny-llama-int4-rtn.yaml"


# ------------------------------------------------------------------------------ helpers

def _keypair(directory: Path, kind: str = "ec") -> dict:
    priv, pub, kid = keygen.generate_keypair(directory, kind=kind)
    return {"priv": priv, "pub": pub, "keyid": kid, "pem": priv.read_text(), "kind": kind}


def _fake_export(root: Path) -> Path:
    """A small directory shaped like an export: model files, recipe, card, manifest with a PASS."""
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(os.urandom(4096))
    (root / "config.json").write_text('{"model_type": "llama"}\n')
    (root / "tokenizer.json").write_text('{"version": "1.0"}\n')
    (root / "evidence").mkdir()
    (root / "evidence" / "candidate-accuracy.json").write_text('{"acc": 0.91}\n')
    (root / "recipe.yaml").write_text("# Effective recipe\nname: demo\nexport:\n  to: null\n")
    (root / "README.md").write_text("# demo\n")
    gate = {"verdict": "PASS", "checks": [{"metric": "size_ratio", "verdict": "PASS"}],
            "candidate_hash": "c" * 64, "baseline_hash": "b" * 64}
    manifest = {"name": "demo", "artifact_key": "k" * 16, "content_hash": "c" * 64,
                "method": {"kind": "int4", "name": "int4 rtn", "scheme": "W4A16", "format": "compressed-tensors"},
                "base_model": {"id": "builtin:tiny-llama"}, "environment": {"git_sha": "abc"}, "gate": gate,
                "files": {}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def _signed(tmp_path: Path, keys: dict) -> Path:
    export = _fake_export(tmp_path / "export")
    provenance.signer_from(keys["priv"])(export)
    return export


def _flip(path: Path, at: int | None = None) -> bytes:
    """Change one byte of a file; return the original bytes."""
    data = path.read_bytes()
    i = len(data) // 2 if at is None else at
    changed = bytearray(data)
    changed[i] ^= 0x01
    path.write_bytes(bytes(changed))
    return data


@pytest.fixture(params=provenance.KINDS)
def keys(tmp_path, request):
    """A key pair of each kind compress signs with: EC (also model.sig) and Ed25519 (provenance only)."""
    return _keypair(tmp_path / "keys", request.param)


# ------------------------------------------------------------------------- DSSE, statement

def test_pae_is_the_dsse_encoding():
    # The example from the DSSE protocol specification.
    assert provenance.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert provenance.pae("t", b"") == b"DSSEv1 1 t 0 "
    # Lengths count bytes, not characters.
    assert provenance.pae("é", "ü".encode()) == b"DSSEv1 2 \xc3\xa9 2 \xc3\xbc"


def test_statement_names_every_file_with_its_sha256(tmp_path):
    export = _fake_export(tmp_path / "export")
    (export / PROVENANCE).write_text("old signature, never a subject\n")
    st = provenance.build_statement(export, created="2026-01-01T00:00:00+00:00")
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == provenance.PREDICATE_TYPE
    names = [s["name"] for s in st["subject"]]
    assert names == sorted(names) == ["README.md", "config.json", "evidence/candidate-accuracy.json",
                                      "manifest.json", "model.safetensors", "recipe.yaml", "tokenizer.json"]
    for s in st["subject"]:
        assert s["digest"] == {"sha256": hashlib.sha256((export / s["name"]).read_bytes()).hexdigest()}
    pred = st["predicate"]
    manifest = json.loads((export / "manifest.json").read_text())
    assert pred["gate"] == manifest["gate"] and pred["gate"]["verdict"] == "PASS"
    assert pred["content_hash"] == "c" * 64
    assert pred["base_model"] == {"id": "builtin:tiny-llama"} and pred["environment"] == {"git_sha": "abc"}
    assert pred["recipe"]["content"]["name"] == "demo"
    assert pred["recipe"]["sha256"] == hashlib.sha256((export / "recipe.yaml").read_bytes()).hexdigest()
    assert pred["created"] == "2026-01-01T00:00:00+00:00" and pred["compress_version"]


def test_envelope_is_dsse_signed_over_pae(tmp_path, keys):
    export = _signed(tmp_path, keys)
    env = json.loads((export / PROVENANCE).read_text())
    assert env["payloadType"] == "application/vnd.in-toto+json"
    [sig] = env["signatures"]
    assert sig["keyid"] == keys["keyid"]
    pub = serialization.load_pem_public_key(keys["pub"].read_bytes())
    body = base64.b64decode(env["payload"])
    message = b"DSSEv1 %d %s %d %s" % (len(env["payloadType"]), env["payloadType"].encode(), len(body), body)
    if keys["kind"] == "ec":  # ECDSA P-256 with sha256; the keyid is model.sig's key hint (sha256 of the PEM)
        assert keys["keyid"] == hashlib.sha256(keys["pub"].read_bytes()).hexdigest()
        pub.verify(base64.b64decode(sig["sig"]), message, ec.ECDSA(hashes.SHA256()))  # raises if wrong
    else:
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert keys["keyid"] == hashlib.sha256(raw).hexdigest()
        pub.verify(base64.b64decode(sig["sig"]), message)  # raises if wrong
    assert json.loads(body)["_type"] == "https://in-toto.io/Statement/v1"


# ------------------------------------------------------------------------------ verify

def test_verify_signature_accepts_the_signed_export(tmp_path, keys):
    export = _signed(tmp_path, keys)
    statement = provenance.verify_signature(export, keys["pub"])
    assert len(statement["subject"]) == 7
    assert provenance.signed_by(export) == [keys["keyid"]]


def test_any_one_byte_change_to_any_file_fails(tmp_path, keys):
    export = _signed(tmp_path, keys)
    files = [p for p in sorted(export.rglob("*")) if p.is_file()]
    assert PROVENANCE in {p.name for p in files}
    assert (MODEL_SIG in {p.name for p in files}) == (keys["kind"] == "ec")
    for path in files:
        for at in (0, None, -1):  # first, middle and last byte
            original = _flip(path, at)
            try:
                with pytest.raises(IntegrityError):
                    provenance.verify_signatures(export, keys["pub"])
            finally:
                path.write_bytes(original)
    assert provenance.verify_signatures(export, keys["pub"])[1] == (keys["kind"] == "ec")  # restored: passes


def test_added_missing_or_linked_files_fail(tmp_path, keys):
    export = _signed(tmp_path, keys)
    (export / ".hidden").write_text("x")
    with pytest.raises(IntegrityError, match=r"\.hidden: not signed"):
        provenance.verify_signature(export, keys["pub"])
    (export / ".hidden").unlink()
    saved = (export / "tokenizer.json").read_bytes()
    (export / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="tokenizer.json: signed but missing"):
        provenance.verify_signature(export, keys["pub"])
    (export / "tokenizer.json").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_bytes(saved)  # same bytes, but not the signed file itself
    with pytest.raises(IntegrityError, match="symbolic link"):
        provenance.verify_signature(export, keys["pub"])


def test_wrong_key_unsigned_export_and_edited_statement_fail(tmp_path, keys):
    export = _signed(tmp_path, keys)
    other = _keypair(tmp_path / "other")
    with pytest.raises(IntegrityError, match="not by key"):
        provenance.verify_signature(export, other["pub"])
    # An attacker's statement, signed by another key but claiming our keyid.
    env = json.loads((export / PROVENANCE).read_text())
    forged = provenance.sign_statement(json.loads(base64.b64decode(env["payload"])),
                                       serialization.load_pem_private_key(other["priv"].read_bytes(), None))
    forged["signatures"][0]["keyid"] = keys["keyid"]
    (export / PROVENANCE).write_bytes(provenance.envelope_bytes(forged))
    with pytest.raises(IntegrityError, match="does not match its statement"):
        provenance.verify_signature(export, keys["pub"])
    # Our statement with one digest changed to match an edited file, signature left as it was.
    statement = json.loads(base64.b64decode(env["payload"]))
    (export / "config.json").write_text('{"model_type": "evil"}\n')
    statement["subject"][1]["digest"]["sha256"] = hashlib.sha256((export / "config.json").read_bytes()).hexdigest()
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (export / PROVENANCE).write_bytes(provenance.envelope_bytes(env))
    with pytest.raises(IntegrityError, match="does not match its statement"):
        provenance.verify_signature(export, keys["pub"])
    (export / PROVENANCE).unlink()
    with pytest.raises(IntegrityError, match="is not signed"):
        provenance.verify_signature(export, keys["pub"])
    assert provenance.signed_by(export) is None


def test_verify_key_must_be_an_ec_or_ed25519_public_key(tmp_path, keys):
    export = _signed(tmp_path, keys)
    rsa_pub, k1_pub = tmp_path / "rsa.pub", tmp_path / "k1.pub"
    for path, key in [(rsa_pub, rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                      (k1_pub, ec.generate_private_key(ec.SECP256K1()))]:
        path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    for bad, match in [(tmp_path / "nope.pub", "no such file"), (rsa_pub, "RSA key"),
                       (k1_pub, "EC key on curve secp256k1"),
                       (keys["priv"], "is a private key"), (tmp_path, "is a directory")]:
        with pytest.raises(UsageError, match=match) as e:
            provenance.verify_signature(export, bad)
        assert keys["pem"].strip().splitlines()[1] not in str(e.value)


# ------------------------------------------------------------------------ signing keys

def _write_key(path: Path, key, password: bytes | None = None) -> Path:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    return path


@pytest.mark.parametrize("case, match", [
    ("missing", "no such file"),
    ("directory", "is a directory"),
    ("garbage", "not a PEM private key"),
    ("public", "is a public key"),
    ("rsa", r"RSA key; compress signs with EC \(P-256, P-384, P-521\) or Ed25519 keys"),
    ("secp256k1", "EC key on curve secp256k1; compress signs with EC"),
    ("encrypted", "encrypted with a passphrase"),
])
def test_bad_signing_keys_are_one_line_usage_errors_naming_the_file(tmp_path, keys, case, match):
    path = tmp_path / f"{case}.key"
    if case == "directory":
        path.mkdir()
    elif case == "garbage":
        path.write_text("not a key\n")
    elif case == "public":
        path.write_bytes(keys["pub"].read_bytes())
    elif case == "rsa":
        _write_key(path, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    elif case == "secp256k1":  # a curve model_signing does not take
        _write_key(path, ec.generate_private_key(ec.SECP256K1()))
    elif case == "encrypted":
        _write_key(path, ed25519.Ed25519PrivateKey.generate(), password=b"secret")
    with pytest.raises(UsageError, match=match) as e:
        provenance.signer_from(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == EXIT_USAGE


def test_key_precedence_flag_then_recipe_then_environment(tmp_path):
    a, b, c = (_keypair(tmp_path / n) for n in "abc")
    env = {provenance.ENV_KEY: c["pem"]}
    assert provenance.choose_signer(a["priv"], str(b["priv"]), env).keyid == a["keyid"]
    assert provenance.choose_signer(None, str(b["priv"]), env).keyid == b["keyid"]
    from_text = provenance.choose_signer(None, None, env)
    assert from_text.keyid == c["keyid"] and from_text.origin == provenance.ENV_KEY
    assert provenance.choose_signer(None, None, {provenance.ENV_KEY: str(c["priv"])}).keyid == c["keyid"]
    one_line = c["pem"].strip().replace("\n", "\\n")  # how some secret stores keep it
    assert provenance.choose_signer(None, None, {provenance.ENV_KEY: one_line}).keyid == c["keyid"]
    assert provenance.choose_signer(None, None, {provenance.ENV_KEY: "  "}) is None
    assert provenance.choose_signer(None, None, {}) is None
    with pytest.raises(UsageError, match=f"from {provenance.ENV_KEY}"):
        provenance.choose_signer(None, None, {provenance.ENV_KEY: str(tmp_path / "missing.key")})


def test_key_text_never_echoed(tmp_path, keys):
    pem, body = keys["pem"], keys["pem"].strip().splitlines()[1]
    signer = provenance.signer_from(keys["priv"])
    assert body not in repr(signer) and body not in str(signer)
    # Key text where a path belongs (--sign) is refused without being repeated.
    with pytest.raises(UsageError, match="not the key itself") as e:
        provenance.choose_signer(Path(pem), None, {})
    assert body not in str(e.value)
    # A broken key in the environment variable is described, not printed.
    broken = pem.replace(body, body[:24])  # truncated: no longer a key
    with pytest.raises(UsageError) as e:
        provenance.choose_signer(None, None, {provenance.ENV_KEY: broken})
    assert provenance.ENV_KEY in str(e.value) and body[:20] not in str(e.value)


def test_recipe_refuses_key_material_in_export_sign_key(tmp_path, keys):
    body = keys["pem"].strip().splitlines()[1]
    recipe = yaml.safe_load(GOOD.read_text())
    recipe["export"] = {"sign_key": keys["pem"]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match="export.sign_key.*key material.*COMPRESS_SIGN_KEY") as e:
        load_recipe(path)
    assert body not in str(e.value)
    ok = load_recipe(GOOD, [f"export.sign_key={keys['priv']}"])
    assert ok.export.sign_key == str(keys["priv"])
    assert load_recipe(GOOD).export.sign_key is None


# ----------------------------------------------------------------------------- keygen

def test_keygen_writes_a_usable_pair_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keygen", "-o", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    priv, pub = Path(info["private_key"]), Path(info["public_key"])
    assert (priv.name, pub.name) == ("compress-signing.key", "compress-signing.pub")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644 & ~umask
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert provenance.signer_from(priv).keyid == info["keyid"]
    assert provenance.keyid(provenance.load_public_key(pub)) == info["keyid"]
    before = priv.read_bytes()
    assert main(["keygen", "-o", str(out)]) == EXIT_USAGE
    assert "already exist" in capsys.readouterr().err and priv.read_bytes() == before
    assert main(["keygen", "-o", str(out), "--force"]) == 0
    text = capsys.readouterr().out
    assert priv.read_bytes() != before and stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert provenance.ENV_KEY in text and "--key" in text and "--sign" in text
    assert before.decode().splitlines()[1] not in text and priv.read_text().splitlines()[1] not in text


def test_keygen_makes_ec_p256_by_default_or_ed25519_and_refuses_other_kinds(tmp_path, capsys):
    key = serialization.load_pem_private_key((keygen.generate_keypair(tmp_path / "d")[0]).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert main(["keygen", "-o", str(tmp_path / "e"), "--kind", "ed25519", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "ed25519" and isinstance(serialization.load_pem_private_key(
        Path(info["private_key"]).read_bytes(), None), ed25519.Ed25519PrivateKey)
    assert not provenance.signer_from(Path(info["private_key"])).writes_model_sig
    assert main(["keygen", "-o", str(tmp_path / "r"), "--kind", "rsa"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--kind rsa" in err and "ec, ed25519" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_model_sig_covers_every_file_but_itself_and_key_text_signs_it(tmp_path):
    """model.sig is written after the provenance, over it and every other file; an EC key given as text
    (COMPRESS_SIGN_KEY) signs it too, never written to a file on the way."""
    keys = _keypair(tmp_path / "keys")
    export = _fake_export(tmp_path / "export")
    before = set(os.listdir(tmp_path))
    signer = provenance.choose_signer(None, None, {provenance.ENV_KEY: keys["pem"]})
    assert signer.writes_model_sig
    signer(export)
    assert set(os.listdir(tmp_path)) == before
    bundle = json.loads((export / MODEL_SIG).read_text())
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == keys["keyid"]  # one key id for both signatures
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    signed = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    files = {p.relative_to(export).as_posix(): p for p in export.rglob("*") if p.is_file()}
    assert signed.keys() == files.keys() - {MODEL_SIG} and PROVENANCE in signed
    assert all(hashlib.sha256(files[n].read_bytes()).hexdigest() == d for n, d in signed.items())
    assert statement["predicate"]["serialization"]["ignore_paths"] == [MODEL_SIG]
    provenance.verify_signatures(export, keys["pub"])
    (export / "added.txt").write_text("x")  # a file added after signing
    with pytest.raises(IntegrityError, match=f"{MODEL_SIG} does not verify") as e:
        from compress.ship import model_sig

        model_sig.verify(export, keys["pub"])
    assert "added.txt" in str(e.value) and "\n" not in str(e.value)


def test_bad_key_fails_before_any_work(tmp_path):
    env = {"COMPRESS_RUNS_DIR": str(tmp_path / "runs"), "COMPRESS_CACHE_DIR": str(tmp_path / "cache")}
    p = run_cli("run", str(GOOD), "--sign", str(tmp_path / "missing.key"), env=env, cwd=tmp_path)
    assert p.returncode == EXIT_USAGE, p.stderr
    assert "missing.key: no such file" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    p = run_cli("run", str(GOOD), "--sign", str(tmp_path / "missing.key"), "--no-export", env=env, cwd=tmp_path)
    assert p.returncode == EXIT_USAGE and "--no-export" in p.stderr


# ------------------------------------------------------------------ the real flow, signed

@pytest.fixture(scope="module")
def signed_flow(tmp_path_factory, shared_cache):
    """One PASS run of the embedded model, exported and signed with --sign (an EC key: provenance and
    model.sig); then the same run exported again by `compress export`, signed with an Ed25519 key given
    as text in the environment (provenance only)."""
    root = tmp_path_factory.mktemp("signed")
    a, b = _keypair(root / "keys-a"), _keypair(root / "keys-b", "ed25519")  # b: a key from before EC keys
    env = {"COMPRESS_RUNS_DIR": str(root / "runs"), "COMPRESS_CACHE_DIR": str(shared_cache),
           provenance.ENV_KEY: "", "COMPRESS_DEBUG": "1"}
    run = run_cli("run", str(GOOD), *FAST, "-o", str(root / "dist" / "signed"), "--sign", str(a["priv"]),
                  "--json", env=env, cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir = Path(json.loads(run.stdout)["run_dir"])
    exp = run_cli("export", str(run_dir), "-o", str(root / "dist" / "env-signed"),
                  env={**env, provenance.ENV_KEY: b["pem"]}, cwd=root)
    assert exp.returncode == 0, exp.stderr[-3000:]
    return {"root": root, "cache": shared_cache, "a": a, "b": b, "env": env, "run_dir": run_dir, "logs": [run, exp],
            "dist": root / "dist" / "signed", "env_dist": root / "dist" / "env-signed"}


def test_signed_export_verifies_with_its_key(signed_flow):
    dist, a = signed_flow["dist"], signed_flow["a"]
    assert (dist / PROVENANCE).exists() and (dist / "model.safetensors").exists()
    v = run_cli("verify", str(dist), "--key", str(a["pub"]))
    assert v.returncode == 0, v.stdout + v.stderr
    assert f"signature OK (key {a['keyid']})" in v.stdout
    statement = provenance.verify_signature(dist, a["pub"])
    names = {s["name"] for s in statement["subject"]}
    # Every file but the two signatures; model.sig comes last, over the provenance too.
    assert (dist / MODEL_SIG).is_file()
    assert names == {p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file()} - {PROVENANCE, MODEL_SIG}
    assert {"manifest.json", "recipe.yaml", "README.md", "model.safetensors"} <= names
    manifest = json.loads((dist / "manifest.json").read_text())
    pred = statement["predicate"]
    assert pred["gate"]["verdict"] == "PASS" and pred["gate"]["checks"]
    assert pred["gate"]["candidate_hash"] == pred["content_hash"] == manifest["content_hash"]
    assert pred["base_model"] == manifest["base_model"] and pred["environment"] == manifest["environment"]
    assert pred["recipe"]["content"]["name"] == "tiny-llama-int4-rtn"
    # Without --key the hashes are still checked, and the claimed signer is named.
    v = run_cli("verify", str(dist))
    assert v.returncode == 0 and f"signed by {a['keyid']} (not checked: pass --key PUB)" in v.stdout


def test_env_key_text_signs_compress_export(signed_flow):
    dist, a, b = signed_flow["env_dist"], signed_flow["a"], signed_flow["b"]
    assert main(["verify", str(dist), "--key", str(b["pub"])]) == 0
    assert main(["verify", str(dist), "--key", str(a["pub"])]) == EXIT_RUNTIME
    assert main(["verify", str(signed_flow["dist"]), "--key", str(b["pub"])]) == EXIT_RUNTIME


def test_one_byte_change_to_any_exported_file_fails_verify(signed_flow, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(signed_flow["dist"], copy)
    pub = str(signed_flow["a"]["pub"])
    assert main(["verify", str(copy), "--key", pub]) == 0
    files = [p for p in sorted(copy.rglob("*")) if p.is_file()]
    assert len(files) >= 7 and PROVENANCE in {p.name for p in files}
    for path in files:
        original = _flip(path)
        try:
            assert main(["verify", str(copy), "--key", pub]) != 0, path.name
            with pytest.raises(IntegrityError):  # the signature checks alone catch it too
                provenance.verify_signatures(copy, pub)
        finally:
            path.write_bytes(original)
    assert main(["verify", str(copy), "--key", pub]) == 0


def test_wrong_key_and_edited_provenance_fail_verify(signed_flow, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(signed_flow["dist"], copy)
    a, b = signed_flow["a"], signed_flow["b"]
    v = run_cli("verify", str(copy), "--key", str(b["pub"]))
    assert v.returncode == EXIT_RUNTIME and "not by key" in v.stderr
    env = json.loads((copy / PROVENANCE).read_text())
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"]["gate"]["verdict"] = "PASS!"  # any edit of the signed statement
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (copy / PROVENANCE).write_bytes(provenance.envelope_bytes(env))
    v = run_cli("verify", str(copy), "--key", str(a["pub"]))
    assert v.returncode == EXIT_RUNTIME and "provenance edited" in v.stderr


def test_re_export_of_a_signed_run_is_unchanged_and_still_verifies(signed_flow):
    dist = signed_flow["dist"]
    before = (dist / PROVENANCE).read_bytes()
    e = run_cli("export", str(signed_flow["run_dir"]), "-o", str(dist), "--sign", str(signed_flow["a"]["priv"]),
                env=signed_flow["env"])
    assert e.returncode == 0, e.stderr
    assert (dist / PROVENANCE).read_bytes() == before
    assert main(["verify", str(dist), "--key", str(signed_flow["a"]["pub"])]) == 0


def test_no_private_key_material_in_runs_exports_cache_or_logs(signed_flow):
    needles, texts = [], []
    for key in (signed_flow["a"], signed_flow["b"]):
        pem = key["pem"]
        der_b64 = "".join(pem.strip().splitlines()[1:-1])
        private = serialization.load_pem_private_key(pem.encode(), None)
        raw = private.private_numbers().private_value.to_bytes(32, "big") if key["kind"] == "ec" else \
            private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
        needles += [pem.encode(), der_b64.encode(), base64.b64decode(der_b64), raw, raw.hex().encode(),
                    base64.b64encode(raw), b"PRIVATE KEY"]
        texts += [pem, der_b64, raw.hex(), base64.b64encode(raw).decode(), "PRIVATE KEY"]
    searched = 0
    for path in [*signed_flow["root"].rglob("*"), *signed_flow["cache"].rglob("*")]:
        if not path.is_file() or path.parent.name.startswith("keys-"):
            continue  # the key pairs themselves
        data = path.read_bytes()
        searched += 1
        for needle in needles:
            assert needle not in data, f"key material in {path}"
    assert searched > 20  # runs, reports, cache, both exports
    for p in signed_flow["logs"]:
        for text in texts:
            assert text not in p.stdout and text not in p.stderr


def test_help_does_not_import_cryptography():
    import subprocess
    import sys

    probe = ("import sys\nfrom compress.cli import main\nfor args in ({args}):\n    main(list(args))\n"
             "print('CRYPTO=' + ','.join(m for m in sys.modules if m.startswith(('cryptography', 'model_signing'))))")
    args = [["--help"], ["keygen", "--help"], ["verify", "--help"], ["export", "--help"], ["run", "--help"]]
    p = subprocess.run([sys.executable, "-c", probe.format(args=args)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.rstrip().endswith("CRYPTO="), p.stdout[-300:]


# ---------------------------------------------------------- model.sig: OpenSSF model_signing

def _model_signing_verify(export: Path, pub: Path) -> subprocess.CompletedProcess:
    """OpenSSF's own command line, exactly as a user runs it (no flags beyond the documented ones)."""
    return subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", "--signature",
                           str(export / MODEL_SIG), "--public_key", str(pub), str(export)],
                          capture_output=True, text=True, timeout=120)


def test_signed_export_passes_model_signing_verify_key(signed_flow):
    p = _model_signing_verify(signed_flow["dist"], signed_flow["a"]["pub"])
    assert p.returncode == 0 and "Verification succeeded" in p.stdout, p.stdout + p.stderr
    other = _keypair(signed_flow["root"] / "keys-other")
    p = _model_signing_verify(signed_flow["dist"], other["pub"])  # the key matters
    assert p.returncode == 1 and "Key mismatch" in p.stderr, p.stdout + p.stderr


@pytest.mark.parametrize("name", ["model.safetensors", "evidence/gate.json", PROVENANCE, "manifest.json"])
def test_one_byte_change_fails_model_signing_verify_key(signed_flow, tmp_path, name):
    copy = tmp_path / "copy"
    shutil.copytree(signed_flow["dist"], copy)
    pub = signed_flow["a"]["pub"]
    original = _flip(copy / name)
    p = _model_signing_verify(copy, pub)
    assert p.returncode == 1 and "Verification failed" in p.stderr, p.stdout + p.stderr
    [mismatch] = [line for line in p.stderr.splitlines() if "Hash mismatch for" in line]
    assert mismatch.count("Hash mismatch for") == 1 and name in mismatch  # that file, and only it
    (copy / name).write_bytes(original)
    assert _model_signing_verify(copy, pub).returncode == 0  # the change, and nothing else, failed it


def test_compress_verify_reports_both_signatures(signed_flow, tmp_path):
    dist, a = signed_flow["dist"], signed_flow["a"]
    v = run_cli("verify", str(dist), "--key", str(a["pub"]))
    assert v.returncode == 0, v.stdout + v.stderr
    assert f"signature OK (key {a['keyid']})" in v.stdout
    assert f"{MODEL_SIG} OK (OpenSSF model_signing, key {a['keyid']})" in v.stdout
    v = run_cli("verify", str(dist), "--key", str(a["pub"]), "--json")
    out = json.loads(v.stdout)
    assert out["signature"]["keyid"] == out["model_sig"]["keyid"] == a["keyid"] and out["model_sig"]["ok"]
    # An Ed25519 key signs the provenance only, and says so when it signs.
    b = signed_flow["b"]
    v = run_cli("verify", str(signed_flow["env_dist"]), "--key", str(b["pub"]))
    assert v.returncode == 0 and f"{MODEL_SIG}: none (an Ed25519 key" in v.stdout, v.stdout + v.stderr
    assert not (signed_flow["env_dist"] / MODEL_SIG).exists()
    export_log = signed_flow["logs"][1].stderr
    assert "is Ed25519" in export_log and "no model.sig" in export_log and "compress keygen" in export_log
    # model.sig changed by one byte, or removed: compress verify --key fails and names it.
    copy = tmp_path / "copy"
    shutil.copytree(dist, copy)
    _flip(copy / MODEL_SIG)
    v = run_cli("verify", str(copy), "--key", str(a["pub"]))
    assert v.returncode == EXIT_RUNTIME and f"{MODEL_SIG} does not verify" in v.stderr, v.stdout + v.stderr
    (copy / MODEL_SIG).unlink()
    v = run_cli("verify", str(copy), "--key", str(a["pub"]))
    assert v.returncode == EXIT_RUNTIME and f"no {MODEL_SIG}" in v.stderr, v.stdout + v.stderr
    assert run_cli("verify", str(copy)).returncode == 0  # without --key: hashes and gate only


def test_release_workflow_verifies_with_both_tools(signed_flow, tmp_path):
    """The release workflow's verify steps, run as written on a signed export, pass; after a one-byte
    change to a weight file, the model_signing step fails."""
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "model-release.yml").read_text())
    bin_dir = Path(sys.executable).parent
    for job, output in (("gate", "steps.run.outputs.name"), ("search", "steps.search.outputs.name")):
        steps = {s.get("name"): s.get("run", "") for s in flow["jobs"][job]["steps"]}
        compress_step = steps["Verify the export and its signatures (compress)"]
        openssf_step = steps["Verify model.sig with OpenSSF model-signing"]
        assert "compress verify" in compress_step and "--key keys/compress-signing.pub" in compress_step
        assert "model_signing verify key --signature" in openssf_step and "--public_key keys/compress-signing.pub" \
            in openssf_step
        work = tmp_path / job
        shutil.copytree(signed_flow["dist"], work / "dist" / "signed")
        (work / "keys").mkdir()
        shutil.copy(signed_flow["a"]["pub"], work / "keys" / "compress-signing.pub")

        def run_step(script, work=work, output=output):
            script = script.replace("${{ %s }}" % output, "signed").replace(".venv/bin/", f"{bin_dir}/")
            return subprocess.run(["bash", "-ec", script], cwd=work, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "COMPRESS_SIGN_KEY": ""})

        for script in (compress_step, openssf_step):
            p = run_step(script)
            assert p.returncode == 0, p.stdout + p.stderr
        _flip(work / "dist" / "signed" / "model.safetensors")
        p = run_step(openssf_step)
        assert p.returncode == 1 and "Hash mismatch for 'model.safetensors'" in p.stderr, p.stdout + p.stderr
