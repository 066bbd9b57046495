//! Packet capture: the decrypted IP packets inside the tunnel, both ways, written to a pcapng file with one
//! interface per peer.
//!
//! Each packet is written behind a Linux "cooked" header (LINKTYPE_LINUX_SLL), which says which way it went and
//! whether it is IPv4 or IPv6 (`tcpdump -e` prints `In` and `Out`). Raw IP (LINKTYPE_RAW) would need no header, but
//! libpcap, and so tcpdump, refuses a pcapng file with more than one raw IP interface: it compares the second
//! interface's link type (101) with the first one's after translating that to its DLT_RAW (12).
//!
//! The network task holds a `Tap` and hands it copies of packets; a writer thread of its own owns the file. Between
//! them is a bounded queue: when the writer falls behind, the tap drops packets from the capture and counts them,
//! so that the disk never stalls the tunnel. `start` opens the file on the caller's thread (errors name the path;
//! `open_private` says which files it writes into, replaces or refuses); `Capture::finish`, once the tap is
//! gone, waits for the writer to write out the queue and close the file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, PcapError};

use crate::error::{Error, Result};
use crate::ids::PeerId;

/// Packets that may wait for the writer; beyond this they are dropped from the capture. At the tunnel's MTU,
/// a few MiB: the writer's share of a burst.
pub const QUEUE: usize = 4096;

/// pcap-file 2 writes packet timestamps in nanoseconds whatever the interface says: every interface says so.
const NANOSECONDS: u8 = 9;

/// `epb_flags` direction bits (pcapng, section 4.3.1), as seen from the server.
const INBOUND: u32 = 1;
const OUTBOUND: u32 = 2;

/// The cooked header (LINKTYPE_LINUX_SLL): packet type, ARPHRD type, address length, address (8 bytes) and
/// protocol, big-endian.
const SLL_HEADER: usize = 16;
/// Packet types: sent to this host, sent by it.
const SLL_HOST: u16 = 0;
const SLL_OUTGOING: u16 = 4;
/// A device without link-layer addresses, as Linux reports WireGuard's own interfaces.
const ARPHRD_NONE: u16 = 0xFFFE;

/// Which way a packet went through the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    FromPeer,
    ToPeer,
}

/// What the tap sends the writer.
#[derive(Debug)]
enum Entry {
    /// A peer's first packet follows: its interface, named by its public key.
    Peer { peer: PeerId, name: Arc<str> },
    Packet {
        peer: PeerId,
        direction: Direction,
        /// Since the Unix epoch.
        time: Duration,
        data: Vec<u8>,
    },
}

/// The network task's end of a capture: copies packets into the queue, never waits.
#[derive(Debug)]
pub struct Tap {
    queue: SyncSender<Entry>,
    /// Whether a peer's interface was sent, by peer index.
    announced: Vec<bool>,
    dropped: Arc<AtomicU64>,
    /// The wall clock at `started`: packet times are wall-clock times computed from the task's monotonic `now`.
    started: Instant,
    wall: Duration,
}

impl Tap {
    /// Queues a copy of `packet`. `name` gives a peer's public key, asked for at the peer's first packet.
    pub fn packet(
        &mut self,
        now: Instant,
        peer: PeerId,
        direction: Direction,
        packet: &[u8],
        name: impl FnOnce(PeerId) -> Option<Arc<str>>,
    ) {
        if !self.announced.get(peer).copied().unwrap_or(false) {
            let name = name(peer).unwrap_or_else(|| format!("peer {peer}").into());
            if !self.send(Entry::Peer { peer, name }) {
                return;
            }
            if self.announced.len() <= peer {
                self.announced.resize(peer + 1, false);
            }
            self.announced[peer] = true;
        }
        let time = self.wall + now.saturating_duration_since(self.started);
        let mut data = Vec::with_capacity(SLL_HEADER + packet.len());
        data.extend_from_slice(&sll_header(direction, packet));
        data.extend_from_slice(packet);
        self.send(Entry::Packet {
            peer,
            direction,
            time,
            data,
        });
    }

    /// False, and the packet counted as dropped, if the writer is behind (or gone, after a write error).
    fn send(&mut self, entry: Entry) -> bool {
        match self.queue.try_send(entry) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

fn sll_header(direction: Direction, packet: &[u8]) -> [u8; SLL_HEADER] {
    let packet_type = match direction {
        Direction::FromPeer => SLL_HOST,
        Direction::ToPeer => SLL_OUTGOING,
    };
    let protocol: u16 = match packet.first().map(|b| b >> 4) {
        Some(4) => 0x0800,
        Some(6) => 0x86DD,
        _ => 0,
    };
    let mut header = [0u8; SLL_HEADER];
    header[0..2].copy_from_slice(&packet_type.to_be_bytes());
    header[2..4].copy_from_slice(&ARPHRD_NONE.to_be_bytes());
    header[14..16].copy_from_slice(&protocol.to_be_bytes());
    header
}

/// How a capture went.
#[derive(Debug)]
pub struct Summary {
    pub packets: u64,
    /// Packets left out because the writer was behind.
    pub dropped: u64,
    /// The write error that ended the capture early, if one did.
    pub error: Option<io::Error>,
}

/// The starter's end of a capture: waits for the writer at the end.
#[derive(Debug)]
pub struct Capture {
    path: PathBuf,
    writer: JoinHandle<(u64, io::Result<()>)>,
    dropped: Arc<AtomicU64>,
}

impl Capture {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until the writer has written what was queued and closed the file. The tap must be gone (dropped by
    /// the network task) or this waits for ever.
    pub fn finish(self) -> Summary {
        let (packets, result) = self
            .writer
            .join()
            .unwrap_or_else(|_| (0, Err(io::Error::other("the capture writer panicked"))));
        Summary {
            packets,
            dropped: self.dropped.load(Ordering::Relaxed),
            error: result.err(),
        }
    }
}

/// Opens `path` as `open_private` does, writes the pcapng header and starts the writer. Errors carry the path.
pub fn start(path: &Path) -> Result<(Capture, Tap)> {
    let file = open_private(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })?;
    let writer =
        PcapNgWriter::with_section_header(BufWriter::new(file), section_header()).map_err(io_error)?;
    let (queue, entries) = mpsc::sync_channel(QUEUE);
    let writer = std::thread::Builder::new().name("packet-capture".into()).spawn({
        let path = path.to_owned();
        move || write_all(&path, writer, entries)
    })?;
    let dropped = Arc::new(AtomicU64::new(0));
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let tap = Tap {
        queue,
        announced: Vec::new(),
        dropped: dropped.clone(),
        started: Instant::now(),
        wall,
    };
    let capture = Capture {
        path: path.to_owned(),
        writer,
        dropped,
    };
    Ok((capture, tap))
}

/// The file a capture is written to, readable by this user only: the capture holds every peer's traffic in
/// clear.
///
/// - No file at `path`: a new one is made (mode 0600, `O_EXCL`, `O_NOFOLLOW`).
/// - A regular file of this user: replaced by a new one made next to it and renamed over it, so that its mode,
///   its hard links and the handles others hold on it see nothing of the capture.
/// - A FIFO or a device of this user (a pipe to Wireshark, `/dev/null`): written into as it is.
/// - A symbolic link, or anything of another user (made first in a shared folder such as /tmp): refused, as
///   `PermissionDenied`. A link is never followed; another user's file is neither written into nor replaced.
pub fn open_private(path: &Path) -> io::Result<File> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return create_new(path),
        other => other?,
    };
    if meta.file_type().is_symlink() {
        return Err(refused(
            "is a symbolic link; a capture is not written through a link: remove it or choose another path",
        ));
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(refused(&format!(
            "belongs to another user (uid {}); a capture is written only into a file of this user: remove it \
             or choose another path",
            meta.uid()
        )));
    }
    if meta.is_file() {
        return replace(path);
    }
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // What was opened is what was checked, not something put there since.
    let opened = file.metadata()?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err(refused("was replaced while it was opened"));
    }
    Ok(file)
}

fn refused(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, reason)
}

/// A new file at `path`, mode 0600, never through a link.
fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// A new file made next to `path` under a name of its own, then renamed over `path`.
fn replace(path: &Path) -> io::Result<File> {
    use rand_core::RngCore;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "names no file"))?;
    for _ in 0..8 {
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{:016x}.tmp", rand_core::OsRng.next_u64()));
        let temp = path.with_file_name(temp_name);
        let file = match create_new(&temp) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            other => other?,
        };
        if let Err(e) = std::fs::rename(&temp, path) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        return Ok(file);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free name for a new file next to it",
    ))
}

fn section_header() -> SectionHeaderBlock<'static> {
    SectionHeaderBlock {
        options: vec![SectionHeaderOption::UserApplication(
            concat!("mitmproxy_wireguard ", env!("CARGO_PKG_VERSION")).into(),
        )],
        ..Default::default()
    }
}

/// The writer thread: writes entries until the tap is gone, flushing whenever the queue runs empty so that the
/// file can be followed while it grows. Returns the packets written, and the error that stopped it, if any: that
/// is logged at once (a full disk), and the packets after it are dropped from the capture.
fn write_all(
    path: &Path,
    writer: PcapNgWriter<BufWriter<File>>,
    entries: Receiver<Entry>,
) -> (u64, io::Result<()>) {
    let mut writer = Writer::new(writer);
    let result = (|| {
        while let Ok(entry) = entries.recv() {
            writer.write(entry)?;
            while let Ok(entry) = entries.try_recv() {
                writer.write(entry)?;
            }
            writer.flush()?;
        }
        writer.flush()
    })();
    if let Err(e) = &result {
        log::error!(
            "packet capture to {} failed, packets from now on are left out: {e}",
            path.display()
        );
    }
    // Dropping the writer closes the file.
    (writer.packets, result)
}

/// Turns entries into pcapng blocks: an interface per peer, in the order peers first appear.
struct Writer<W: Write> {
    pcapng: PcapNgWriter<W>,
    interfaces: HashMap<PeerId, u32>,
    packets: u64,
}

impl<W: Write> Writer<W> {
    fn new(pcapng: PcapNgWriter<W>) -> Self {
        Writer {
            pcapng,
            interfaces: HashMap::new(),
            packets: 0,
        }
    }

    fn write(&mut self, entry: Entry) -> io::Result<()> {
        match entry {
            Entry::Peer { peer, name } => {
                self.interface(peer, &name)?;
            }
            Entry::Packet {
                peer,
                direction,
                time,
                data,
            } => {
                let interface_id = match self.interfaces.get(&peer) {
                    Some(&id) => id,
                    None => self.interface(peer, &format!("peer {peer}"))?,
                };
                let flags = match direction {
                    Direction::FromPeer => INBOUND,
                    Direction::ToPeer => OUTBOUND,
                };
                let block = EnhancedPacketBlock {
                    interface_id,
                    timestamp: time,
                    original_len: data.len() as u32,
                    data: data.into(),
                    options: vec![EnhancedPacketOption::Flags(flags)],
                };
                self.pcapng.write_pcapng_block(block).map_err(io_error)?;
                self.packets += 1;
            }
        }
        Ok(())
    }

    /// Describes a peer's interface; its number is the count of those before it.
    fn interface(&mut self, peer: PeerId, name: &str) -> io::Result<u32> {
        if let Some(&id) = self.interfaces.get(&peer) {
            return Ok(id);
        }
        let block = InterfaceDescriptionBlock {
            linktype: DataLink::LINUX_SLL,
            // No limit: every packet is written whole.
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(name.to_owned().into()),
                InterfaceDescriptionOption::IfDescription(format!("WireGuard peer {peer}").into()),
                InterfaceDescriptionOption::IfTsResol(NANOSECONDS),
            ],
        };
        self.pcapng.write_pcapng_block(block).map_err(io_error)?;
        let id = self.interfaces.len() as u32;
        self.interfaces.insert(peer, id);
        Ok(id)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pcapng.get_mut().flush()
    }
}

fn io_error(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests;
