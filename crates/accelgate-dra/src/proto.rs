//! The kubelet's gRPC messages, written by hand with prost's derive from the contract in
//! `proto/` (package, message, field numbers and types as kubelet's `pkg/apis/dra/v1` and
//! `pkg/apis/pluginregistration/v1`). Nothing is generated at build time, so building needs
//! neither `protoc` nor a protobuf compiler crate; the unit test below reads the `.proto`
//! files and checks every message's field numbers and wire types, and every method path,
//! against these types.

/// `k8s.io.kubelet.pkg.apis.dra.v1`: the DRAPlugin service.
pub mod dra {
    use std::collections::HashMap;

    /// The service's full name; a method's path is `/<SERVICE>/<method>`.
    pub const SERVICE: &str = "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin";
    pub const NODE_PREPARE_RESOURCES: &str =
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources";
    pub const NODE_UNPREPARE_RESOURCES: &str =
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources";

    /// A ResourceClaim as the kubelet names it.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Claim {
        #[prost(string, tag = "1")]
        pub namespace: String,
        #[prost(string, tag = "2")]
        pub uid: String,
        #[prost(string, tag = "3")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct NodePrepareResourcesRequest {
        #[prost(message, repeated, tag = "1")]
        pub claims: Vec<Claim>,
    }

    /// One entry per claim of the request, keyed by claim uid.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct NodePrepareResourcesResponse {
        #[prost(map = "string, message", tag = "1")]
        pub claims: HashMap<String, NodePrepareResourceResponse>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct NodePrepareResourceResponse {
        #[prost(message, repeated, tag = "1")]
        pub devices: Vec<Device>,
        /// Non-empty: the claim was not prepared and the devices are ignored.
        #[prost(string, tag = "2")]
        pub error: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Device {
        /// Empty: the device serves every request of the claim.
        #[prost(string, repeated, tag = "1")]
        pub request_names: Vec<String>,
        #[prost(string, tag = "2")]
        pub pool_name: String,
        #[prost(string, tag = "3")]
        pub device_name: String,
        /// Fully qualified CDI device ids (vendor/class=name).
        #[prost(string, repeated, tag = "4")]
        pub cdi_device_ids: Vec<String>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct NodeUnprepareResourcesRequest {
        #[prost(message, repeated, tag = "1")]
        pub claims: Vec<Claim>,
    }

    /// One entry per claim of the request, keyed by claim uid.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct NodeUnprepareResourcesResponse {
        #[prost(map = "string, message", tag = "1")]
        pub claims: HashMap<String, NodeUnprepareResourceResponse>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct NodeUnprepareResourceResponse {
        /// Non-empty: unpreparing failed.
        #[prost(string, tag = "1")]
        pub error: String,
    }
}

/// `pluginregistration`: how the kubelet learns about a plugin.
pub mod registration {
    /// The service's full name (the package is `pluginregistration` on the wire).
    pub const SERVICE: &str = "pluginregistration.Registration";
    pub const GET_INFO: &str = "/pluginregistration.Registration/GetInfo";
    pub const NOTIFY_REGISTRATION_STATUS: &str =
        "/pluginregistration.Registration/NotifyRegistrationStatus";

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct InfoRequest {}

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct PluginInfo {
        /// "DRAPlugin" for a DRA driver.
        #[prost(string, tag = "1")]
        pub r#type: String,
        /// The DRA driver name.
        #[prost(string, tag = "2")]
        pub name: String,
        /// Path of the socket serving the plugin's own service.
        #[prost(string, tag = "3")]
        pub endpoint: String,
        /// Services served at the endpoint, e.g. "v1.DRAPlugin".
        #[prost(string, repeated, tag = "4")]
        pub supported_versions: Vec<String>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct RegistrationStatus {
        #[prost(bool, tag = "1")]
        pub plugin_registered: bool,
        #[prost(string, tag = "2")]
        pub error: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct RegistrationStatusResponse {}
}

#[cfg(test)]
mod tests {
    //! The hand-written types against `proto/*.proto`: a small reader of the proto3 subset
    //! those files use (messages with scalar, repeated and map fields; services of unary
    //! rpcs), and for every message a value with each field set, encoded, whose wire tags
    //! must be exactly the fields the `.proto` declares.

    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use prost::Message;

    use super::{dra, registration};

    #[derive(Debug, Default)]
    struct ProtoFile {
        package: String,
        /// message -> field number -> (label + type, name)
        messages: BTreeMap<String, BTreeMap<u32, (String, String)>>,
        /// service -> [(rpc, request, response)]
        services: BTreeMap<String, Vec<(String, String, String)>>,
    }

    fn parse(path: &str) -> ProtoFile {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let text = std::fs::read_to_string(&full).unwrap();
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        // Tokens: words, and the punctuation proto3 uses here, each on its own.
        let mut tokens = Vec::new();
        let mut word = String::new();
        for c in code.chars() {
            if c.is_alphanumeric() || c == '_' || c == '.' || c == '"' {
                word.push(c);
            } else {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                if "{}()<>;=,".contains(c) {
                    tokens.push(c.to_string());
                }
            }
        }
        let mut file = ProtoFile::default();
        let mut i = 0;
        let mut scope: Vec<(String, String)> = Vec::new(); // (kind, name)
        while i < tokens.len() {
            let t = tokens[i].as_str();
            match t {
                "syntax" => i += 4, // syntax = "proto3" ;
                "package" => {
                    file.package = tokens[i + 1].clone();
                    i += 3;
                }
                "message" | "service" => {
                    let name = tokens[i + 1].clone();
                    assert_eq!(tokens[i + 2], "{", "{path}: {t} {name}");
                    if t == "message" {
                        file.messages.entry(name.clone()).or_default();
                    } else {
                        file.services.entry(name.clone()).or_default();
                    }
                    scope.push((t.to_owned(), name));
                    i += 3;
                }
                "}" => {
                    scope.pop();
                    i += 1;
                }
                "rpc" => {
                    // rpc Name ( Req ) returns ( Resp ) { }
                    let (_, service) = scope.last().cloned().unwrap();
                    let rpc = (
                        tokens[i + 1].clone(),
                        tokens[i + 3].clone(),
                        tokens[i + 7].clone(),
                    );
                    assert_eq!(tokens[i + 5], "returns", "{path}: rpc {}", rpc.0);
                    file.services.get_mut(&service).unwrap().push(rpc);
                    i += 9;
                    if tokens.get(i).map(String::as_str) == Some("{") {
                        i += 2;
                    } else {
                        i += 1; // ;
                    }
                }
                _ => {
                    // A field: [repeated] type name = N ;  or  map < K , V > name = N ;
                    let (_, message) = scope.last().cloned().unwrap();
                    let end = tokens[i..].iter().position(|t| t == ";").unwrap() + i;
                    let field = &tokens[i..end];
                    let number: u32 = field[field.len() - 1].parse().unwrap();
                    let name = field[field.len() - 3].clone();
                    let ty = field[..field.len() - 3].concat();
                    let fields = file.messages.get_mut(&message).unwrap();
                    assert!(
                        fields.insert(number, (ty, name)).is_none(),
                        "{path}: {message} repeats field {number}"
                    );
                    i = end + 1;
                }
            }
        }
        file
    }

    /// The wire type a declared field is encoded with.
    fn wire_type(ty: &str) -> u64 {
        let base = ty.strip_prefix("repeated").unwrap_or(ty);
        match base {
            "bool" | "int32" | "int64" | "uint32" | "uint64" | "enum" => 0,
            // strings, bytes, messages, map entries, packed repeated scalars
            _ => 2,
        }
    }

    fn varint(buf: &[u8], at: &mut usize) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = buf[*at];
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
        }
        panic!("varint too long");
    }

    /// (field number, wire type) of every top-level field in an encoded message.
    fn tags(buf: &[u8]) -> BTreeSet<(u32, u64)> {
        let mut out = BTreeSet::new();
        let mut at = 0;
        while at < buf.len() {
            let key = varint(buf, &mut at);
            let (number, wire) = ((key >> 3) as u32, key & 7);
            match wire {
                0 => {
                    varint(buf, &mut at);
                }
                2 => {
                    let len = varint(buf, &mut at) as usize;
                    at += len;
                }
                other => panic!("unexpected wire type {other}"),
            }
            out.insert((number, wire));
        }
        out
    }

    fn check(file: &ProtoFile, name: &str, sample: &impl Message) {
        let declared = file
            .messages
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the .proto"));
        let want: BTreeSet<(u32, u64)> = declared
            .iter()
            .map(|(n, (ty, _))| (*n, wire_type(ty)))
            .collect();
        assert_eq!(tags(&sample.encode_to_vec()), want, "{name}: {declared:?}");
    }

    fn claim() -> dra::Claim {
        dra::Claim {
            namespace: "ns".into(),
            uid: "u".into(),
            name: "n".into(),
        }
    }

    #[test]
    fn dra_matches_its_proto() {
        let file = parse("proto/dra_v1.proto");
        assert_eq!(format!("{}.DRAPlugin", file.package), dra::SERVICE);
        let device = dra::Device {
            request_names: vec!["r".into()],
            pool_name: "p".into(),
            device_name: "d".into(),
            cdi_device_ids: vec!["v/c=d".into()],
        };
        let prepared = dra::NodePrepareResourceResponse {
            devices: vec![device.clone()],
            error: "e".into(),
        };
        let unprepared = dra::NodeUnprepareResourceResponse { error: "e".into() };
        check(&file, "Claim", &claim());
        check(&file, "Device", &device);
        check(
            &file,
            "NodePrepareResourcesRequest",
            &dra::NodePrepareResourcesRequest {
                claims: vec![claim()],
            },
        );
        check(&file, "NodePrepareResourceResponse", &prepared);
        check(
            &file,
            "NodePrepareResourcesResponse",
            &dra::NodePrepareResourcesResponse {
                claims: HashMap::from([("u".to_owned(), prepared)]),
            },
        );
        check(
            &file,
            "NodeUnprepareResourcesRequest",
            &dra::NodeUnprepareResourcesRequest {
                claims: vec![claim()],
            },
        );
        check(&file, "NodeUnprepareResourceResponse", &unprepared);
        check(
            &file,
            "NodeUnprepareResourcesResponse",
            &dra::NodeUnprepareResourcesResponse {
                claims: HashMap::from([("u".to_owned(), unprepared)]),
            },
        );
        assert_eq!(file.messages.len(), 8, "a message without a Rust type");
        // The maps' values are the messages the .proto names.
        let map_of = |m: &str| file.messages[m][&1].0.clone();
        assert_eq!(
            map_of("NodePrepareResourcesResponse"),
            "map<string,NodePrepareResourceResponse>"
        );
        assert_eq!(
            map_of("NodeUnprepareResourcesResponse"),
            "map<string,NodeUnprepareResourceResponse>"
        );
        let rpcs = &file.services["DRAPlugin"];
        let paths: Vec<String> = rpcs
            .iter()
            .map(|(rpc, _, _)| format!("/{}/{rpc}", dra::SERVICE))
            .collect();
        assert_eq!(
            paths,
            [dra::NODE_PREPARE_RESOURCES, dra::NODE_UNPREPARE_RESOURCES]
        );
        assert_eq!(
            rpcs[0],
            (
                "NodePrepareResources".into(),
                "NodePrepareResourcesRequest".into(),
                "NodePrepareResourcesResponse".into()
            )
        );
        assert_eq!(
            rpcs[1],
            (
                "NodeUnprepareResources".into(),
                "NodeUnprepareResourcesRequest".into(),
                "NodeUnprepareResourcesResponse".into()
            )
        );
    }

    #[test]
    fn registration_matches_its_proto() {
        let file = parse("proto/pluginregistration_v1.proto");
        assert_eq!(
            format!("{}.Registration", file.package),
            registration::SERVICE
        );
        check(&file, "InfoRequest", &registration::InfoRequest {});
        check(
            &file,
            "PluginInfo",
            &registration::PluginInfo {
                r#type: "t".into(),
                name: "n".into(),
                endpoint: "e".into(),
                supported_versions: vec!["v".into()],
            },
        );
        check(
            &file,
            "RegistrationStatus",
            &registration::RegistrationStatus {
                plugin_registered: true,
                error: "e".into(),
            },
        );
        check(
            &file,
            "RegistrationStatusResponse",
            &registration::RegistrationStatusResponse {},
        );
        assert_eq!(file.messages.len(), 4, "a message without a Rust type");
        assert_eq!(
            file.services["Registration"],
            [
                (
                    "GetInfo".to_owned(),
                    "InfoRequest".to_owned(),
                    "PluginInfo".to_owned()
                ),
                (
                    "NotifyRegistrationStatus".to_owned(),
                    "RegistrationStatus".to_owned(),
                    "RegistrationStatusResponse".to_owned()
                ),
            ]
        );
        assert_eq!(
            format!("/{}/GetInfo", registration::SERVICE),
            registration::GET_INFO
        );
        assert_eq!(
            format!("/{}/NotifyRegistrationStatus", registration::SERVICE),
            registration::NOTIFY_REGISTRATION_STATUS
        );
    }

    #[test]
    fn the_reader_sees_every_field() {
        // Guards the reader itself: a field it skipped would make a check pass vacuously.
        let file = parse("proto/dra_v1.proto");
        let device = &file.messages["Device"];
        assert_eq!(
            device
                .values()
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>(),
            [
                "repeatedstring request_names",
                "string pool_name",
                "string device_name",
                "repeatedstring cdi_device_ids"
            ]
        );
    }
}
