//! A user-space WireGuard server that hands every TCP connection and UDP datagram of its peers to Python.
//!
//! Where a packet goes: `wireguard` (the UDP socket and the WireGuard protocol) passes decrypted IP packets to
//! `network` (the TCP/IP stack), which passes connections, data and datagrams to Python through `events`;
//! Python's writes come back as `messages::PythonToNetwork`. `server` starts the tasks and `supervisor` joins them.

pub mod budget;
pub mod capture;
pub mod config;
mod console;
pub mod error;
pub mod events;
pub mod ids;
pub mod keys;
pub mod messages;
pub mod network;
pub mod ratelog;
pub mod server;
mod shares;
pub mod shutdown;
pub mod supervisor;
pub mod wireguard;

#[cfg(feature = "python")]
mod python;

#[cfg(test)]
mod tests {
    mod fuzz;
}
