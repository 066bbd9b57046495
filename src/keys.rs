//! WireGuard keys: Curve25519 keys, written as base64 the way `wg genkey` and `wg pubkey` print them.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};
use rand_core::OsRng;

use crate::error::{Error, Result};

/// Decodes a base64 key; `field` names the key in the error message.
pub fn decode(field: &str, text: &str) -> Result<[u8; 32]> {
    let invalid = |reason: &str| Error::InvalidKey {
        field: field.to_string(),
        reason: reason.to_string(),
    };
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|_| invalid("not valid base64"))?;
    bytes
        .try_into()
        .map_err(|_| invalid("a key must be 32 bytes (44 characters of base64)"))
}

pub fn encode(key: &[u8; 32]) -> String {
    BASE64.encode(key)
}

pub fn secret(field: &str, text: &str) -> Result<StaticSecret> {
    decode(field, text).map(StaticSecret::from)
}

pub fn public(field: &str, text: &str) -> Result<PublicKey> {
    decode(field, text).map(PublicKey::from)
}

/// A fresh private key, clamped as `wg genkey` prints it.
pub fn generate() -> String {
    let secret = StaticSecret::random_from_rng(OsRng);
    encode(&clamp(secret.to_bytes()))
}

/// The public key of a base64 private key.
pub fn public_of(field: &str, private_key: &str) -> Result<String> {
    let secret = secret(field, private_key)?;
    Ok(encode(PublicKey::from(&secret).as_bytes()))
}

fn clamp(mut key: [u8; 32]) -> [u8; 32] {
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let key = generate();
        let bytes = decode("k", &key).unwrap();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 0xc0, 0x40);
        assert_eq!(encode(&bytes), key);
    }

    #[test]
    fn public_key_matches_known_vector() {
        // RFC 7748 section 6.1: Alice's private and public key.
        let private = encode(&[
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2, 0x66, 0x45,
            0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5, 0x1d, 0xb9, 0x2c, 0x2a,
        ]);
        let public = public_of("k", &private).unwrap();
        assert_eq!(decode("k", &public).unwrap()[..4], [0x85, 0x20, 0xf0, 0x09]);
    }

    #[test]
    fn bad_keys_name_the_field() {
        let err = decode("server_private_key", "not base64!").unwrap_err();
        assert!(err.to_string().contains("server_private_key"));
        let err = decode("peer public key", "AAAA").unwrap_err();
        assert!(err.to_string().contains("peer public key"));
        assert!(err.to_string().contains("32 bytes"));
    }
}
