//! Client configurations: the text a WireGuard client imports for each peer.

use super::values::join;
use super::{Configuration, DEFAULT_MTU};
use crate::error::{Error, Result};

/// What a client configuration says besides its keys; see `Configuration::client_configs`.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// The client's tunnel addresses; `None`: each peer's own AllowedIPs.
    pub address: Option<String>,
    /// What the client routes into the tunnel.
    pub allowed_ips: String,
    /// The server's address as the client reaches it.
    pub endpoint: String,
    /// The client's resolvers, comma-separated, "" for none; `None`: the configuration's DNS.
    pub dns: Option<String>,
    /// The client's MTU, 0 for none; `None`: the configuration's MTU, or `DEFAULT_MTU`.
    pub mtu: Option<u16>,
}

impl Configuration {
    /// One client configuration text per peer, in the format WireGuard clients import.
    pub fn client_configs(&self, options: &ClientOptions) -> Result<Vec<String>> {
        let server_public_key = self.server_public_key()?;
        let dns = match &options.dns {
            Some(dns) => dns.clone(),
            None => self.dns.join(", "),
        };
        let mtu = options.mtu.or(self.mtu).unwrap_or(DEFAULT_MTU);
        self.peers
            .iter()
            .map(|peer| {
                let mut text = String::from("[Interface]\n");
                match &peer.private_key {
                    Some(key) => text += &format!("PrivateKey = {key}\n"),
                    None => text += "PrivateKey = <the device's own key>\n",
                }
                let address = match &options.address {
                    Some(address) => address.clone(),
                    None if peer.allowed_ips.is_empty() => {
                        return Err(Error::config(
                            "address",
                            format!(
                                "peer {} has no tunnel address (AllowedIPs): give one",
                                peer.public_key
                            ),
                        ))
                    }
                    None => join(&peer.allowed_ips),
                };
                text += &format!("Address = {address}\n");
                if !dns.trim().is_empty() {
                    text += &format!("DNS = {dns}\n");
                }
                if mtu != 0 {
                    text += &format!("MTU = {mtu}\n");
                }
                text += &format!("\n[Peer]\nPublicKey = {server_public_key}\n");
                if let Some(key) = &peer.preshared_key {
                    text += &format!("PresharedKey = {key}\n");
                }
                text += &format!(
                    "AllowedIPs = {}\nEndpoint = {}\n",
                    options.allowed_ips, options.endpoint
                );
                Ok(text)
            })
            .collect()
    }
}
