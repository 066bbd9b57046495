//! The server's configuration: its key and listen port, and the peers allowed in.
//!
//! Keys are kept as base64 text, as WireGuard configuration files write them; `validate` checks them all so that
//! a bad key is reported with the name of its field before anything starts.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    pub listen_port: u16,
    pub private_key: String,
    pub peers: Vec<Peer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub public_key: String,
    /// Known when the server generated the peer's key, so that a client config can be printed for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key: Option<String>,
}

impl Peer {
    pub fn from_private_key(field: &str, private_key: &str) -> Result<Self> {
        Ok(Peer {
            public_key: keys::public_of(field, private_key)?,
            private_key: Some(private_key.trim().to_string()),
            preshared_key: None,
        })
    }
}

impl Configuration {
    /// Fresh keys for the server and `peers` clients.
    pub fn generate(listen_port: u16, peers: usize) -> Result<Self> {
        let peers = (0..peers)
            .map(|_| Peer::from_private_key("peer private key", &keys::generate()))
            .collect::<Result<_>>()?;
        Ok(Configuration {
            listen_port,
            private_key: keys::generate(),
            peers,
        })
    }

    pub fn custom(
        listen_port: u16,
        server_private_key: &str,
        client_private_keys: &[String],
    ) -> Result<Self> {
        let peers = client_private_keys
            .iter()
            .enumerate()
            .map(|(i, key)| Peer::from_private_key(&format!("client_private_keys[{i}]"), key))
            .collect::<Result<_>>()?;
        let config = Configuration {
            listen_port,
            private_key: server_private_key.trim().to_string(),
            peers,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a configuration always serializes")
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let config: Configuration =
            serde_json::from_str(text).map_err(|e| Error::config("configuration JSON", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every key, names the field of the first bad one.
    pub fn validate(&self) -> Result<()> {
        keys::decode("server_private_key", &self.private_key)?;
        let mut seen = std::collections::HashSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let public = keys::decode(&format!("peers[{i}].public_key"), &peer.public_key)?;
            if let Some(private) = &peer.private_key {
                let derived = keys::public_of(&format!("peers[{i}].private_key"), private)?;
                if keys::decode("", &derived)? != public {
                    return Err(Error::config(
                        format!("peers[{i}].private_key"),
                        "does not belong to the peer's public key",
                    ));
                }
            }
            if let Some(psk) = &peer.preshared_key {
                keys::decode(&format!("peers[{i}].preshared_key"), psk)?;
            }
            if !seen.insert(public) {
                return Err(Error::config(
                    format!("peers[{i}].public_key"),
                    "the same peer is listed twice",
                ));
            }
        }
        Ok(())
    }

    pub fn server_public_key(&self) -> Result<String> {
        keys::public_of("server_private_key", &self.private_key)
    }

    /// One client configuration text per peer, in the format WireGuard clients import.
    pub fn client_configs(&self, address: &str, allowed_ips: &str, endpoint: &str) -> Result<Vec<String>> {
        let server_public_key = self.server_public_key()?;
        Ok(self
            .peers
            .iter()
            .map(|peer| {
                let private_key = match &peer.private_key {
                    Some(key) => format!("PrivateKey = {key}"),
                    None => "# PrivateKey = (the device's own key)".to_string(),
                };
                let preshared_key = match &peer.preshared_key {
                    Some(key) => format!("PresharedKey = {key}\n"),
                    None => String::new(),
                };
                format!(
                    "[Interface]\n{private_key}\nAddress = {address}\n\n\
                     [Peer]\nPublicKey = {server_public_key}\n{preshared_key}\
                     AllowedIPs = {allowed_ips}\nEndpoint = {endpoint}\n"
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips() {
        let config = Configuration::generate(51820, 3).unwrap();
        let back = Configuration::from_json(&config.to_json()).unwrap();
        assert_eq!(config, back);
        assert_eq!(back.peers.len(), 3);
    }

    #[test]
    fn custom_derives_public_keys() {
        let client = keys::generate();
        let config = Configuration::custom(1, &keys::generate(), std::slice::from_ref(&client)).unwrap();
        assert_eq!(config.peers[0].public_key, keys::public_of("", &client).unwrap());
    }

    #[test]
    fn bad_keys_name_their_field() {
        let err = Configuration::custom(1, "nope", &[]).unwrap_err();
        assert!(err.to_string().contains("server_private_key"), "{err}");
        let err = Configuration::custom(1, &keys::generate(), &["x".into()]).unwrap_err();
        assert!(err.to_string().contains("client_private_keys[0]"), "{err}");
    }

    #[test]
    fn duplicate_and_mismatched_peers_are_rejected() {
        let mut config = Configuration::generate(1, 2).unwrap();
        config.peers[1].public_key = config.peers[0].public_key.clone();
        assert!(config.validate().unwrap_err().to_string().contains("peers[1]"));
        let json = config
            .to_json()
            .replace("\"listen_port\": 1", "\"listen_port\": 70000");
        assert!(Configuration::from_json(&json).is_err());
    }

    #[test]
    fn client_configs_name_server_key_and_endpoint() {
        let config = Configuration::generate(51820, 2).unwrap();
        let texts = config
            .client_configs("10.0.0.1/32", "0.0.0.0/0", "192.0.2.1:51820")
            .unwrap();
        assert_eq!(texts.len(), 2);
        for (text, peer) in texts.iter().zip(&config.peers) {
            assert!(text.contains(peer.private_key.as_ref().unwrap()));
            assert!(text.contains(&config.server_public_key().unwrap()));
            assert!(text.contains("Endpoint = 192.0.2.1:51820"));
        }
    }
}
