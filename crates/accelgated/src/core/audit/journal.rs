//! Sending structured records to journald over its native protocol (a datagram of fields on
//! `/run/systemd/journal/socket`), so admins can query decisions by field, e.g.
//! `journalctl ACCELGATE_DECISION=deny ACCELGATE_OPERATION=device.flash`.
//!
//! The socket is connected once when the audit log opens (before the daemon confines itself),
//! so a record costs one `send`.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// Where journald listens for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A connection to journald.
pub struct Journal {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    pub fn connect(path: &Path) -> io::Result<Journal> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(path)?;
        Ok(Journal {
            sock,
            path: path.to_owned(),
        })
    }

    /// Sends one entry. Field names must be journald-valid (upper case, digits, `_`, not
    /// starting with `_`); they are this crate's constants.
    pub fn send<V: AsRef<str>>(&self, fields: &[(&str, V)]) -> io::Result<()> {
        let mut datagram = Vec::with_capacity(512);
        encode(fields, &mut datagram);
        match self.sock.send(&datagram) {
            Ok(_) => Ok(()),
            // journald restarted: its socket is a new one, connect again once.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotConnected
                ) =>
            {
                self.sock.connect(&self.path)?;
                self.sock.send(&datagram).map(|_| ())
            }
            Err(e) => Err(e),
        }
    }
}

/// Encodes fields in the native protocol: `KEY=value\n`, or, for a value holding a newline,
/// `KEY\n`, its length as 64-bit little endian, the value, `\n`.
pub fn encode<V: AsRef<str>>(fields: &[(&str, V)], out: &mut Vec<u8>) {
    for (key, value) in fields {
        let value = value.as_ref();
        out.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
}

/// Decodes a native-protocol datagram (for tests, and to check what `encode` wrote).
pub fn decode(mut data: &[u8]) -> Option<Vec<(String, String)>> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let line_end = data.iter().position(|&b| b == b'\n')?;
        let line = &data[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8(line[..eq].to_vec()).ok()?,
                String::from_utf8(line[eq + 1..].to_vec()).ok()?,
            ));
            data = &data[line_end + 1..];
        } else {
            let key = String::from_utf8(line.to_vec()).ok()?;
            let rest = &data[line_end + 1..];
            let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let value = rest.get(8..8 + len)?;
            if rest.get(8 + len) != Some(&b'\n') {
                return None;
            }
            fields.push((key, String::from_utf8(value.to_vec()).ok()?));
            data = &rest[8 + len + 1..];
        }
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_values_use_the_binary_form() {
        let fields = [("MESSAGE", "one\ntwo"), ("PRIORITY", "6"), ("EMPTY", "")];
        let mut out = Vec::new();
        encode(&fields, &mut out);
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&7u64.to_le_bytes());
        want.extend_from_slice(b"one\ntwo\nPRIORITY=6\nEMPTY=\n");
        assert_eq!(out, want);
        let back = decode(&out).unwrap();
        assert_eq!(
            back,
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_reader_on_the_socket_gets_the_fields() {
        let dir = std::env::temp_dir().join(format!("accelgate-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let journal = Journal::connect(&path).unwrap();
        journal
            .send(&[("MESSAGE", "hello"), ("ACCELGATE_UID", "7")])
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(
            decode(&buf[..n]).unwrap(),
            vec![
                ("MESSAGE".to_string(), "hello".to_string()),
                ("ACCELGATE_UID".to_string(), "7".to_string())
            ]
        );
        // journald restarting replaces its socket; the next send reconnects.
        drop(server);
        std::fs::remove_file(&path).unwrap();
        let server = UnixDatagram::bind(&path).unwrap();
        journal.send(&[("MESSAGE", "again")]).unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MESSAGE=again\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
