use std::fs::{self, Permissions};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use pcap_file::pcapng::{Block, PcapNgReader};

use super::*;

const KEYS: [&str; 2] = [
    "zhYWm8y5VbZSxdA7gB1p2NMFtmYI8rLSygBD5mZgqWQ=",
    "tCgwM4OY0uN2+PBp2m9SNMZd3fHCdWx0ysSgtEx1zVo=",
];

/// A path of this test's own in the temporary directory, removed at the end.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("capture-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_file(&path);
        TempPath(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn key(peer: PeerId) -> Option<Arc<str>> {
    KEYS.get(peer).map(|k| Arc::from(*k))
}

/// An IPv4 packet of `len` bytes whose last byte tells it apart.
fn packet(len: usize, tag: u8) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[len - 1] = tag;
    p
}

struct Contents {
    interfaces: Vec<InterfaceDescriptionBlock<'static>>,
    packets: Vec<EnhancedPacketBlock<'static>>,
}

fn read_back(path: &Path) -> Contents {
    let mut reader = PcapNgReader::new(fs::File::open(path).unwrap()).unwrap();
    let mut packets = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(p) = block.unwrap() {
            packets.push(p.into_owned());
        }
    }
    Contents {
        interfaces: reader.interfaces().to_vec(),
        packets,
    }
}

fn wall_now() -> Duration {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap()
}

#[test]
fn packets_both_ways_with_an_interface_per_peer() {
    let path = TempPath::new("peers.pcapng");
    let before = wall_now();
    let (capture, mut tap) = start(&path.0).unwrap();
    let t0 = Instant::now();
    tap.packet(t0, 0, Direction::FromPeer, &packet(60, 1), key);
    tap.packet(
        t0 + Duration::from_millis(5),
        1,
        Direction::FromPeer,
        &packet(40, 2),
        key,
    );
    tap.packet(
        t0 + Duration::from_millis(7),
        0,
        Direction::ToPeer,
        &packet(52, 3),
        key,
    );
    // A peer without a known key is named by its index.
    tap.packet(
        t0 + Duration::from_millis(9),
        7,
        Direction::ToPeer,
        &packet(28, 4),
        key,
    );
    drop(tap);
    let summary = capture.finish();
    assert!(summary.error.is_none(), "{:?}", summary.error);
    assert_eq!((summary.packets, summary.dropped), (4, 0));

    let read = read_back(&path.0);
    let names: Vec<_> = read
        .interfaces
        .iter()
        .map(|i| {
            assert_eq!((i.linktype, i.snaplen), (DataLink::LINUX_SLL, 0));
            assert!(i.options.contains(&InterfaceDescriptionOption::IfTsResol(9)));
            i.options
                .iter()
                .find_map(|o| match o {
                    InterfaceDescriptionOption::IfName(name) => Some(name.to_string()),
                    _ => None,
                })
                .unwrap()
        })
        .collect();
    assert_eq!(names, [KEYS[0], KEYS[1], "peer 7"]);

    let seen: Vec<_> = read
        .packets
        .iter()
        .map(|p| {
            let (header, ip) = p.data.split_at(SLL_HEADER);
            let kind = u16::from_be_bytes([header[0], header[1]]);
            assert_eq!(header[2..14], [0xFF, 0xFE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(header[14..], [0x08, 0x00], "IPv4");
            assert_eq!(p.original_len as usize, p.data.len());
            (
                p.interface_id,
                p.options.clone(),
                kind,
                ip.len(),
                ip[ip.len() - 1],
            )
        })
        .collect();
    let inbound = vec![EnhancedPacketOption::Flags(INBOUND)];
    let outbound = vec![EnhancedPacketOption::Flags(OUTBOUND)];
    assert_eq!(
        seen,
        [
            (0, inbound.clone(), SLL_HOST, 60, 1),
            (1, inbound, SLL_HOST, 40, 2),
            (0, outbound.clone(), SLL_OUTGOING, 52, 3),
            (2, outbound, SLL_OUTGOING, 28, 4)
        ]
    );
    // Wall-clock times, as far apart as the task's clock said.
    let first = read.packets[0].timestamp;
    assert!(
        first >= before && first <= wall_now(),
        "{first:?} not between {before:?} and now"
    );
    let offsets: Vec<_> = read.packets.iter().map(|p| p.timestamp - first).collect();
    let ms = Duration::from_millis;
    assert_eq!(offsets, [ms(0), ms(5), ms(7), ms(9)]);
}

#[test]
fn the_file_is_private_even_if_it_existed() {
    let path = TempPath::new("mode.pcapng");
    fs::write(
        &path.0,
        b"old contents, longer than a pcapng header of a few dozen bytes",
    )
    .unwrap();
    fs::set_permissions(&path.0, Permissions::from_mode(0o644)).unwrap();
    let (capture, tap) = start(&path.0).unwrap();
    drop(tap);
    assert_eq!(capture.finish().packets, 0);
    let meta = fs::metadata(&path.0).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Truncated: a valid capture with no packets.
    let read = read_back(&path.0);
    assert!(read.interfaces.is_empty() && read.packets.is_empty());
}

#[test]
fn an_unwritable_path_is_an_error_naming_it() {
    let path = std::env::temp_dir().join("no-such-directory-for-captures/out.pcapng");
    let err = start(&path).unwrap_err();
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    let Error::File { path: named, source } = err else {
        panic!("{err:?}");
    };
    assert_eq!((named, source.kind()), (path, io::ErrorKind::NotFound));
}

/// A writer that cannot keep up (a pipe nobody reads) costs packets from the capture, counted, and never
/// blocks the tap; what was queued is still written at the end.
#[test]
fn a_stalled_writer_drops_and_counts_without_blocking() {
    let path = TempPath::new("fifo");
    let c_path = std::ffi::CString::new(path.0.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // A reader end that reads nothing yet, so that opening for writing does not wait.
    let mut reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path.0)
        .unwrap();
    let (capture, mut tap) = start(&path.0).unwrap();
    let total = QUEUE as u64 + 2000;
    let t0 = Instant::now();
    for i in 0..total {
        tap.packet(t0, 0, Direction::FromPeer, &packet(1000, i as u8), key);
    }
    let elapsed = t0.elapsed();
    drop(tap);
    // Now drain the pipe so that the writer can finish.
    let drain = std::thread::spawn(move || {
        let mut bytes = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return bytes,
                Ok(n) => bytes += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    let summary = capture.finish();
    let bytes = drain.join().unwrap();
    assert!(summary.error.is_none(), "{:?}", summary.error);
    assert!(summary.dropped >= 1000, "{summary:?}");
    assert_eq!(summary.packets + summary.dropped, total, "{summary:?}");
    assert!(
        bytes as u64 > summary.packets * 1000,
        "{bytes} bytes for {summary:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "the tap waited: {elapsed:?}");
}

#[test]
fn the_cooked_header_tells_ipv6_from_ipv4() {
    let mut v6 = packet(48, 0);
    v6[0] = 0x60;
    assert_eq!(sll_header(Direction::ToPeer, &v6)[14..], [0x86, 0xDD]);
    assert_eq!(sll_header(Direction::ToPeer, &v6)[..2], [0, 4]);
    assert_eq!(sll_header(Direction::FromPeer, &packet(20, 0))[..2], [0, 0]);
    // Not IP at all: no protocol, still captured as it was.
    assert_eq!(sll_header(Direction::FromPeer, &[0x10, 0])[14..], [0, 0]);
}

/// A write error (here: a full disk) ends the writer, and from then on the tap counts every packet as dropped.
#[test]
fn a_write_error_ends_the_capture_and_later_packets_are_counted() {
    let (capture, mut tap) = start(Path::new("/dev/full")).unwrap();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(10);
    let mut sent = 0u64;
    while tap.dropped.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the writer never gave up");
        tap.packet(t0, 0, Direction::FromPeer, &packet(100, 0), key);
        sent += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(tap);
    let summary = capture.finish();
    let error = summary.error.as_ref().expect("the error that ended the capture");
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
    assert!(
        summary.dropped >= 1 && summary.packets < sent,
        "{summary:?} of {sent}"
    );
}
