//! Kernel uevents for PCI functions: a hot-added function (`add`) and a removed one
//! (`remove`), read from the kernel's `NETLINK_KOBJECT_UEVENT` multicast group or, on a
//! simulated host, from a datagram socket the simulator writes the same bytes to.
//!
//! A kernel uevent is one datagram: a header `ACTION@DEVPATH`, then `KEY=VALUE` fields, every
//! part ended by a NUL byte (lib/kobject_uevent.c). The parser takes at most
//! [`MAX_UEVENT_LEN`] bytes and refuses anything that is not in that shape; it never panics.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use nix::sys::socket::{
    bind, recvfrom, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

use super::pci::PciBdf;

/// Longest uevent accepted. The kernel builds one in a 2048-byte environment buffer
/// (`UEVENT_BUFFER_SIZE`) plus the header, so a longer datagram is not from the kernel.
pub const MAX_UEVENT_LEN: usize = 8192;
/// The kernel's multicast group on `NETLINK_KOBJECT_UEVENT` (udev re-broadcasts on group 2,
/// which is not joined).
const KERNEL_GROUP: u32 = 1;
/// Receive buffer asked for, so a burst (a PF and its VFs going away) is not dropped.
const RECEIVE_BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UeventError {
    #[error("cannot open the kernel's uevent socket (NETLINK_KOBJECT_UEVENT)")]
    Open(#[source] nix::Error),
    #[error("cannot receive a uevent")]
    Receive(#[source] nix::Error),
    #[error("uevent longer than {MAX_UEVENT_LEN} bytes")]
    TooLong,
    #[error("malformed uevent: {0}")]
    Malformed(&'static str),
    #[error("uevent names an invalid PCI address")]
    Address(#[source] super::pci::PciError),
}

/// What happened to a PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciAction {
    Add,
    Remove,
}

/// A uevent about a PCI function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciUevent {
    pub action: PciAction,
    pub bdf: PciBdf,
    /// The kernel's sequence number, for logs.
    pub seqnum: Option<u64>,
}

/// Parses one uevent datagram. `Ok(None)` for a well-formed event that is not the add or
/// remove of a PCI function (another subsystem, `bind`, `change`, ...).
pub fn parse(message: &[u8]) -> Result<Option<PciUevent>, UeventError> {
    if message.len() > MAX_UEVENT_LEN {
        return Err(UeventError::TooLong);
    }
    let body = message
        .strip_suffix(b"\0")
        .ok_or(UeventError::Malformed("not NUL-terminated"))?;
    let mut parts = body.split(|&b| b == 0);
    let header = parts
        .next()
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or(UeventError::Malformed("header is not text"))?;
    let (head_action, head_devpath) = header
        .split_once('@')
        .ok_or(UeventError::Malformed("no ACTION@DEVPATH header"))?;
    let (mut action, mut devpath, mut subsystem, mut slot, mut seqnum) =
        (None, None, None, None, None);
    for part in parts {
        let field =
            std::str::from_utf8(part).map_err(|_| UeventError::Malformed("field is not text"))?;
        let (key, value) = field
            .split_once('=')
            .ok_or(UeventError::Malformed("field without '='"))?;
        let slot_of_key = match key {
            "ACTION" => &mut action,
            "DEVPATH" => &mut devpath,
            "SUBSYSTEM" => &mut subsystem,
            "PCI_SLOT_NAME" => &mut slot,
            "SEQNUM" => &mut seqnum,
            _ => continue,
        };
        if slot_of_key.replace(value).is_some() {
            return Err(UeventError::Malformed("a field appears twice"));
        }
    }
    let action = action.ok_or(UeventError::Malformed("no ACTION field"))?;
    let devpath = devpath.ok_or(UeventError::Malformed("no DEVPATH field"))?;
    if action != head_action || devpath != head_devpath {
        return Err(UeventError::Malformed("header and fields disagree"));
    }
    let seqnum = match seqnum {
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| UeventError::Malformed("SEQNUM is not a number"))?,
        ),
        None => None,
    };
    let action = match action {
        "add" => PciAction::Add,
        "remove" => PciAction::Remove,
        _ => return Ok(None),
    };
    if subsystem != Some("pci") {
        return Ok(None);
    }
    // A PCI function's uevent names it in PCI_SLOT_NAME; its DEVPATH ends in the same address.
    let name = devpath.rsplit('/').next().unwrap_or_default();
    let bdf = PciBdf::parse(slot.unwrap_or(name)).map_err(UeventError::Address)?;
    if bdf.as_str() != name {
        return Err(UeventError::Malformed("PCI_SLOT_NAME and DEVPATH disagree"));
    }
    Ok(Some(PciUevent {
        action,
        bdf,
        seqnum,
    }))
}

/// One datagram received.
#[derive(Debug)]
pub enum Received {
    /// A PCI function was added or removed.
    Pci(PciUevent),
    /// Something else (another subsystem or action, a sender that is not the kernel).
    Ignored,
    /// The socket's queue overflowed: uevents were lost, so whoever follows them must look at
    /// the devices again.
    Lost,
    /// The simulator's end of the socket is gone: nothing more will arrive.
    Closed,
}

/// Where uevents come from.
#[derive(Debug)]
enum Source {
    /// The kernel's multicast group: only datagrams from port 0 (the kernel) count.
    Kernel,
    /// A simulated host's emulator, the other end of a datagram socket pair.
    Simulated,
}

/// A socket that uevents arrive on. Opened before the daemon confines itself: receiving needs
/// only `recvfrom`.
#[derive(Debug)]
pub struct UeventSocket {
    fd: OwnedFd,
    source: Source,
}

impl UeventSocket {
    /// Joins the kernel's uevent multicast group. Call it before seccomp confinement: it
    /// needs `socket(AF_NETLINK)` and `bind`, which the confined daemon may not call.
    pub fn kernel() -> Result<UeventSocket, UeventError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .map_err(UeventError::Open)?;
        // Best effort: the default buffer holds a few dozen events; a large one survives a PF
        // with many VFs going at once. Without it, an overflow is still noticed (ENOBUFS).
        let _ = setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER);
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP)).map_err(UeventError::Open)?;
        Ok(UeventSocket {
            fd,
            source: Source::Kernel,
        })
    }

    /// The receiving end of a simulated host's uevents (see `accelgate_sim::Emulator`).
    pub fn simulated(socket: UnixDatagram) -> UeventSocket {
        UeventSocket {
            fd: OwnedFd::from(socket),
            source: Source::Simulated,
        }
    }

    /// Waits for the next datagram and parses it. A malformed one is an error; the socket
    /// stays usable.
    pub fn receive(&self) -> Result<Received, UeventError> {
        let mut buf = vec![0u8; MAX_UEVENT_LEN + 1];
        let raw = self.fd.as_fd().as_raw_fd();
        let (len, from_kernel) = match self.source {
            Source::Kernel => match recvfrom::<NetlinkAddr>(raw, &mut buf) {
                Ok((len, sender)) => (len, sender.is_some_and(|a| a.pid() == 0)),
                Err(nix::Error::ENOBUFS) => return Ok(Received::Lost),
                Err(e) => return Err(UeventError::Receive(e)),
            },
            Source::Simulated => {
                match nix::sys::socket::recv(raw, &mut buf, nix::sys::socket::MsgFlags::empty()) {
                    // The kernel sends no empty uevent; the simulator's end closing reads so.
                    Ok(0) => return Ok(Received::Closed),
                    Ok(len) => (len, true),
                    Err(e) => return Err(UeventError::Receive(e)),
                }
            }
        };
        if !from_kernel {
            return Ok(Received::Ignored);
        }
        if len > MAX_UEVENT_LEN {
            return Err(UeventError::TooLong);
        }
        Ok(match parse(&buf[..len])? {
            Some(event) => Received::Pci(event),
            None => Received::Ignored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(p.as_bytes());
            out.push(0);
        }
        out
    }

    const DEVPATH: &str = "/devices/pci0000:00/0000:00:09.0/0000:04:00.0";

    fn kernel_add() -> Vec<u8> {
        message(&[
            &format!("add@{DEVPATH}"),
            "ACTION=add",
            &format!("DEVPATH={DEVPATH}"),
            "SUBSYSTEM=pci",
            "PCI_CLASS=FF0000",
            "PCI_ID=1234:11E8",
            "PCI_SUBSYS_ID=1AF4:1100",
            "PCI_SLOT_NAME=0000:04:00.0",
            "MODALIAS=pci:v00001234d000011E8sv00001AF4sd00001100bcFFsc00i00",
            "SEQNUM=2207",
        ])
    }

    #[test]
    fn a_kernel_add_event_names_the_function() {
        let event = parse(&kernel_add()).unwrap().unwrap();
        assert_eq!(event.action, PciAction::Add);
        assert_eq!(event.bdf.as_str(), "0000:04:00.0");
        assert_eq!(event.seqnum, Some(2207));
    }

    #[test]
    fn remove_without_slot_name_uses_the_devpath() {
        let m = message(&[
            &format!("remove@{DEVPATH}"),
            "ACTION=remove",
            &format!("DEVPATH={DEVPATH}"),
            "SUBSYSTEM=pci",
            "SEQNUM=7",
        ]);
        let event = parse(&m).unwrap().unwrap();
        assert_eq!(event.action, PciAction::Remove);
        assert_eq!(event.bdf.as_str(), "0000:04:00.0");
    }

    #[test]
    fn other_subsystems_and_actions_are_ignored() {
        let block = message(&[
            "add@/devices/virtual/block/loop0",
            "ACTION=add",
            "DEVPATH=/devices/virtual/block/loop0",
            "SUBSYSTEM=block",
        ]);
        assert_eq!(parse(&block).unwrap(), None);
        let bind = message(&[
            &format!("bind@{DEVPATH}"),
            "ACTION=bind",
            &format!("DEVPATH={DEVPATH}"),
            "SUBSYSTEM=pci",
            "DRIVER=pci-pf-stub",
            "PCI_SLOT_NAME=0000:04:00.0",
        ]);
        assert_eq!(parse(&bind).unwrap(), None);
    }

    #[test]
    fn malformed_messages_are_refused() {
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"add@/devices/x".to_vec(), // no NUL
            message(&["no header"]),
            message(&[&format!("add@{DEVPATH}"), "ACTION=add", "SUBSYSTEM=pci"]),
            message(&[
                &format!("add@{DEVPATH}"),
                "ACTION=remove",
                &format!("DEVPATH={DEVPATH}"),
                "SUBSYSTEM=pci",
            ]),
            message(&[
                &format!("add@{DEVPATH}"),
                "ACTION=add",
                &format!("DEVPATH={DEVPATH}"),
                "SUBSYSTEM=pci",
                "PCI_SLOT_NAME=0000:05:00.0",
            ]),
            message(&[
                &format!("add@{DEVPATH}"),
                "ACTION=add",
                "ACTION=add",
                &format!("DEVPATH={DEVPATH}"),
            ]),
            message(&[
                "add@/devices/pci0000:00/../../etc",
                "ACTION=add",
                "DEVPATH=/devices/pci0000:00/../../etc",
                "SUBSYSTEM=pci",
            ]),
            message(&[
                &format!("add@{DEVPATH}"),
                "ACTION=add",
                &format!("DEVPATH={DEVPATH}"),
                "SEQNUM=many",
            ]),
            message(&[&format!("add@{DEVPATH}"), "junk"]),
            [b"add@/x\0ACTION=\xff\0".as_slice()].concat(),
            vec![b'a'; MAX_UEVENT_LEN + 1],
        ];
        for case in cases {
            assert!(
                parse(&case).is_err(),
                "{:?}",
                String::from_utf8_lossy(&case)
            );
        }
    }

    #[test]
    fn every_prefix_and_corruption_of_a_real_message_is_handled_without_panic() {
        let good = kernel_add();
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        // Deterministic byte flips over the whole message.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5000 {
            let mut m = good.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % m.len() as u64) as usize;
                m[at] = (state >> 32) as u8;
            }
            let _ = parse(&m);
        }
    }

    #[test]
    fn the_kernel_socket_opens() {
        // Joining the kernel's group is allowed to any user (the kernel sets
        // NL_CFG_F_NONROOT_RECV for uevents); nothing is received here.
        UeventSocket::kernel().expect("NETLINK_KOBJECT_UEVENT socket");
    }

    #[test]
    fn a_simulated_socket_reads_what_the_other_end_sends() {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let socket = UeventSocket::simulated(ours);
        theirs.send(&kernel_add()).unwrap();
        match socket.receive().unwrap() {
            Received::Pci(e) => assert_eq!(e.bdf.as_str(), "0000:04:00.0"),
            other => panic!("{other:?}"),
        }
        theirs.send(b"garbage").unwrap();
        assert!(matches!(socket.receive(), Err(UeventError::Malformed(_))));
        theirs.send(&vec![b'x'; MAX_UEVENT_LEN + 100]).unwrap();
        assert!(matches!(socket.receive(), Err(UeventError::TooLong)));
    }
}
