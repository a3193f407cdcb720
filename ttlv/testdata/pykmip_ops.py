#!/usr/bin/python3
"""Drives p11bridge's KMIP server with the Debian PyKMIP client through every operation PyKMIP
supports, at the KMIP version given on the command line. Exits non-zero on the first mismatch and
prints a JSON summary of the objects it made (the Go test checks them in the keymap).

usage: pykmip_ops.py HOST PORT CERT KEY CA VERSION CA_CERT_DER
       VERSION is an enums.KMIPVersion name: KMIP_1_2, KMIP_1_4, KMIP_2_0
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time

from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kmip.core import enums, primitives
from kmip.core import exceptions as core_exceptions
from kmip.core import objects as cobjects
from kmip.core.factories import attributes as attribute_factories
from kmip.pie import client as pie_client
from kmip.pie import exceptions, objects

host, port, cert, key, ca, version_name, ca_der_file = sys.argv[1:8]
version = getattr(enums.KMIPVersion, version_name)
v2 = version == enums.KMIPVersion.KMIP_2_0
tag = version_name.lower()
af = attribute_factories.AttributeFactory()
summary = {}


def fail(msg):
    print("FAIL [%s]: %s" % (version_name, msg), file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def expect_failure(fn, reasons, what):
    """Runs fn, which must fail with one of reasons (ResultReason enums)."""
    try:
        fn()
    except (exceptions.KmipOperationFailure, core_exceptions.OperationFailure) as e:
        # The pie client raises KmipOperationFailure; send_request_payload raises the core one.
        message = getattr(e, "message", None) or str(e)
        check(e.reason in reasons, "%s: failed with %s (%s), want %s" % (what, e.reason, message, reasons))
        check(message, "%s: failure without a message" % what)
        return e
    fail("%s: succeeded, want a failure" % what)


def attrs_of(c, uid, names=None):
    got_uid, attrs = c.get_attributes(uid, names)
    check(got_uid == uid, "get_attributes answered for %s, not %s" % (got_uid, uid))
    out = {}
    for a in attrs:
        out.setdefault(a.attribute_name.value, []).append(a.attribute_value)
    return out


# Lifecycle refusals: KMIP 2.0 has Wrong Key Lifecycle State; the 1.x test vectors use Permission Denied.
WRONG_STATE = [enums.ResultReason.WRONG_KEY_LIFECYCLE_STATE] if v2 else [enums.ResultReason.PERMISSION_DENIED]
NOT_EXTRACTABLE = [enums.ResultReason.PERMISSION_DENIED]
if version >= enums.KMIPVersion.KMIP_1_4:
    NOT_EXTRACTABLE = [enums.ResultReason.NOT_EXTRACTABLE]

c = pie_client.ProxyKmipClient(hostname=host, port=int(port), cert=cert, key=key, ca=ca,
                               ssl_version="PROTOCOL_SSLv23", kmip_version=version)
with c:
    # DiscoverVersions and Query go through the proxy.
    dv = c.proxy.discover_versions()
    check(dv.result_status.value == enums.ResultStatus.SUCCESS, "discover_versions failed")
    versions = [(v.major, v.minor) for v in dv.protocol_versions]
    check((2, 0) in versions and (1, 4) in versions and (1, 0) in versions, "discover_versions: %s" % versions)
    q = c.proxy.query(query_functions=[enums.QueryFunction.QUERY_OPERATIONS, enums.QueryFunction.QUERY_OBJECTS,
                                       enums.QueryFunction.QUERY_SERVER_INFORMATION])
    check(q.result_status.value == enums.ResultStatus.SUCCESS, "query failed")
    ops = set(getattr(o.value, "value", o.value) for o in q.operations)
    for want in (enums.Operation.CREATE, enums.Operation.CREATE_KEY_PAIR, enums.Operation.REGISTER, enums.Operation.GET,
                 enums.Operation.LOCATE, enums.Operation.ACTIVATE, enums.Operation.REVOKE, enums.Operation.DESTROY,
                 enums.Operation.MODIFY_ATTRIBUTE, enums.Operation.SIGN, enums.Operation.ENCRYPT, enums.Operation.MAC):
        check(want.value in ops, "query: %s missing from %s" % (want, ops))
    if version <= enums.KMIPVersion.KMIP_1_2:
        check(all(o <= 0x29 for o in ops), "query at %s lists operations above 0x29" % version_name)
    if v2:
        check(enums.Operation.SET_ATTRIBUTE.value in ops, "query at 2.0 lacks SetAttribute")
    check(str(getattr(q.vendor_identification, "value", q.vendor_identification)).startswith("p11bridge"), "vendor: %s" % q.vendor_identification)
    check(enums.ObjectType.SYMMETRIC_KEY.value in [getattr(o.value, "value", o.value) for o in q.object_types], "query objects")

    # Create an AES key: Pre-Active. This identity holds the export right (as a policy with
    # export = true gives it), so its keys may leave the token.
    aes_name = "py-aes-" + tag
    aes = c.create(enums.CryptographicAlgorithm.AES, 256, name=aes_name,
                   cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT])
    summary["aes"] = aes
    a = attrs_of(c, aes, ["Name", "Cryptographic Algorithm", "Cryptographic Length", "State", "Cryptographic Usage Mask", "Object Type"])
    check(a["Name"][0].name_value.value == aes_name, "name: %s" % a["Name"])
    check(a["Cryptographic Algorithm"][0].value == enums.CryptographicAlgorithm.AES, "algorithm")
    check(a["Cryptographic Length"][0].value == 256, "length")
    check(a["State"][0].value == enums.State.PRE_ACTIVE, "state after create: %s" % a["State"][0].value)
    check(a["Object Type"][0].value == enums.ObjectType.SYMMETRIC_KEY, "object type")
    if not v2:
        # KMIP 1.x: instances of multi-valued attributes carry their Attribute Index, 0 included.
        _, raw = c.get_attributes(aes, ["Name", "State"])
        by_name = {x.attribute_name.value: x for x in raw}
        check(by_name["Name"].attribute_index is not None and by_name["Name"].attribute_index.value == 0, "Name without Attribute Index 0")
        check(by_name["State"].attribute_index is None, "State (single-valued) with an Attribute Index")
    names = c.get_attribute_list(aes)
    for n in ("Name", "State", "Unique Identifier", "Cryptographic Algorithm", "Initial Date"):
        check(n in names, "get_attribute_list: %s missing from %s" % (n, names))
    check(c.check(uid=aes, usage_limits_count=None, cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT]) == aes, "check")
    expect_failure(lambda: c.check(uid=aes, cryptographic_usage_mask=[enums.CryptographicUsageMask.SIGN]),
                   [enums.ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK] if v2 else [enums.ResultReason.PERMISSION_DENIED], "check with Sign")

    # Locate by name, and by object type + length.
    found = c.locate(attributes=[af.create_attribute(enums.AttributeType.NAME, aes_name)])
    check(found == [aes], "locate by name: %s" % found)
    found = c.locate(attributes=[af.create_attribute(enums.AttributeType.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY),
                                 af.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 256)])
    check(aes in found, "locate by type and length")
    found = c.locate(maximum_items=1, attributes=[af.create_attribute(enums.AttributeType.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY)])
    check(len(found) == 1, "locate maximum_items=1 gave %d" % len(found))

    # The generated key comes back (wrapped in the token, unwrapped by the server); crypto needs an
    # Active key.
    aes_value = c.get(aes).value
    check(len(aes_value) == 32, "generated AES key of %d bytes" % len(aes_value))
    cbc = {"cryptographic_algorithm": enums.CryptographicAlgorithm.AES, "block_cipher_mode": enums.BlockCipherMode.CBC,
           "padding_method": enums.PaddingMethod.PKCS5}
    iv = os.urandom(16)
    expect_failure(lambda: c.encrypt(b"too early", uid=aes, cryptographic_parameters=cbc, iv_counter_nonce=iv), WRONG_STATE, "encrypt before activate")
    c.activate(aes)
    check(attrs_of(c, aes, ["State"])["State"][0].value == enums.State.ACTIVE, "state after activate")
    expect_failure(lambda: c.activate(aes), WRONG_STATE, "activate twice")
    ct, _ = c.encrypt(b"attack at dawn", uid=aes, cryptographic_parameters=cbc, iv_counter_nonce=iv)
    check(len(ct) == 16, "CBC ciphertext of %d bytes" % len(ct))
    check(c.decrypt(ct, uid=aes, cryptographic_parameters=cbc, iv_counter_nonce=iv) == b"attack at dawn", "CBC round trip")
    # The value Get gave is the key the token encrypts with.
    d = Cipher(algorithms.AES(aes_value), modes.CBC(iv)).decryptor()
    plain = d.update(ct) + d.finalize()
    check(plain[:14] == b"attack at dawn", "the key from Get does not decrypt the token's ciphertext")

    # Wrapped export: a KEK that may wrap; the key wrapped under it in the token, unwrapped here
    # with the KEK's own value, and registered back (unwrapped into the token).
    kek = c.create(enums.CryptographicAlgorithm.AES, 256, name="py-kek-" + tag,
                   cryptographic_usage_mask=[enums.CryptographicUsageMask.WRAP_KEY, enums.CryptographicUsageMask.UNWRAP_KEY])
    c.activate(kek)
    kek_value = c.get(kek).value
    for mode, unwrap in ((enums.BlockCipherMode.NIST_KEY_WRAP, keywrap.aes_key_unwrap),
                         (enums.BlockCipherMode.AES_KEY_WRAP_PADDING, keywrap.aes_key_unwrap_with_padding)):
        spec = {"wrapping_method": enums.WrappingMethod.ENCRYPT,
                "encryption_key_information": {"unique_identifier": kek, "cryptographic_parameters": {"block_cipher_mode": mode}},
                "encoding_option": enums.EncodingOption.NO_ENCODING}
        wrapped = c.get(aes, key_wrapping_specification=spec)
        check(wrapped.key_wrapping_data is not None and wrapped.value != aes_value, "%s: not wrapped" % mode)
        check(unwrap(kek_value, wrapped.value) == aes_value, "%s: unwrapped with the KEK's value, it is another key" % mode)
        wrapped.cryptographic_usage_masks = [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]
        back = c.register(wrapped)
        c.activate(back)
        ct2, iv4 = c.encrypt(b"round trip", uid=back, cryptographic_parameters=cbc)
        d = Cipher(algorithms.AES(aes_value), modes.CBC(iv4)).decryptor()
        check((d.update(ct2) + d.finalize())[:10] == b"round trip", "%s: the key registered wrapped is another key" % mode)
    expect_failure(lambda: c.get(aes, key_wrapping_specification={"wrapping_method": enums.WrappingMethod.ENCRYPT,
                   "encryption_key_information": {"unique_identifier": aes, "cryptographic_parameters": {"block_cipher_mode": enums.BlockCipherMode.NIST_KEY_WRAP}}}),
                   [enums.ResultReason.INVALID_FIELD], "wrap a key under itself")
    # Server-made IV.
    ct, iv2 = c.encrypt(b"x" * 33, uid=aes, cryptographic_parameters=cbc)
    check(iv2 is not None and len(iv2) == 16, "server IV: %r" % iv2)
    check(c.decrypt(ct, uid=aes, cryptographic_parameters=cbc, iv_counter_nonce=iv2) == b"x" * 33, "CBC round trip with server IV")
    if not v2 and version < enums.KMIPVersion.KMIP_1_4:
        # Before 1.4 the GCM tag travels at the end of the ciphertext.
        gcm = {"cryptographic_algorithm": enums.CryptographicAlgorithm.AES, "block_cipher_mode": enums.BlockCipherMode.GCM, "tag_length": 16}
        # A key serves one block mode family: the CBC key refuses GCM, a key of its own serves it.
        expect_failure(lambda: c.encrypt(b"gcm data", uid=aes, cryptographic_parameters=gcm),
                       [enums.ResultReason.PERMISSION_DENIED], "GCM with a CBC key")
        gk = c.create(enums.CryptographicAlgorithm.AES, 256, name=aes_name + "-gcm")
        c.activate(gk)
        ct, nonce = c.encrypt(b"gcm data", uid=gk, cryptographic_parameters=gcm)
        check(len(ct) == 8 + 16 and len(nonce) == 12, "GCM output %d bytes, nonce %d" % (len(ct), len(nonce)))
        check(c.decrypt(ct, uid=gk, cryptographic_parameters=gcm, iv_counter_nonce=nonce) == b"gcm data", "GCM round trip")
        bad = ct[:-1] + bytes([ct[-1] ^ 1])
        expect_failure(lambda: c.decrypt(bad, uid=gk, cryptographic_parameters=gcm, iv_counter_nonce=nonce),
                       [enums.ResultReason.CRYPTOGRAPHIC_FAILURE], "GCM with a bad tag")

    # Attribute changes.
    if v2:
        c.set_attribute(unique_identifier=aes, attribute_name="Contact Information", attribute_value="ops@example.org")
        check(attrs_of(c, aes, ["Contact Information"])["Contact Information"][0].value == "ops@example.org", "set_attribute")
        new = cobjects.NewAttribute(attribute=primitives.TextString("secops@example.org", tag=enums.Tags.CONTACT_INFORMATION))
        c.modify_attribute(unique_identifier=aes, new_attribute=new)
        check(attrs_of(c, aes, ["Contact Information"])["Contact Information"][0].value == "secops@example.org", "modify_attribute (2.0)")
        name_v = af.create_attribute(enums.AttributeType.NAME, "py-aes-renamed-" + tag).attribute_value
        name_v.tag = enums.Tags.NAME
        c.modify_attribute(unique_identifier=aes, new_attribute=cobjects.NewAttribute(attribute=name_v))
        check(attrs_of(c, aes, ["Name"])["Name"][0].name_value.value == "py-aes-renamed-" + tag, "rename (2.0)")
        ref = cobjects.AttributeReference(vendor_identification="", attribute_name="Contact Information")
        c.delete_attribute(unique_identifier=aes, attribute_reference=ref)
        check("Contact Information" not in attrs_of(c, aes), "delete_attribute by reference (2.0)")
        expect_failure(lambda: c.set_attribute(unique_identifier=aes, attribute_name="State", attribute_value=enums.State.ACTIVE),
                       [enums.ResultReason.ATTRIBUTE_READ_ONLY, enums.ResultReason.INVALID_FIELD], "set a server attribute")
    else:
        renamed = "py-aes-renamed-" + tag
        uid, attr = c.modify_attribute(unique_identifier=aes, attribute=af.create_attribute(enums.AttributeType.NAME, renamed))
        check(uid == aes and attr.attribute_value.name_value.value == renamed, "modify_attribute(Name)")
        check(attrs_of(c, aes, ["Name"])["Name"][0].name_value.value == renamed, "rename visible")
        check(c.locate(attributes=[af.create_attribute(enums.AttributeType.NAME, renamed)]) == [aes], "locate renamed")
        uid, attr = c.delete_attribute(unique_identifier=aes, attribute_name="Cryptographic Usage Mask")
        check(uid == aes and attr.attribute_value.value == 12, "delete_attribute returned %r" % attr)
        check("Cryptographic Usage Mask" not in attrs_of(c, aes), "usage mask still there")
        expect_failure(lambda: c.delete_attribute(unique_identifier=aes, attribute_name="State"),
                       [enums.ResultReason.PERMISSION_DENIED, enums.ResultReason.INVALID_FIELD], "delete State")

    # ReKey: a new Active key linked to the old one.
    rekeyed = c.rekey(uid=aes)
    summary["aes_rekeyed"] = rekeyed
    check(rekeyed != aes, "rekey returned the same id")
    ra = attrs_of(c, rekeyed, ["State", "Cryptographic Length"])
    check(ra["State"][0].value == enums.State.ACTIVE, "rekeyed key state: %s" % ra["State"][0].value)
    # PyKMIP 0.10 cannot decode Link values; the Go test checks the links themselves.
    check("Link" in c.get_attribute_list(rekeyed), "rekeyed key has no Link")
    ct, iv3 = c.encrypt(b"new key", uid=rekeyed, cryptographic_parameters=cbc)
    check(c.decrypt(ct, uid=rekeyed, cryptographic_parameters=cbc, iv_counter_nonce=iv3) == b"new key", "rekeyed key works")

    # The replacement of an exportable key is exportable, and Locate by Name finds it first.
    check(len(c.get(rekeyed).value) == 32, "the replacement does not come back")
    if not v2:
        found = c.locate(attributes=[af.create_attribute(enums.AttributeType.NAME, "py-aes-renamed-" + tag)])
        check(found[:1] == [rekeyed] and aes in found, "locate by name after rekey: %s" % found)

    # Lifecycle: an Active key cannot be destroyed; revoke, then destroy; then its material is
    # gone and its metadata stays.
    expect_failure(lambda: c.destroy(aes), WRONG_STATE, "destroy an Active key")
    c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, aes, revocation_message="done")
    check(attrs_of(c, aes, ["State"])["State"][0].value == enums.State.DEACTIVATED, "state after revoke")
    expect_failure(lambda: c.encrypt(b"late", uid=aes, cryptographic_parameters=cbc, iv_counter_nonce=iv), WRONG_STATE, "encrypt with a deactivated key")
    c.destroy(aes)
    da = attrs_of(c, aes, ["State", "Destroy Date", "Name", "Cryptographic Length"])
    check(da["State"][0].value == enums.State.DESTROYED, "state after destroy: %s" % da["State"][0].value)
    check("Destroy Date" in da and da["Cryptographic Length"][0].value == 256, "destroyed key's metadata: %s" % list(da))
    check(len(attrs_of(c, aes)) > 5, "unfiltered get_attributes of a destroyed key")
    expect_failure(lambda: c.get(aes), WRONG_STATE, "get of a destroyed key")
    expect_failure(lambda: c.destroy(aes), WRONG_STATE, "destroy twice")
    check(aes not in c.locate(attributes=[af.create_attribute(enums.AttributeType.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY)]), "locate finds a destroyed key")
    c.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, rekeyed, compromise_occurrence_date=int(time.time()) - 60)
    check(attrs_of(c, rekeyed, ["State"])["State"][0].value == enums.State.COMPROMISED, "state after compromise")
    c.destroy(rekeyed)
    check(attrs_of(c, rekeyed, ["State"])["State"][0].value == enums.State.DESTROYED_COMPROMISED, "a compromised key destroyed")

    # DeriveKey: a new key, made in the token, from the encryption of data under a base key.
    base = c.create(enums.CryptographicAlgorithm.AES, 256, name="py-derive-base-" + tag,
                    cryptographic_usage_mask=[enums.CryptographicUsageMask.DERIVE_KEY, enums.CryptographicUsageMask.ENCRYPT])
    c.activate(base)
    base_value = c.get(base).value
    data, div = os.urandom(32), os.urandom(16)
    derived = c.derive_key(enums.ObjectType.SYMMETRIC_KEY, [base], enums.DerivationMethod.ENCRYPT,
                           {"cryptographic_parameters": {"block_cipher_mode": enums.BlockCipherMode.CBC, "cryptographic_algorithm": enums.CryptographicAlgorithm.AES},
                            "initialization_vector": div, "derivation_data": data},
                           cryptographic_algorithm=enums.CryptographicAlgorithm.AES, cryptographic_length=256)
    e = Cipher(algorithms.AES(base_value), modes.CBC(div)).encryptor()
    check(c.get(derived).value == (e.update(data) + e.finalize()), "derived key differs from the encryption of the data")
    e = expect_failure(lambda: c.derive_key(enums.ObjectType.SYMMETRIC_KEY, [base], enums.DerivationMethod.PBKDF2,
                                            {"salt": b"salt", "iteration_count": 1000, "cryptographic_parameters": {"hashing_algorithm": enums.HashingAlgorithm.SHA_256}},
                                            cryptographic_algorithm=enums.CryptographicAlgorithm.AES, cryptographic_length=128),
                       [enums.ResultReason.FEATURE_NOT_SUPPORTED], "derive with PBKDF2")
    check("PBKDF2" in (getattr(e, "message", None) or str(e)), "the refusal does not name PBKDF2")

    # Algorithms SoftHSM2 lacks are refused by name.
    for alg, name in ((enums.CryptographicAlgorithm.BLOWFISH, "Blowfish"), (enums.CryptographicAlgorithm.IDEA, "IDEA"),
                      (enums.CryptographicAlgorithm.CAST5, "CAST5")):
        e = expect_failure(lambda: c.create(alg, 128), [enums.ResultReason.FEATURE_NOT_SUPPORTED], "create %s" % name)
        check(name.lower() in (getattr(e, "message", None) or str(e)).lower(), "the refusal does not name %s" % name)

    # RSA key pair: sign with PKCS#1 v1.5 and PSS, verify, public key as PKCS#1.
    pub, priv = c.create_key_pair(enums.CryptographicAlgorithm.RSA, 2048,
                                  public_name="py-rsa-pub-" + tag, public_usage_mask=[enums.CryptographicUsageMask.VERIFY],
                                  private_name="py-rsa-priv-" + tag, private_usage_mask=[enums.CryptographicUsageMask.SIGN])
    summary["rsa_pub"], summary["rsa_priv"] = pub, priv
    pa = attrs_of(c, priv, ["Name", "Cryptographic Usage Mask", "Object Type"])
    check(pa["Name"][0].name_value.value == "py-rsa-priv-" + tag, "private name")
    check(pa["Cryptographic Usage Mask"][0].value == enums.CryptographicUsageMask.SIGN.value, "private mask %r" % pa["Cryptographic Usage Mask"][0].value)
    check(pa["Object Type"][0].value == enums.ObjectType.PRIVATE_KEY, "private object type")
    check("Link" in c.get_attribute_list(priv), "private key has no Link")
    check(len(attrs_of(c, priv)) > 5, "unfiltered get_attributes of a key pair half")
    c.activate(priv)
    c.activate(pub)
    msg = b"the message to sign"
    for pad, params in (("pkcs1", {"padding_method": enums.PaddingMethod.PKCS1v15, "hashing_algorithm": enums.HashingAlgorithm.SHA_256,
                                   "cryptographic_algorithm": enums.CryptographicAlgorithm.RSA}),
                        ("pss", {"padding_method": enums.PaddingMethod.PSS, "hashing_algorithm": enums.HashingAlgorithm.SHA_384,
                                 "cryptographic_algorithm": enums.CryptographicAlgorithm.RSA}),
                        ("sha512", {"digital_signature_algorithm": enums.DigitalSignatureAlgorithm.SHA512_WITH_RSA_ENCRYPTION})):
        sig = c.sign(msg, uid=priv, cryptographic_parameters=params)
        check(len(sig) == 256, "%s signature of %d bytes" % (pad, len(sig)))
        check(c.signature_verify(msg, sig, uid=pub, cryptographic_parameters=params) == enums.ValidityIndicator.VALID, "%s verify" % pad)
        check(c.signature_verify(msg + b"!", sig, uid=pub, cryptographic_parameters=params) == enums.ValidityIndicator.INVALID, "%s verify of other data" % pad)
        summary["sig_" + pad] = sig.hex()
    summary["signed"] = msg.hex()
    got = c.get(pub)
    check(got.key_format_type == enums.KeyFormatType.PKCS_1, "public key format %s" % got.key_format_type)
    # PKCS#1 RSAPublicKey: verify the PKCS#1 v1.5 signature with the cryptography library.
    pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(got.value) + b"-----END RSA PUBLIC KEY-----\n"
    rsa_pub = serialization.load_pem_public_key(pem)
    rsa_pub.verify(bytes.fromhex(summary["sig_pkcs1"]), msg, padding.PKCS1v15(), hashes.SHA256())
    # The generated private key comes back as PKCS#8, the public key's partner.
    got = c.get(priv)
    check(got.key_format_type == enums.KeyFormatType.PKCS_8, "private key format %s" % got.key_format_type)
    sk_back = serialization.load_der_private_key(got.value, None)
    check(sk_back.public_key().public_numbers() == rsa_pub.public_numbers(), "the private key from Get is not the pair's")
    expect_failure(lambda: c.sign(msg, uid=pub, cryptographic_parameters={"padding_method": enums.PaddingMethod.PKCS1v15}),
                   [enums.ResultReason.INVALID_FIELD, enums.ResultReason.PERMISSION_DENIED, enums.ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK],
                   "sign with the public key")

    # Register: symmetric keys (AES, HMAC), secret data, opaque data, a certificate, RSA key halves.
    aes_bytes = os.urandom(16)
    reg_aes = c.register(objects.SymmetricKey(enums.CryptographicAlgorithm.AES, 128, aes_bytes,
                                              masks=[enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT],
                                              name="py-reg-aes-" + tag))
    got = c.get(reg_aes)
    check(got.value == aes_bytes and got.cryptographic_length == 128, "registered AES key came back different")
    # SoftHSM refuses HMAC keys shorter than the hash output, so 64 bytes serve SHA-256 and SHA-512.
    hmac_bytes = os.urandom(64)
    reg_hmac = c.register(objects.SymmetricKey(enums.CryptographicAlgorithm.HMAC_SHA256, 512, hmac_bytes,
                                               masks=[enums.CryptographicUsageMask.MAC_GENERATE], name="py-hmac-" + tag))
    summary["hmac"] = reg_hmac
    c.activate(reg_hmac)
    uid, mac = c.mac(b"mac me", uid=reg_hmac, algorithm=enums.CryptographicAlgorithm.HMAC_SHA256)
    check(uid == reg_hmac and mac == hmac.new(hmac_bytes, b"mac me", hashlib.sha256).digest(), "HMAC-SHA256 differs")
    uid, mac = c.mac(b"mac me", uid=reg_hmac, algorithm=enums.CryptographicAlgorithm.HMAC_SHA512)
    check(mac == hmac.new(hmac_bytes, b"mac me", hashlib.sha512).digest(), "HMAC-SHA512 differs")
    gen_hmac = c.create(enums.CryptographicAlgorithm.HMAC_SHA384, 384, name="py-gen-hmac-" + tag,
                        cryptographic_usage_mask=[enums.CryptographicUsageMask.MAC_GENERATE])
    c.activate(gen_hmac)
    uid, mac = c.mac(b"abc", uid=gen_hmac, algorithm=enums.CryptographicAlgorithm.HMAC_SHA384)
    check(len(mac) == 48, "HMAC-SHA384 of %d bytes" % len(mac))
    secret = c.register(objects.SecretData(b"hunter2", enums.SecretDataType.PASSWORD, name="py-secret-" + tag))
    got = c.get(secret)
    check(got.value == b"hunter2" and got.data_type == enums.SecretDataType.PASSWORD, "secret data came back different")
    # A database master key: 96 bytes of Secret Data (MongoDB's), Activate, Get.
    db_key = os.urandom(96)
    db_secret = c.register(objects.SecretData(db_key, enums.SecretDataType.SEED, name="py-db-master-" + tag))
    c.activate(db_secret)
    check(c.get(db_secret).value == db_key, "96-byte secret data came back different")
    # Keys as clients send them: a wrong AES length names the right ones; PKCS#1 bytes labelled
    # PKCS_8 and SEC1 bytes labelled PKCS_8 are taken.
    e = expect_failure(lambda: c.register(objects.SymmetricKey(enums.CryptographicAlgorithm.AES, 160, os.urandom(20))),
                       [enums.ResultReason.INVALID_FIELD], "register a 20-byte AES key")
    check("16, 24 or 32" in (getattr(e, "message", None) or str(e)), "the refusal does not name the AES sizes")
    sk1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = sk1.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    mislabelled = c.register(objects.PrivateKey(enums.CryptographicAlgorithm.RSA, 2048, pkcs1, enums.KeyFormatType.PKCS_8, name="py-pkcs1-as-8-" + tag))
    back = serialization.load_der_private_key(c.get(mislabelled).value, None)
    check(back.private_numbers() == sk1.private_numbers(), "a PKCS#1 key registered as PKCS_8 came back different")
    eck = ec.generate_private_key(ec.SECP256R1())
    sec1 = eck.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    ec_uid = c.register(objects.PrivateKey(enums.CryptographicAlgorithm.EC, 256, sec1, enums.KeyFormatType.PKCS_8, name="py-sec1-as-8-" + tag))
    back = serialization.load_der_private_key(c.get(ec_uid).value, None)
    check(back.private_numbers() == eck.private_numbers(), "a SEC1 key registered as PKCS_8 came back different")
    opaque = c.register(objects.OpaqueObject(b"\x00\x01opaque", enums.OpaqueDataType.NONE, name="py-opaque-" + tag))
    check(c.get(opaque).value == b"\x00\x01opaque", "opaque object came back different")
    ca_der = open(ca_der_file, "rb").read()
    cert_uid = c.register(objects.X509Certificate(ca_der, name="py-cert-" + tag))
    check(c.get(cert_uid).value == ca_der, "certificate came back different")
    check(attrs_of(c, cert_uid, ["Object Type"])["Object Type"][0].value == enums.ObjectType.CERTIFICATE, "certificate type")
    sk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = sk.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pkcs1_pub = sk.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    reg_priv = c.register(objects.PrivateKey(enums.CryptographicAlgorithm.RSA, 2048, pkcs8, enums.KeyFormatType.PKCS_8,
                                             masks=[enums.CryptographicUsageMask.SIGN], name="py-reg-priv-" + tag))
    reg_pub = c.register(objects.PublicKey(enums.CryptographicAlgorithm.RSA, 2048, pkcs1_pub, enums.KeyFormatType.PKCS_1,
                                           masks=[enums.CryptographicUsageMask.VERIFY], name="py-reg-pub-" + tag))
    check(c.get(reg_priv).value == pkcs8, "registered private key came back different")
    check(c.get(reg_pub).value == pkcs1_pub, "registered public key came back different")
    c.activate(reg_priv)
    sig = c.sign(msg, uid=reg_priv, cryptographic_parameters={"padding_method": enums.PaddingMethod.PKCS1v15, "hashing_algorithm": enums.HashingAlgorithm.SHA_256})
    sk.public_key().verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())
    for uid in (reg_aes, secret, opaque, cert_uid, reg_pub):
        c.destroy(uid)
    c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, reg_priv)
    c.destroy(reg_priv)
    expect_failure(lambda: c.get("00" * 20), [enums.ResultReason.ITEM_NOT_FOUND], "get an unknown id")

print(json.dumps(summary))
