//! A loopback stand-in for the Kubernetes API server: plain HTTP/1.1 on 127.0.0.1, serving
//! the ResourceClaim fixtures a test puts in, and recording every ResourceSlice write (the
//! server-side apply the plugin sends) in order. It answers only what the plugin uses; any
//! other request gets 404 and is recorded as unexpected.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

#[derive(Default)]
pub struct State {
    /// "namespace/name" -> ResourceClaim JSON.
    pub claims: BTreeMap<String, Value>,
    /// name -> the ResourceSlice as last applied.
    pub slices: BTreeMap<String, Value>,
    /// Every ResourceSlice write, in order.
    pub slice_writes: Vec<Value>,
    /// Requests the fake does not serve.
    pub unexpected: Vec<String>,
    pub claim_gets: usize,
    next_version: u64,
}

#[derive(Clone)]
pub struct FakeKube {
    pub state: Arc<Mutex<State>>,
    pub port: u16,
}

const RESOURCE: &str = "/apis/resource.k8s.io/v1";

impl FakeKube {
    pub fn start() -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, s));
            }
        });
        FakeKube { state, port }
    }

    /// A kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\nusers:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.port
        );
        std::fs::write(path, text).unwrap();
    }

    pub fn put_claim(&self, claim: Value) {
        let key = format!(
            "{}/{}",
            claim["metadata"]["namespace"].as_str().unwrap(),
            claim["metadata"]["name"].as_str().unwrap()
        );
        self.state.lock().unwrap().claims.insert(key, claim);
    }

    pub fn slice_writes(&self) -> Vec<Value> {
        self.state.lock().unwrap().slice_writes.clone()
    }

    pub fn unexpected(&self) -> Vec<String> {
        self.state.lock().unwrap().unexpected.clone()
    }
}

fn serve(conn: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("").to_owned();
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)
        } else {
            let mut b = vec![0; length];
            if reader.read_exact(&mut b).is_err() {
                return;
            }
            b
        };
        let (status, reply) = handle(&state, &method, &target, &body);
        let text = reply.to_string();
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            if status == 200 { "OK" } else { "Not Found" },
            text.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(text.as_bytes()).is_err()
        {
            return;
        }
    }
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).unwrap_or(0) == 0 {
            return out;
        }
        let n =
            usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        let mut chunk = vec![0; n + 2];
        if reader.read_exact(&mut chunk).is_err() {
            return out;
        }
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

fn not_found(what: &str) -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

fn handle(state: &Mutex<State>, method: &str, target: &str, body: &[u8]) -> (u16, Value) {
    let path = target.split('?').next().unwrap_or("");
    let mut st = state.lock().unwrap();
    let rest = path.strip_prefix(RESOURCE).unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match (method, parts.as_slice()) {
        ("GET", ["namespaces", ns, "resourceclaims", name]) => {
            st.claim_gets += 1;
            match st.claims.get(&format!("{ns}/{name}")) {
                Some(c) => (200, c.clone()),
                None => not_found("resourceclaim"),
            }
        }
        ("GET", ["resourceslices", name]) => match st.slices.get(*name) {
            Some(s) => (200, s.clone()),
            None => not_found("resourceslice"),
        },
        ("PATCH", ["resourceslices", name]) => {
            let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
                st.unexpected
                    .push(format!("unparsable PATCH body for {name}"));
                return (400, json!({"kind": "Status", "code": 400}));
            };
            st.next_version += 1;
            obj["metadata"]["resourceVersion"] = json!(st.next_version.to_string());
            obj["metadata"]["uid"] = json!(format!("slice-uid-{name}"));
            st.slice_writes.push(obj.clone());
            st.slices.insert(name.to_string(), obj.clone());
            (200, obj)
        }
        _ => {
            st.unexpected.push(format!("{method} {target}"));
            not_found("path")
        }
    }
}
