//! The typed proxies (`src/proxy.rs`) say exactly what the checked-in introspection XML
//! (`dbus/*.xml`, the contract the daemon is tested against) says: every method, property and
//! signal of each interface is on its proxy, and the proxy declares nothing the XML lacks. So a
//! new property on the daemon cannot be forgotten on the client, and no tool needs a raw proxy.
//!
//! The proxy traits are read from their source: a proxy trait has no runtime description to
//! compare, and generating it from the XML would hide the doc comments tenants read.

use std::collections::BTreeSet;
use std::path::Path;

/// Members of one interface, as `kind:Name` (kind: method, property, signal).
type Members = BTreeSet<String>;

fn xml_members(xml: &str) -> Members {
    let mut out = Members::new();
    for (tag, kind) in [
        ("<method name=\"", "method"),
        ("<property name=\"", "property"),
        ("<signal name=\"", "signal"),
    ] {
        for part in xml.split(tag).skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            out.insert(format!("{kind}:{name}"));
        }
    }
    out
}

fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// (interface, members) of every `#[proxy(interface = ...)]` trait in the source.
fn proxy_members(source: &str) -> Vec<(String, Members)> {
    let mut out = Vec::new();
    for block in source.split("#[proxy(").skip(1) {
        let interface = block
            .split("interface = \"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a proxy names its interface")
            .to_owned();
        let body = block
            .split_once("pub trait ")
            .expect("a proxy is a trait")
            .1;
        let body = &body[..body.find("\n}\n").unwrap_or(body.len())];
        let mut members = Members::new();
        let mut attr = String::new();
        for line in body.lines().map(str::trim) {
            if line.starts_with("#[zbus(") {
                attr.push_str(line);
                continue;
            }
            let Some(rest) = line.strip_prefix("fn ") else {
                continue;
            };
            let rust_name = rest.split('(').next().unwrap_or_default();
            let kind = if attr.contains("property") {
                "property"
            } else if attr.contains("signal") {
                "signal"
            } else {
                "method"
            };
            let name = attr
                .split("name = \"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .map(str::to_owned)
                .unwrap_or_else(|| camel(rust_name));
            members.insert(format!("{kind}:{name}"));
            attr.clear();
        }
        out.push((interface, members));
    }
    out
}

#[test]
fn proxies_match_the_introspection_xml() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/proxy.rs")).unwrap();
    let proxies = proxy_members(&source);
    let interfaces: Vec<&str> = proxies.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(
        interfaces,
        [
            "org.accelgate.Accel1.Manager",
            "org.accelgate.Accel1.Device",
            "org.accelgate.Accel1.Slice",
            "org.accelgate.Accel1.Job"
        ],
        "one proxy per interface of the contract"
    );
    for (interface, members) in &proxies {
        let xml =
            std::fs::read_to_string(root.join(format!("../../dbus/{interface}.xml"))).unwrap();
        let want = xml_members(&xml);
        assert!(!want.is_empty(), "{interface}.xml lists no members");
        let missing: Vec<_> = want.difference(members).collect();
        let extra: Vec<_> = members.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{interface}: on the XML but not the proxy: {missing:?}; on the proxy but not the XML: {extra:?}"
        );
    }
}

#[test]
fn the_reader_sees_a_missing_member() {
    // The comparison above must be able to fail: drop one property from a proxy's source.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/proxy.rs")).unwrap();
    let cut = source.replace("fn firmware_state(&self)", "fn firmware_stat(&self)");
    let proxies = proxy_members(&cut);
    let device = &proxies
        .iter()
        .find(|(i, _)| i == "org.accelgate.Accel1.Device")
        .unwrap()
        .1;
    assert!(device.contains("property:FirmwareStat"));
    assert!(!device.contains("property:FirmwareState"));
}
