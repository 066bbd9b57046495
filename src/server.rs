//! Starting and stopping a server: binds the socket, then runs the WireGuard and network tasks on an engine
//! thread of their own, so that Python's thread only converts and dispatches.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;

use crate::budget::{ByteBudget, TunnelQueue};
use crate::config::Configuration;
use crate::console;
use crate::error::{Error, Result};
use crate::events::EventSender;
use crate::messages::{NetworkToPython, PythonToNetwork, PythonToWireGuard};
use crate::network::{stack::Stack, NetworkTask};
use crate::shutdown;
use crate::supervisor;
use crate::wireguard::{peers::Peers, Channels, WireGuardTask};

/// Packets from the WireGuard task that wait for the network task; beyond this the WireGuard task waits
/// (and the kernel's socket buffer, then the client, see the backpressure).
const PACKET_QUEUE: usize = 1024;

/// Bytes of Python's writes and datagrams that wait for the network task; datagrams beyond it are dropped.
/// Twice what Python's queue holds of data for a handler the other way is far more than the network task lets
/// wait: it takes a batch of Python's messages at every turn.
const PYTHON_QUEUE_BYTES: usize = 8 << 20;

/// Bytes and packets of datagrams that wait for the WireGuard task to encrypt and send them, shared by the
/// peers (`shares`): a peer that has them alone holds half, about what a kernel buffers for a UDP socket
/// (`net.core.wmem_default`, 208 KiB). A packet for another peer, TCP included, waits behind little more than
/// that (well under a millisecond of encryption) however much Python sends to one peer.
const TUNNEL_QUEUE_BYTES: usize = 512 << 10;
const TUNNEL_QUEUE_PACKETS: usize = 4096;

/// Mappings left for everything but the connections' buffers (libraries, heaps, thread stacks, Python's own):
/// a process of the server holds a few hundred.
const RESERVED_MAPPINGS: usize = 4096;

/// UDP socket buffers: room for what arrives at full speed while the WireGuard task is off the CPU for a moment
/// (tens of milliseconds on a busy machine). Beyond it the kernel drops arriving datagrams of every peer alike,
/// before the engine's per-peer shares can tell a flooding peer from the others. The kernel books twice what is
/// asked, and caps an unprivileged process at `net.core.rmem_max` and `wmem_max`.
const SOCKET_BUFFER: usize = 16 << 20;

/// Which end of tunnels the engine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Peers dial in, and every connection they open goes to Python. `ask_first`: each SYN waits for Python's
    /// answer (`Stack::set_ask_first`).
    Server { ask_first: bool },
    /// One peer, the server, dialled at its Endpoint; Python opens the connections (`PythonToNetwork::Connect`),
    /// and SYNs from the other side get a RST.
    Client,
}

pub struct Server {
    local_addr: SocketAddr,
    to_network: mpsc::UnboundedSender<PythonToNetwork>,
    /// What `to_network` holds.
    to_network_budget: Arc<ByteBudget>,
    to_wireguard: mpsc::UnboundedSender<PythonToWireGuard>,
    trigger: shutdown::Trigger,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `host:config.listen_port` and starts the tasks. `events` receives everything meant for Python,
    /// last of all `ServerClosed`, with the reason if a task failed. As a client, `config` names one peer, the
    /// server, by its Endpoint (a name is resolved here), and `host` is not used: the socket is bound to every
    /// address of the endpoint's family.
    pub fn start(host: &str, config: &Configuration, events: EventSender, role: Role) -> Result<Server> {
        let client_config;
        let (config, host) = match role {
            Role::Server { .. } => (config, host),
            Role::Client => {
                let (config, endpoint) = resolve_endpoint(config)?;
                client_config = config;
                let any = if endpoint.is_ipv4() { "0.0.0.0" } else { "::" };
                (&client_config, any)
            }
        };
        let peers = Peers::new(config)?;
        let infos = (0..config.peers.len())
            .filter_map(|id| peers.info(id).cloned())
            .collect();
        let socket = bind(host, config.listen_port)?;
        let local_addr = socket.local_addr()?;

        console::init();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = {
            let _context = runtime.enter();
            tokio::net::UdpSocket::from_std(socket)?
        };
        let (trigger, signal) = shutdown::channel();
        let (wg_to_net, net_from_wg) = mpsc::channel(PACKET_QUEUE);
        // Unbounded channels, each with its bound (`budget`): datagrams beyond it are dropped, never TCP.
        let (net_to_wg, wg_from_net) = mpsc::unbounded_channel();
        let tunnel = Arc::new(TunnelQueue::new(TUNNEL_QUEUE_PACKETS, TUNNEL_QUEUE_BYTES));
        let (py_to_net, net_from_py) = mpsc::unbounded_channel();
        let py_to_net_budget = Arc::new(ByteBudget::new(PYTHON_QUEUE_BYTES));
        let (py_to_wg, wg_from_py) = mpsc::unbounded_channel();
        let mut closed = events.try_clone()?;

        let channels = Channels {
            to_network: wg_to_net,
            from_network: wg_from_net,
            tunnel: tunnel.clone(),
            from_python: wg_from_py,
        };
        let wireguard = WireGuardTask::new(socket, config.clone(), peers, channels, signal.clone());
        // A client's packets fit the MTU of its configuration; a server's MTU setting is what its clients are
        // told, and TCP's MSS adapts to what each client announces.
        let mtu = match role {
            Role::Client => config.mtu.map_or(crate::network::MTU, usize::from),
            Role::Server { .. } => crate::network::MTU,
        };
        let mut stack = Stack::with_mtu(infos, std::time::Instant::now(), mtu);
        match role {
            Role::Server { ask_first } => stack.set_ask_first(ask_first),
            Role::Client => stack.set_accepts(false),
        }
        if let Some(max) = max_map_count() {
            let limit = stack.fit_mappings(max, RESERVED_MAPPINGS);
            log::debug!("at most {limit} TCP connections: vm.max_map_count is {max}");
        }
        let network = NetworkTask::new(
            stack,
            net_from_wg,
            (net_to_wg, tunnel),
            (net_from_py, py_to_net_budget.clone()),
            events,
            signal,
        );
        let supervisor = trigger.clone();
        let thread = std::thread::Builder::new()
            .name("wireguard-engine".into())
            .spawn(move || {
                let failure = runtime.block_on(async {
                    let tasks = vec![
                        ("network", console::spawn("network", network.run())),
                        ("wireguard", console::spawn("wireguard", wireguard.run())),
                    ];
                    supervisor::join_all(tasks, &supervisor).await
                });
                drop(runtime);
                closed.send(NetworkToPython::ServerClosed {
                    error: failure.map(|f| f.to_string()),
                });
                closed.wake();
            })?;
        Ok(Server {
            local_addr,
            to_network: py_to_net,
            to_network_budget: py_to_net_budget,
            to_wireguard: py_to_wg,
            trigger,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues a message for the network task. A datagram for which the queue has no room is dropped (and
    /// counted): Python sends faster than the tunnel takes them.
    pub fn send(&self, msg: PythonToNetwork) -> Result<()> {
        let bytes = msg.queued_bytes();
        if matches!(msg, PythonToNetwork::SendDatagram { .. }) {
            if !self.to_network_budget.try_take(bytes) {
                // A closed server says so, as for every other message.
                return match self.to_network.is_closed() {
                    true => Err(Error::Closed),
                    false => Ok(()),
                };
            }
        } else {
            self.to_network_budget.take(bytes);
        }
        self.to_network.send(msg).map_err(|_| {
            self.to_network_budget.give_back(bytes);
            Error::Closed
        })
    }

    /// A request about peers; its reply comes as `NetworkToPython::Reply`.
    pub fn request(&self, msg: PythonToWireGuard) -> Result<()> {
        self.to_wireguard.send(msg).map_err(|_| Error::Closed)
    }

    /// Asks every task to stop; `ServerClosed` follows once they have.
    pub fn close(&self) {
        self.trigger.trigger();
    }

    /// Waits for the engine thread. Returns at once if it already ended.
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close();
        self.join();
    }
}

/// How many mappings a process may have (`vm.max_map_count`), if the system says.
fn max_map_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A client's configuration with its one peer's Endpoint resolved to an address, and that address. Errors name
/// the endpoint.
fn resolve_endpoint(config: &Configuration) -> Result<(Configuration, SocketAddr)> {
    let [peer] = config.peers.as_slice() else {
        return Err(Error::config(
            "peers",
            format!("a client has one peer, the server: {} given", config.peers.len()),
        ));
    };
    let Some(endpoint) = peer.endpoint.as_deref() else {
        return Err(Error::config(
            "endpoint",
            "the server's address (host:port) is missing",
        ));
    };
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| Error::config("endpoint", format!("{endpoint:?} is not host:port")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| Error::config("endpoint", format!("{endpoint:?} is not host:port")))?;
    let host = host.trim_matches(['[', ']']);
    let addr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::config("endpoint", format!("{host:?} does not resolve: {e}")))?
            .next()
            .ok_or_else(|| Error::config("endpoint", format!("{host:?} has no address")))?,
    };
    let mut config = config.clone();
    config.peers[0].endpoint = Some(addr.to_string());
    Ok((config, addr))
}

/// Binds the UDP socket. An empty host listens on every address of both families, as asyncio does.
fn bind(host: &str, port: u16) -> Result<std::net::UdpSocket> {
    let addr = if host.is_empty() {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
    } else if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        SocketAddr::new(ip, port)
    } else {
        (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::config("host", format!("{host:?} does not resolve: {e}")))?
            .next()
            .ok_or_else(|| Error::config("host", format!("{host:?} has no address")))?
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if host.is_empty() {
        socket.set_only_v6(false)?;
    }
    size_buffers(&socket);
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|source| Error::Bind { addr, source })?;
    Ok(socket.into())
}

/// Gives the socket `SOCKET_BUFFER` each way: past the kernel's cap where the process may (CAP_NET_ADMIN), else
/// as much as the cap allows, and says so at debug level when that is less.
fn size_buffers(socket: &Socket) {
    if !force_buffer(socket, BufferOption::Receive) {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if !force_buffer(socket, BufferOption::Send) {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got < 2 * SOCKET_BUFFER {
        log::debug!(
            "the UDP socket's receive buffer is {} KiB of the {} KiB asked for: net.core.rmem_max caps it (a \
             larger one, or CAP_NET_ADMIN, keeps bursts and floods from dropping every peer's datagrams)",
            got >> 10,
            (2 * SOCKET_BUFFER) >> 10
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum BufferOption {
    Receive,
    Send,
}

/// Sets a buffer past `net.core.rmem_max`/`wmem_max`, which needs CAP_NET_ADMIN; false where it cannot.
#[cfg(target_os = "linux")]
fn force_buffer(socket: &Socket, option: BufferOption) -> bool {
    use std::os::fd::AsRawFd;
    let name = match option {
        BufferOption::Receive => libc::SO_RCVBUFFORCE,
        BufferOption::Send => libc::SO_SNDBUFFORCE,
    };
    let size = libc::c_int::try_from(SOCKET_BUFFER).unwrap_or(libc::c_int::MAX);
    // SAFETY: an open descriptor, and an int option given an int of its length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn force_buffer(_socket: &Socket, _option: BufferOption) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctl(name: &str) -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// With CAP_NET_ADMIN (tests run as root in CI) the buffers pass the kernel's cap for everyone else, which
    /// is often far below them (4 MiB on the machines CI runs on); without it, they get what the cap allows.
    #[cfg(target_os = "linux")]
    #[test]
    fn socket_buffers_pass_the_kernels_cap_where_the_process_may() {
        let socket = Socket::from(bind("127.0.0.1", 0).unwrap());
        let (receive, send) = (
            socket.recv_buffer_size().unwrap(),
            socket.send_buffer_size().unwrap(),
        );
        // The kernel reports twice what was asked: its bookkeeping.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!((receive, send), (2 * SOCKET_BUFFER, 2 * SOCKET_BUFFER));
        } else {
            let cap = |name| 2 * SOCKET_BUFFER.min(sysctl(name));
            assert_eq!((receive, send), (cap("rmem_max"), cap("wmem_max")));
        }
    }
}
