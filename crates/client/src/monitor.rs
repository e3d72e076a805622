//! Following the daemon live: every change it announces, as typed [`MonitorEvent`]s.
//!
//! The daemon announces each change as D-Bus signals under its root path: objects appearing
//! and disappearing (ObjectManager `InterfacesAdded`/`InterfacesRemoved`), properties
//! changing (`PropertiesChanged`: assignments, images, VF counts, firmware state, job
//! progress) and jobs ending (`Completed`). The bus itself says when the daemon leaves or
//! comes back (`NameOwnerChanged`). [`Monitor`] subscribes to all of them on one connection
//! and hands them out in the order the bus delivered them per source.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;
use zbus::message::Type as MessageType;
use zbus::{Connection, MatchRule, Message, MessageStream, OwnedObjectPath, OwnedVariant, Variant};

use super::error::ClientError;
use super::job::next;
use accelgate_proto::names;

/// What kind of object an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Manager,
    Device,
    Slice,
    Job,
    /// A path under the daemon's root that this client does not know.
    Other,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Manager => "manager",
            ObjectKind::Device => "device",
            ObjectKind::Slice => "slice",
            ObjectKind::Job => "job",
            ObjectKind::Other => "object",
        }
    }
}

/// One object of the daemon, named as accelctl names it: `fpga0`, `fpga0/region0`, job `3`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    /// The device id, `device/slice`, the job number, or the path for other objects.
    pub name: String,
    pub path: String,
}

impl ObjectRef {
    /// Names the object at `path`.
    pub fn from_path(path: &str) -> ObjectRef {
        let (kind, name) = if path == names::ROOT_PATH {
            (ObjectKind::Manager, String::new())
        } else if let Some((device, slice)) = names::parse_slice_path(path) {
            (ObjectKind::Slice, format!("{device}/{slice}"))
        } else if let Some(device) = names::parse_device_path(path) {
            (ObjectKind::Device, device.to_owned())
        } else if let Some(job) = path
            .strip_prefix(names::JOBS_PATH)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            (ObjectKind::Job, job.to_owned())
        } else {
            (ObjectKind::Other, path.to_owned())
        };
        ObjectRef {
            kind,
            name,
            path: path.to_owned(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ObjectKind::Manager => f.write_str("manager"),
            kind => write!(f, "{} {}", kind.as_str(), self.name),
        }
    }
}

/// A property's value, in the shapes the daemon's properties take (numbers, strings, paths,
/// lists, structures as lists).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PropertyValue {
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
    List(Vec<PropertyValue>),
}

impl PropertyValue {
    fn from_variant(v: &Variant<'_>) -> PropertyValue {
        match v {
            Variant::U8(n) => PropertyValue::Unsigned(u64::from(*n)),
            Variant::U16(n) => PropertyValue::Unsigned(u64::from(*n)),
            Variant::U32(n) => PropertyValue::Unsigned(u64::from(*n)),
            Variant::U64(n) => PropertyValue::Unsigned(*n),
            Variant::I16(n) => PropertyValue::Signed(i64::from(*n)),
            Variant::I32(n) => PropertyValue::Signed(i64::from(*n)),
            Variant::I64(n) => PropertyValue::Signed(*n),
            Variant::Bool(b) => PropertyValue::Bool(*b),
            Variant::F64(x) => PropertyValue::Float(*x),
            Variant::Str(s) => PropertyValue::Text(s.to_string()),
            Variant::ObjectPath(p) => PropertyValue::Text(p.to_string()),
            Variant::Signature(s) => PropertyValue::Text(s.to_string()),
            Variant::Variant(inner) => PropertyValue::from_variant(inner),
            Variant::Array(a) => {
                PropertyValue::List(a.inner().iter().map(PropertyValue::from_variant).collect())
            }
            Variant::Structure(s) => {
                PropertyValue::List(s.fields().iter().map(PropertyValue::from_variant).collect())
            }
            // The daemon exports no dictionaries or fds as properties.
            other => PropertyValue::Text(format!("{other:?}")),
        }
    }
}

impl fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyValue::Bool(b) => write!(f, "{b}"),
            PropertyValue::Unsigned(n) => write!(f, "{n}"),
            PropertyValue::Signed(n) => write!(f, "{n}"),
            // Progress and the like: four decimals say enough.
            PropertyValue::Float(x) => {
                let text = format!("{x:.4}");
                let text = text.trim_end_matches('0').trim_end_matches('.');
                f.write_str(if text.is_empty() || text == "-" {
                    "0"
                } else {
                    text
                })
            }
            PropertyValue::Text(s) if s.is_empty() || s.contains(' ') => write!(f, "{s:?}"),
            PropertyValue::Text(s) => f.write_str(s),
            PropertyValue::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Properties by name.
pub type Properties = BTreeMap<String, PropertyValue>;

/// One thing the daemon did, or the bus said about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum MonitorEvent {
    /// A device, slice or job appeared (its properties as exported).
    Added {
        object: ObjectRef,
        properties: Properties,
    },
    /// A device, slice or job went away.
    Removed { object: ObjectRef },
    /// Some of an object's properties changed; `properties` holds the new values.
    Changed {
        object: ObjectRef,
        properties: Properties,
    },
    /// A job ended.
    JobCompleted {
        object: ObjectRef,
        success: bool,
        message: String,
    },
    /// The daemon (re)appeared on the bus.
    DaemonStarted,
    /// The daemon left the bus (stopped, crashed, or the bus closed).
    DaemonGone,
}

/// A subscription to the daemon's signals. Events arrive in the order the daemon sent them.
///
/// The monitor keeps the last value it knows of every property (from `GetManagedObjects` at
/// subscription, then from the signals), so a `Changed` event holds only properties whose
/// value did change: the daemon re-announces an object's whole state after some operations.
pub struct Monitor {
    signals: MessageStream,
    owner: MessageStream,
    known: HashMap<String, Properties>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Monitor")
    }
}

impl Monitor {
    /// Subscribes on `conn`. Only events after this call are seen.
    pub async fn subscribe(conn: &Connection) -> Result<Monitor, ClientError> {
        let signals = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(names::BUS_NAME)
            .path_namespace(names::ROOT_PATH)
            .build()?;
        let owner = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender("org.freedesktop.DBus")
            .interface("org.freedesktop.DBus")
            .member("NameOwnerChanged")
            .add_arg(names::BUS_NAME)
            .build()?;
        let signals = MessageStream::for_match_rule(signals, conn, None).await?;
        let owner = MessageStream::for_match_rule(owner, conn, None).await?;
        // After subscribing, so that no change falls between the snapshot and the signals.
        // A daemon that is not running has nothing to know yet.
        let known = managed_objects(conn).await.unwrap_or_default();
        Ok(Monitor {
            signals,
            owner,
            known,
        })
    }

    /// The next event; `Ok(None)` once the connection to the bus is closed.
    pub async fn next(&mut self) -> Result<Option<MonitorEvent>, ClientError> {
        loop {
            let message = tokio::select! {
                m = next(&mut self.owner) => match m {
                    Some(m) => m?,
                    None => return Ok(None),
                },
                m = next(&mut self.signals) => match m {
                    Some(m) => m?,
                    None => return Ok(None),
                },
            };
            if let Some(event) = decode(&message)? {
                if let Some(event) = self.track(event) {
                    return Ok(Some(event));
                }
            }
        }
    }
}

impl Monitor {
    /// Updates what is known from `event`; drops a change that changes nothing.
    fn track(&mut self, event: MonitorEvent) -> Option<MonitorEvent> {
        match event {
            MonitorEvent::Added { object, properties } => {
                self.known.insert(object.path.clone(), properties.clone());
                Some(MonitorEvent::Added { object, properties })
            }
            MonitorEvent::Removed { object } => {
                self.known.remove(&object.path);
                Some(MonitorEvent::Removed { object })
            }
            MonitorEvent::Changed { object, properties } => {
                let known = self.known.entry(object.path.clone()).or_default();
                let changed: Properties = properties
                    .into_iter()
                    .filter(|(name, value)| known.get(name) != Some(value))
                    .collect();
                known.extend(changed.clone());
                (!changed.is_empty()).then_some(MonitorEvent::Changed {
                    object,
                    properties: changed,
                })
            }
            MonitorEvent::DaemonGone => {
                self.known.clear();
                Some(MonitorEvent::DaemonGone)
            }
            other => Some(other),
        }
    }
}

type InterfacesAndProperties = HashMap<String, HashMap<String, OwnedVariant>>;

/// Every object's accelgate properties, by path.
async fn managed_objects(conn: &Connection) -> Result<HashMap<String, Properties>, ClientError> {
    let reply = conn
        .call_method(
            Some(names::BUS_NAME),
            names::ROOT_PATH,
            Some("org.freedesktop.DBus.ObjectManager"),
            "GetManagedObjects",
            &(),
        )
        .await?;
    let objects: HashMap<OwnedObjectPath, InterfacesAndProperties> = reply.body().deserialize()?;
    Ok(objects
        .into_iter()
        .map(|(path, interfaces)| {
            let mut properties = Properties::new();
            for (name, props) in &interfaces {
                if is_ours(name) {
                    properties.extend(properties_of(props));
                }
            }
            (path.as_str().to_owned(), properties)
        })
        .collect())
}

fn is_ours(interface: &str) -> bool {
    interface.starts_with("org.accelgate.Accel1.")
}

fn properties_of(props: &HashMap<String, OwnedVariant>) -> Properties {
    props
        .iter()
        .map(|(k, v)| (k.clone(), PropertyValue::from_variant(v)))
        .collect()
}

/// The event a signal stands for; None for signals that say nothing new (other interfaces,
/// an empty change).
fn decode(message: &Message) -> Result<Option<MonitorEvent>, ClientError> {
    let header = message.header();
    let member = header.member().map(|m| m.as_str()).unwrap_or("");
    let interface = header.interface().map(|i| i.as_str()).unwrap_or("");
    let path = header.path().map(|p| p.as_str()).unwrap_or("");
    let body = message.body();
    Ok(match (interface, member) {
        ("org.freedesktop.DBus", "NameOwnerChanged") => {
            let (_name, _old, new): (String, String, String) = body.deserialize()?;
            Some(if new.is_empty() {
                MonitorEvent::DaemonGone
            } else {
                MonitorEvent::DaemonStarted
            })
        }
        ("org.freedesktop.DBus.ObjectManager", "InterfacesAdded") => {
            let (object, interfaces): (OwnedObjectPath, InterfacesAndProperties) =
                body.deserialize()?;
            let mut properties = Properties::new();
            let mut known = false;
            for (name, props) in &interfaces {
                if is_ours(name) {
                    known = true;
                    properties.extend(properties_of(props));
                }
            }
            known.then(|| MonitorEvent::Added {
                object: ObjectRef::from_path(object.as_str()),
                properties,
            })
        }
        ("org.freedesktop.DBus.ObjectManager", "InterfacesRemoved") => {
            let (object, interfaces): (OwnedObjectPath, Vec<String>) = body.deserialize()?;
            interfaces
                .iter()
                .any(|i| is_ours(i))
                .then(|| MonitorEvent::Removed {
                    object: ObjectRef::from_path(object.as_str()),
                })
        }
        ("org.freedesktop.DBus.Properties", "PropertiesChanged") => {
            let (changed_interface, changed, invalidated): (
                String,
                HashMap<String, OwnedVariant>,
                Vec<String>,
            ) = body.deserialize()?;
            if !is_ours(&changed_interface) || (changed.is_empty() && invalidated.is_empty()) {
                None
            } else {
                Some(MonitorEvent::Changed {
                    object: ObjectRef::from_path(path),
                    properties: properties_of(&changed),
                })
            }
        }
        (names::JOB_INTERFACE, "Completed") => {
            let (success, message): (bool, String) = body.deserialize()?;
            Some(MonitorEvent::JobCompleted {
                object: ObjectRef::from_path(path),
                success,
                message,
            })
        }
        _ => None,
    })
}

impl fmt::Display for MonitorEvent {
    /// One line: `added slice nic0/vf0`, `changed slice fpga0/region0: Tenant=ag-tenant1`,
    /// `completed job 3: succeeded: image loaded`, `daemon gone`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let write_props = |f: &mut fmt::Formatter<'_>, props: &Properties| -> fmt::Result {
            for (i, (k, v)) in props.iter().enumerate() {
                f.write_str(if i == 0 { ": " } else { " " })?;
                write!(f, "{k}={v}")?;
            }
            Ok(())
        };
        match self {
            MonitorEvent::Added { object, properties } => {
                write!(f, "added {object}")?;
                // A job says what it does; devices and slices are listed by `show`.
                if object.kind == ObjectKind::Job {
                    let summary: Properties = properties
                        .iter()
                        .filter(|(k, _)| {
                            ["Operation", "Target", "StartedByUid"].contains(&k.as_str())
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    write_props(f, &summary)?;
                }
                Ok(())
            }
            MonitorEvent::Removed { object } => write!(f, "removed {object}"),
            MonitorEvent::Changed { object, properties } => {
                write!(f, "changed {object}")?;
                write_props(f, properties)
            }
            MonitorEvent::JobCompleted {
                object,
                success,
                message,
            } => write!(
                f,
                "completed {object}: {}: {message}",
                if *success { "succeeded" } else { "failed" }
            ),
            MonitorEvent::DaemonStarted => f.write_str("daemon started"),
            MonitorEvent::DaemonGone => f.write_str("daemon gone"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_objects() {
        let o = ObjectRef::from_path(&names::slice_path("fpga0", "region0"));
        assert_eq!(
            (o.kind, o.name.as_str()),
            (ObjectKind::Slice, "fpga0/region0")
        );
        let o = ObjectRef::from_path(&names::device_path("nic0"));
        assert_eq!((o.kind, o.name.as_str()), (ObjectKind::Device, "nic0"));
        let o = ObjectRef::from_path(&names::job_path(12));
        assert_eq!((o.kind, o.name.as_str()), (ObjectKind::Job, "12"));
        assert_eq!(o.to_string(), "job 12");
        assert_eq!(
            ObjectRef::from_path(names::ROOT_PATH).kind,
            ObjectKind::Manager
        );
        assert_eq!(ObjectRef::from_path("/elsewhere").kind, ObjectKind::Other);
    }

    #[test]
    fn events_read_as_one_line() {
        let mut properties = Properties::new();
        properties.insert("Tenant".into(), PropertyValue::Text("ag-tenant1".into()));
        properties.insert("ImageSha256".into(), PropertyValue::Text(String::new()));
        let e = MonitorEvent::Changed {
            object: ObjectRef::from_path(&names::slice_path("fpga0", "region0")),
            properties,
        };
        assert_eq!(
            e.to_string(),
            "changed slice fpga0/region0: ImageSha256=\"\" Tenant=ag-tenant1"
        );
        assert_eq!(PropertyValue::Float(0.33333999999).to_string(), "0.3333");
        assert_eq!(PropertyValue::Float(1.0).to_string(), "1");
        assert_eq!(PropertyValue::Float(0.0).to_string(), "0");
    }
}
