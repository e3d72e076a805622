//! The D-Bus calls the benchmark times, made raw on one connection (no proxy, no property
//! cache), so the daemon's call and the floor it is compared with cost the client the same.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use accelgate_client::proto::names::{
    slice_path, BUS_NAME, DEVICE_INTERFACE, ROOT_PATH, SLICE_INTERFACE,
};
use zbus::{Connection, Variant};

use super::Fallible;
use accelgate_testkit::polkit::POLKIT_NAME;

/// `org.freedesktop.DBus.Peer.Ping` to the daemon: the bus round trip with no work behind it.
pub async fn ping(conn: &Connection) -> Fallible<Duration> {
    let t = Instant::now();
    conn.call_method(
        Some(BUS_NAME),
        ROOT_PATH,
        Some("org.freedesktop.DBus.Peer"),
        "Ping",
        &(),
    )
    .await
    .map_err(|e| format!("Ping: {e}"))?;
    Ok(t.elapsed())
}

/// `Slice.Read`; returns the values and the round trip.
pub async fn read(
    conn: &Connection,
    path: &str,
    offset: u64,
    count: u32,
    width: u8,
) -> Fallible<(Vec<u64>, Duration)> {
    let t = Instant::now();
    let reply = conn
        .call_method(
            Some(BUS_NAME),
            path,
            Some(SLICE_INTERFACE),
            "Read",
            &(offset, count, width),
        )
        .await
        .map_err(|e| format!("Read {path}: {e}"))?;
    let values: Vec<u64> = reply
        .body()
        .deserialize()
        .map_err(|e| format!("Read reply: {e}"))?;
    Ok((values, t.elapsed()))
}

/// One register Read that must return `expect`.
pub async fn read_checked(conn: &Connection, path: &str, expect: u64) -> Fallible<Duration> {
    let (values, took) = read(conn, path, 0, 1, 4).await?;
    if values != [expect] {
        return Err(format!("Read {path} returned {values:x?}, not {expect:#x}"));
    }
    Ok(took)
}

pub async fn set_vf_count(conn: &Connection, device: &str, count: u32) -> Fallible<()> {
    let options: HashMap<&str, Variant<'_>> = HashMap::new();
    conn.call_method(
        Some(BUS_NAME),
        accelgate_client::proto::names::device_path(device).as_str(),
        Some(DEVICE_INTERFACE),
        "SetVfCount",
        &(count, options),
    )
    .await
    .map_err(|e| format!("SetVfCount {device} {count}: {e}"))?;
    Ok(())
}

/// `Slice.Map` of a VF slice: the fd of its BAR.
pub async fn map(conn: &Connection, device: &str, slice: &str) -> Fallible<std::os::fd::OwnedFd> {
    let options: HashMap<&str, Variant<'_>> = HashMap::new();
    let reply = conn
        .call_method(
            Some(BUS_NAME),
            slice_path(device, slice).as_str(),
            Some(SLICE_INTERFACE),
            "Map",
            &(options,),
        )
        .await
        .map_err(|e| format!("Map {device}/{slice}: {e}"))?;
    let fd: zbus::OwnedFd = reply
        .body()
        .deserialize()
        .map_err(|e| format!("Map reply: {e}"))?;
    Ok(fd.into())
}

/// One raw polkit `CheckAuthorization` of `org.accelgate.slice.read` for this connection (a
/// `system-bus-name` subject, the details the daemon sends), as the daemon's gate makes it on
/// a cache miss. Returns whether polkit authorized, and the round trip.
pub async fn check_authorization(conn: &Connection) -> Fallible<(bool, Duration)> {
    let me = conn
        .unique_name()
        .ok_or("connection has no unique name")?
        .to_string();
    let mut subject_details: HashMap<&str, Variant<'_>> = HashMap::new();
    subject_details.insert("name", Variant::from(me.as_str()));
    let subject = ("system-bus-name", subject_details);
    let details: HashMap<&str, &str> = [
        ("device", "fpga0"),
        ("slice", "region0"),
        ("operation", "slice.read"),
    ]
    .into_iter()
    .collect();
    let t = Instant::now();
    let reply = conn
        .call_method(
            Some(POLKIT_NAME),
            "/org/freedesktop/PolicyKit1/Authority",
            Some("org.freedesktop.PolicyKit1.Authority"),
            "CheckAuthorization",
            &(subject, "org.accelgate.slice.read", details, 0u32, ""),
        )
        .await
        .map_err(|e| format!("CheckAuthorization: {e}"))?;
    let took = t.elapsed();
    let (authorized, _challenge, _details): (bool, bool, HashMap<String, String>) = reply
        .body()
        .deserialize()
        .map_err(|e| format!("CheckAuthorization reply: {e}"))?;
    Ok((authorized, took))
}

/// `ObjectManager.GetManagedObjects` on the root; returns the number of objects.
pub async fn managed_objects(conn: &Connection) -> Fallible<(usize, Duration)> {
    let t = Instant::now();
    let reply = conn
        .call_method(
            Some(BUS_NAME),
            ROOT_PATH,
            Some("org.freedesktop.DBus.ObjectManager"),
            "GetManagedObjects",
            &(),
        )
        .await
        .map_err(|e| format!("GetManagedObjects: {e}"))?;
    let took = t.elapsed();
    let objects: HashMap<
        zbus::OwnedObjectPath,
        HashMap<String, HashMap<String, zbus::OwnedVariant>>,
    > = reply
        .body()
        .deserialize()
        .map_err(|e| format!("GetManagedObjects reply: {e}"))?;
    Ok((objects.len(), took))
}
